#!/usr/bin/env bash
# One call on the GPU machine: build for the local card, then run the whole test suite
# (the GPU tests included). Usage: bash benchmarks/gpu_check.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
export ZIMAGE_CUDA_ARCH="${ZIMAGE_CUDA_ARCH:-90a}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
python3 setup.py build_ext --inplace -q >/tmp/zimage-build.log 2>&1 || { tail -n 60 /tmp/zimage-build.log; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
python3 -m zimage --info
python3 -m pytest -q -p no:cacheprovider tests "$@"
