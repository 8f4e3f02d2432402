#!/usr/bin/env bash
# Installs every dependency graft needs, idempotently, from Debian packages and the npm registry.
# Usage: scripts/setup.sh            (apt packages + npm test references)
#        GRAFT_SKIP_NPM=1 scripts/setup.sh   (apt only)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

APT_PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libeigen3-dev libhdf5-dev libprotobuf-dev protobuf-compiler libyaml-cpp-dev
  nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libpcre2-dev libicu-dev
  libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev libopenmpi-dev
  libopenblas-dev python3-torch python3-jinja2 python3-numpy
  nodejs npm clang wrk curl
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from elsewhere (e.g. a NodeSource or image-provided install): accept any working npm.
if command -v npm >/dev/null 2>&1; then
  tmp=(); for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || tmp+=("$p"); done
  missing=("${tmp[@]}")
fi
if ((${#missing[@]})); then
  echo "[setup] installing apt packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "[setup] apt packages: all present"
fi

if [[ -x /usr/local/cuda/bin/nvcc ]]; then
  echo "[setup] CUDA found: $(/usr/local/cuda/bin/nvcc --version | tail -n 2 | head -n 1)"
else
  echo "[setup] CUDA not found at /usr/local/cuda: building the CPU backend only"
fi

if [[ "${GRAFT_SKIP_NPM:-0}" != 1 ]]; then
  # Reference implementations used by tests and benchmarks (never linked into graft).
  cd "$here/tools/npm"
  if [[ ! -f node_modules/.graft-installed ]] || [[ package.json -nt node_modules/.graft-installed ]]; then
    echo "[setup] installing npm test references into tools/npm/node_modules"
    npm install --no-audit --no-fund --loglevel=error
    touch node_modules/.graft-installed
  else
    echo "[setup] npm test references: present"
  fi
fi
