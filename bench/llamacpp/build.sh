#!/usr/bin/env bash
# Builds llama.cpp (the CPU peer of graft's benchmarks) from the source that PyPI's llama-cpp-python sdist carries
# (its vendor/llama.cpp): `pip download --no-binary :all: --no-deps llama-cpp-python==VERSION`. Benchmarks only;
# nothing of it is linked into graft or committed.
# Usage: bench/llamacpp/build.sh TARGET [TARGET...]   (e.g. llama-bench llama-server llama-quantize)
# Env: LLAMA_CPP_PYTHON_VERSION (0.3.36), JOBS (nproc). Prints the llama.cpp source folder on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ver="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
work=bench/llamacpp/work
src="$work/llama.cpp"
jobs="${JOBS:-$(nproc)}"
py=tools/.venv/bin/python; [[ -x "$py" ]] || py=python3
mkdir -p "$work"
if [[ ! -f "$src/CMakeLists.txt" || "$(cat "$src/.graft-sdist" 2>/dev/null)" != "$ver" ]]; then
  dl="$work/sdist"
  rm -rf "$dl" "$src"
  mkdir -p "$dl"
  "$py" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps -d "$dl" "llama-cpp-python==$ver" >&2
  tar -xzf "$dl"/llama_cpp_python-"$ver".tar.gz -C "$dl"
  mv "$dl/llama_cpp_python-$ver/vendor/llama.cpp" "$src"
  echo "$ver" > "$src/.graft-sdist"
  rm -rf "$dl"
fi
[[ -f "$src/build/CMakeCache.txt" ]] || cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_WEBUI=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build "$src/build" -j"$jobs" --target "$@" >&2
echo "$src"
