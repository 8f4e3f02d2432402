#!/usr/bin/env bash
# Builds the GPU check kit HERE (no GPU needed) for the one prepared device run (bench/gpu/run-all.sh):
# every CUDA test binary, the CUDA benchmarks and `graft`, compiled for sm_90a only (H100/H200), stripped, with
# the non-CUDA shared libraries they need (Debian's HDF5, yaml-cpp, protobuf, fmt, ICU, ...) copied beside them,
# because the device image has CUDA and PyTorch but not those. The result, gpu-kit/ (git-ignored), must stay
# under the device tool's 64 MiB carry limit; the script checks it.
# Usage: bench/gpu/build.sh            (env BUILD=build-gpu, KIT=gpu-kit, JOBS=nproc)
# Then: run(command="bash bench/gpu/run-all.sh", carry=["gpu-kit"])
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build-gpu}
KIT=${KIT:-gpu-kit}
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGRAFT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DGRAFT_BUILD_BENCH=ON >/dev/null
# Every CUDA test binary (label cuda), the CUDA benchmarks and graft.
mapfile -t TESTS < <(grep -rhoE 'graft_add_gtest\(NAME [A-Za-z0-9_]+ LABELS[^)]*\bcuda\b' tests | awk '{print $2}' | sort -u)
BENCHES=(bench_cuda_nf4_matmul bench_serve_cuda bench_moe_cuda bench_attention_cuda)
cmake --build "$BUILD" -j"$JOBS" --target graft "${TESTS[@]}" "${BENCHES[@]}"
rm -rf "$KIT"
mkdir -p "$KIT/bin" "$KIT/lib"
for t in "${TESTS[@]}"; do cp "$(find "$BUILD/tests" -type f -name "$t" -perm -u+x | head -1)" "$KIT/bin/"; done
for b in "${BENCHES[@]}"; do cp "$BUILD/bench/$b" "$KIT/bin/"; done
cp "$BUILD/bin/graft" "$KIT/bin/"
strip --strip-unneeded "$KIT"/bin/*
# Shared libraries that are neither the C runtime nor CUDA's/the driver's (those exist on the device machine).
for f in "$KIT"/bin/*; do
  ldd "$f" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libgcc_s.so*|libcuda.so*|libcudart*|libcublas*|\
    libcudnn*|libnccl*|libnvrtc*|libnvJitLink*|libcurand*|libcusparse*|libcufft*|libcusolver*) ;;
    *) cp -L "$lib" "$KIT/lib/" ;;
  esac
done
strip --strip-unneeded "$KIT"/lib/*.so* 2>/dev/null || true
# Which CUDA libraries the kit expects from the device (names and sonames), for the report.
for f in "$KIT"/bin/*; do ldd "$f" | awk '/libcu|libnccl|libnvrtc/{print $1}'; done | sort -u > "$KIT/cuda-libs.txt"
# The libraries travel gzipped (ICU's data alone is 30 MiB raw); run-all.sh unpacks them on the device.
tar -czf "$KIT/lib.tar.gz" -C "$KIT" lib && rm -rf "$KIT/lib"
git rev-parse --short HEAD > "$KIT/commit.txt" 2>/dev/null || echo unknown > "$KIT/commit.txt"
printf '%s\n' "${TESTS[@]}" > "$KIT/tests.txt"
size=$(du -sb "$KIT" | cut -f1)
echo "gpu kit: $KIT, $((size / 1048576)) MiB ($(ls "$KIT/bin" | wc -l) binaries, $(tar -tzf "$KIT/lib.tar.gz" | grep -c '\.so') libraries, gzipped)"
if (( size > 64 * 1048576 )); then
  echo "error: the kit is over the device tool's 64 MiB carry limit" >&2
  du -sh "$KIT"/bin/* "$KIT"/lib.tar.gz | sort -h | tail -10 >&2
  exit 1
fi
