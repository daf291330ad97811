#!/usr/bin/env bash
# One GPU call: build, write the full-size random checkpoint (real layout), check numerical
# parity against diffusers fp32/bf16, and benchmark zimage against diffusers (eager; with
# torch.compile when FRAMEWORKS includes "compiled"). Wheels for diffusers and its pure-Python
# dependencies travel in .carry/ (the GPU machine has no network).
#   bash benchmarks/full_size_run.sh                 # parity + bench zimage,diffusers
#   STAGES=bench FRAMEWORKS=compiled bash benchmarks/full_size_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/zi-out}"
mkdir -p "$OUT"
CKPT="${CKPT:-/tmp/zi-ckpt}"
STAGES="${STAGES:-parity,bench}"
FRAMEWORKS="${FRAMEWORKS:-zimage,diffusers}"
SIZES="${SIZES:-1024,512,2048}"
# install only what is missing (the wheels are pure Python or built for the GPU machine's Python 3.12)
for mod_whl in "importlib_metadata:importlib_metadata zipp" "PIL:pillow" "requests:requests urllib3 idna certifi charset_normalizer" \
               "diffusers:diffusers"; do
  mod=${mod_whl%%:*}
  python3 -c "import $mod" 2>/dev/null && continue
  for w in ${mod_whl#*:}; do python3 -m pip install -q --no-deps .carry/${w}-*.whl 2>&1 | grep -v WARNING || true; done
done
python3 -c "import diffusers; print('diffusers', diffusers.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ZIMAGE_CUDA_ARCH="${ZIMAGE_CUDA_ARCH:-90a}" python3 setup.py build_ext --inplace -q >/tmp/zimage-build.log 2>&1 \
  || { tail -n 40 /tmp/zimage-build.log; exit 1; }
t0=$(date +%s)
python3 benchmarks/make_random_checkpoint.py "$CKPT"
echo "checkpoint ready after $(( $(date +%s) - t0 )) s"
case ",$STAGES," in *,parity,*)
  python3 benchmarks/parity_full.py --ckpt "$CKPT" --json "$OUT/parity.json" ;; esac
case ",$STAGES," in *,bench,*)
  python3 benchmarks/bench_pipeline.py --ckpt "$CKPT" --frameworks "$FRAMEWORKS" --sizes "$SIZES" --runs 5 \
    --json "$OUT/bench_${FRAMEWORKS//,/_}.json" ;; esac
