#!/usr/bin/env bash
# Installs every dependency graft needs, idempotently, from Debian packages and PyPI.
# Usage: scripts/setup.sh                  (apt packages + the Python test references in tools/.venv)
#        GRAFT_SKIP_VENV=1 scripts/setup.sh  (apt only: graft builds and runs; `reference` tests skip)
# The venv holds the libraries graft is checked against (tools/requirements-reference.txt); it is never
# needed to build or run graft.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

APT_PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libeigen3-dev libhdf5-dev libprotobuf-dev protobuf-compiler libyaml-cpp-dev
  nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libpcre2-dev libicu-dev
  libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev libopenmpi-dev
  libopenblas-dev python3 python3-venv
  clang wrk curl ccache
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
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

if [[ "${GRAFT_SKIP_VENV:-0}" != 1 ]]; then
  venv="$here/tools/.venv"
  req="$here/tools/requirements-reference.txt"
  stamp="$venv/.graft-installed"
  if [[ -f "$stamp" ]] && cmp -s "$req" "$stamp" && "$venv/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
    echo "[setup] Python test references (tools/.venv): present"
  else
    echo "[setup] installing the Python test references into tools/.venv (first time: ~3.5 GB download, mostly torch)"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$req"
    cp "$req" "$stamp"
  fi
fi
