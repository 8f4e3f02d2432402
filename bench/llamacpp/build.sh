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
# CPU features: -march=native, except on x86 CPUs that advertise AMX: there ggml's AMX matmul dies with SIGILL
# when the kernel does not grant the tile state (seen on the 2-core benchmark VM), so the x86 features are named
# one by one with AMX off (GGML_NATIVE=OFF).
cpu_flags=(-DGGML_NATIVE=ON)
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  cpu_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
             -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  grep -qw avx512f /proc/cpuinfo && cpu_flags+=(-DGGML_AVX512=ON)
  grep -qw avx512vbmi /proc/cpuinfo && cpu_flags+=(-DGGML_AVX512_VBMI=ON)
  grep -qw avx512_vnni /proc/cpuinfo && cpu_flags+=(-DGGML_AVX512_VNNI=ON)
  grep -qw avx512_bf16 /proc/cpuinfo && cpu_flags+=(-DGGML_AVX512_BF16=ON)
fi
cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_WEBUI=OFF -DLLAMA_BUILD_TESTS=OFF "${cpu_flags[@]}" >&2
cmake --build "$src/build" -j"$jobs" --target "$@" >&2
echo "$src"
