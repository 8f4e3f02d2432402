#!/usr/bin/env bash
# Builds graft and runs the whole test suite (CPU tests run; CUDA tests compile and skip without a GPU).
# Usage: scripts/test.sh [extra ctest args], e.g. scripts/test.sh -L unit
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
jobs="$(nproc)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs" "$@"
