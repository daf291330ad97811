#!/usr/bin/env bash
# One GPU call: build, write the full-size random checkpoint (real layout), check numerical
# parity against diffusers fp32/bf16, and benchmark zimage against diffusers (eager; with
# torch.compile when FRAMEWORKS includes "compiled"). Wheels for diffusers and its pure-Python
# dependencies travel in .carry/ (the GPU machine has no network).
#   bash benchmarks/full_size_run.sh                 # parity + bench zimage,diffusers
#   STAGES=bench FRAMEWORKS=compiled bash benchmarks/full_size_run.sh
#   STAGES=memory bash benchmarks/full_size_run.sh   # memory, offload and load times (bench_memory.py)
#   STAGES=tests,memory ...                          # + the whole test suite while the checkpoint is written
# MEMORY_ARGS: extra bench_memory.py arguments (e.g. "--deadline 300").
# CARRY names the wheel folder when the script runs from a copy of the repository (default .carry).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/zi-out}"
mkdir -p "$OUT"
CKPT="${CKPT:-/tmp/zi-ckpt}"
STAGES="${STAGES:-parity,bench}"
FRAMEWORKS="${FRAMEWORKS:-zimage,diffusers}"
SIZES="${SIZES:-1024,512,2048}"
CARRY="${CARRY:-.carry}"
# install only what is missing (the wheels are pure Python or built for the GPU machine's Python 3.12)
for mod_whl in "importlib_metadata:importlib_metadata zipp" "PIL:pillow" "requests:requests urllib3 idna certifi charset_normalizer" \
               "diffusers:diffusers"; do
  mod=${mod_whl%%:*}
  python3 -c "import $mod" 2>/dev/null && continue
  for w in ${mod_whl#*:}; do python3 -m pip install -q --no-deps "$CARRY"/${w}-*.whl 2>&1 | grep -v WARNING || true; done
done
python3 -c "import diffusers; print('diffusers', diffusers.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ZIMAGE_CUDA_ARCH="${ZIMAGE_CUDA_ARCH:-90a}" python3 setup.py build_ext --inplace -q >/tmp/zimage-build.log 2>&1 \
  || { tail -n 40 /tmp/zimage-build.log; exit 1; }
tests_pid=
case ",$STAGES," in *,tests,*)
  # the test suite (GPU tests included) runs while the checkpoint is written; the benchmarks wait for it
  (python3 -m pytest -q -p no:cacheprovider tests >"$OUT/tests.log" 2>&1; echo "pytest exit $?" >>"$OUT/tests.log") &
  tests_pid=$! ;; esac
t0=$(date +%s)
python3 benchmarks/make_random_checkpoint.py "$CKPT"
echo "checkpoint ready after $(( $(date +%s) - t0 )) s"
if [ -n "$tests_pid" ]; then wait "$tests_pid" || true; tail -n 15 "$OUT/tests.log"; fi
case ",$STAGES," in *,parity,*)
  python3 benchmarks/parity_full.py --ckpt "$CKPT" --json "$OUT/parity.json" ;; esac
case ",$STAGES," in *,bench,*)
  python3 benchmarks/bench_pipeline.py --ckpt "$CKPT" --frameworks "$FRAMEWORKS" --sizes "$SIZES" --runs 5 \
    --json "$OUT/bench_${FRAMEWORKS//,/_}.json" ;; esac
case ",$STAGES," in *,memory,*)
  python3 benchmarks/bench_memory.py --ckpt "$CKPT" --frameworks "$FRAMEWORKS" --json "$OUT/memory.json" \
    ${MEMORY_ARGS:-} ;; esac
