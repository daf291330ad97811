#!/bin/bash
# Lab driver for the sm_90a attention kernel (kernels/attention_sm90.cu), in two halves so that the
# device time goes to running, not compiling:
#   bash benchmarks/kernels/attn90_lab.sh build      # anywhere with nvcc (no GPU needed): builds the
#       parity test and the benchmarks for sm_90a, the lab variants (VARIANTS below), the kernel of commit
#       $ATTN90_PREV (default: the one before the BM = 192 tiles) as a "prev" object with renamed symbols for
#       bench_attn90, and a bench_ops whose kernels are compute_80 PTX only (JIT on the H100: the sm_90a
#       probe must say "not taken")
#   OUT=/tmp/out bash benchmarks/kernels/attn90_lab.sh run   # on the GPU machine, from the repo root
# run: attention parity cases through the new kernel (its own choice of tile, then forced BM = 192 and
# BM = 128), each variant and the old one (ZIMAGE_ATTN_SM90=0); timings: bench_ops (per call and back to
# back, the mma.sync kernel too), bench_attn90 (prev vs BM = 128 / 192 / auto in one process, per call and
# sustained) with nvidia-smi sampling clocks and power into $OUT/clocks.csv, each variant's bench_attn90 at
# S = 4128, PyTorch SDPA on the same card; compute-sanitizer memcheck on the attention cases (BM = 192
# forced), and the whole parity test once (ATTN90_CHECKS=0: not these two). ATTN90_NCU=1 adds Nsight Compute's
# speed-of-light section. Shorter runs: ATTN90_FULL=0 leaves out bench_ops, the compute_80 build and SDPA;
# ATTN90_CHECK_BIN (default test_ops_cuda, e.g. test_v0) and ATTN90_MEMCHECK_FILTER (default "attention")
# pick what memcheck runs; ATTN90_RACECHECK_FILTER=<case> adds racecheck on those cases; ATTN90_WHOLE=0
# skips the whole parity test.
set -u
cd "$(dirname "$0")/../.." || exit 1
CUDA=${CUDA:-/usr/local/cuda}
B=build/kernels-make
CORE="csrc/ops_cpu.c csrc/ops_cuda.c csrc/backend.c csrc/zi_error.c csrc/safetensors.c csrc/json.c"
CFLAGS="-std=gnu11 -O2 -fopenmp -Wall -Wno-unused-parameter -DZI_WITH_CUDA -Icsrc -Ikernels -I$CUDA/include"
LIBS="-L$CUDA/lib64 -Wl,-rpath,$CUDA/lib64 -lcublasLt -lcublas -lcudart_static -lstdc++ -lpthread -ldl -lrt -lm"
NVFLAGS="-O3 -std=c++17 -Xcompiler -fPIC -lineinfo -Ikernels -Icsrc"
# round 2: P through shared memory in the 3-consumer kernel (warpgroup barrier / warp sync before P V), O
# rescaled only where needed (exact / FA4's lazy max);
# round 1 tried "-DZI_ATTN90_BN3=96 [-DZI_ATTN90_STAGES=3]", "-DZI_ATTN90_OVERLAP3=1 -DZI_ATTN90_BN3=64 ..."
VARIANTS=("-DZI_ATTN90_PSMEM3=1" "-DZI_ATTN90_PSMEM3=2" "-DZI_ATTN90_RESCALE3=1" "-DZI_ATTN90_RESCALE3=0")
VARIANT_BM=(192 192 192 192) # the tile shape each variant changes (its parity cases run with it forced)
# prev: round 1's kernel (BM = 192 with P in registers); dd0e047 is the one before the BM = 192 tiles
PREV=${ATTN90_PREV:-85e2204}

if [ "${1:-}" = build ]; then
    set -e
    make -C benchmarks/kernels -j"$(nproc)" ARCH=90a all
    $CUDA/bin/nvcc -c kernels/attention_sm90.cu -o $B/a90.o $NVFLAGS -gencode arch=compute_90a,code=sm_90a -Xptxas -v 2>&1 |
        grep -E "attention_sm90|Used|spill|C75"
    git show "$PREV":kernels/attention_sm90.cu > $B/attention_sm90_prev.cu
    $CUDA/bin/nvcc -c $B/attention_sm90_prev.cu -o $B/a90_prev.o $NVFLAGS -gencode arch=compute_90a,code=sm_90a \
        -Dzi_attention_sm90_cuda=zi_attention_sm90_prev_cuda -Dattention_sm90_kernel=attention_sm90_prev_kernel \
        -Dzi_attention_sm90_force_bm=zi_attention_sm90_prev_force_bm
    gcc $CFLAGS benchmarks/kernels/bench_attn90.c $B/attention_sm90.cu.o $B/a90_prev.o $LIBS -o $B/bench_attn90
    for i in "${!VARIANTS[@]}"; do
        echo "variant ${VARIANTS[$i]}:"
        $CUDA/bin/nvcc -c kernels/attention_sm90.cu ${VARIANTS[$i]} -o $B/a90_v$i.o $NVFLAGS \
            -gencode arch=compute_90a,code=sm_90a -Xptxas -v 2>&1 | grep -E "Compiling|Used|spill|C75"
        gcc $CFLAGS benchmarks/kernels/bench_attn90.c $B/a90_v$i.o $B/a90_prev.o $LIBS -o $B/bench_attn90_v$i
        gcc $CFLAGS tests/c/test_ops_cuda.c $CORE $(ls $B/*.cu.o | grep -v attention_sm90) $B/a90_v$i.o $LIBS \
            -o $B/test_v$i
    done
    mkdir -p $B/ptx80
    for f in kernels/*.cu; do
        $CUDA/bin/nvcc -c $f -o $B/ptx80/$(basename $f).o $NVFLAGS -gencode arch=compute_80,code=compute_80 &
    done
    wait
    gcc $CFLAGS benchmarks/kernels/bench_ops.c $CORE $B/ptx80/*.cu.o $LIBS -o $B/bench_ptx80
    exit 0
fi

OUT=${OUT:-/tmp/zi_attn90_out}
mkdir -p "$OUT"
nvidia-smi -L
[ -x $B/test_ops_cuda ] || { echo "build first: bash $0 build"; exit 1; }
attn_cases() { # label, binary, env...
    local label=$1 bin=$2
    shift 2
    echo "--- attention cases, $label"
    env ZIMAGE_SYNC=1 "$@" timeout 90 $bin attention > "$OUT/test_$label.log" 2>&1
    local rc=$?
    echo "rc=$rc"; grep -E "passed|FAIL" "$OUT/test_$label.log"
    return $rc
}
attn_cases new $B/test_ops_cuda
[ $? = 124 ] && { tail -5 "$OUT/test_new.log"; echo "the new kernel hangs: stopping here"; exit 1; }
attn_cases bm192 $B/test_ops_cuda ZIMAGE_ATTN90_BM=192 || { echo "BM=192 failed: stopping here"; exit 1; }
attn_cases bm128 $B/test_ops_cuda ZIMAGE_ATTN90_BM=128
for i in "${!VARIANTS[@]}"; do attn_cases "v${i}_${VARIANT_BM[$i]}" $B/test_v$i ZIMAGE_ATTN90_BM=${VARIANT_BM[$i]}; done
attn_cases old $B/test_ops_cuda ZIMAGE_ATTN_SM90=0
echo "--- timings"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv \
    -lms 100 > "$OUT/clocks.csv" 2>&1 &
SMI=$!
{
    if [ "${ATTN90_FULL:-1}" = 1 ]; then
        timeout 60 $B/bench_ops attention
        echo "old kernel (mma.sync):"; ZIMAGE_ATTN_SM90=0 timeout 60 $B/bench_ops "S=4128"
        echo "compute_80 PTX build (JIT):"; timeout 120 $B/bench_ptx80 "S=1024"
    fi
    timeout 120 $B/bench_attn90
    for i in "${!VARIANTS[@]}"; do echo "variant ${VARIANTS[$i]}:"; timeout 60 $B/bench_attn90_v$i ${ATTN90_VARIANT_S:-4128}; done
    echo "current kernel again:"; timeout 60 $B/bench_attn90 4128
} 2>&1 | tee "$OUT/bench.log"
kill $SMI
[ "${ATTN90_FULL:-1}" = 1 ] && timeout 90 python3 benchmarks/kernels/bench_torch_ref.py 2>&1 | grep -i attention | tee "$OUT/torch.log"
if [ "${ATTN90_NCU:-0}" = 1 ]; then
    echo "--- Nsight Compute speed of light, one DiT-shape launch"
    timeout 90 ncu --clock-control none --section SpeedOfLight -k regex:attention_sm90 --launch-skip 5 --launch-count 1 \
        $B/bench_ops "S=4128" > "$OUT/ncu.log" 2>&1
    echo "rc=$?"; grep -E "Throughput|Duration|Elapsed Cycles|SM Frequency" "$OUT/ncu.log"
fi
[ "${ATTN90_CHECKS:-1}" = 0 ] && exit 0
CB=${ATTN90_CHECK_BIN:-test_ops_cuda}
echo "--- memcheck ($CB, ${ATTN90_MEMCHECK_FILTER:-attention} cases, BM = 192 forced)"
ZIMAGE_ATTN90_BM=192 timeout ${ATTN90_MEMCHECK_S:-150} compute-sanitizer --tool memcheck $B/$CB \
    "${ATTN90_MEMCHECK_FILTER:-attention}" > "$OUT/memcheck.log" 2>&1
echo "rc=$?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log"
if [ -n "${ATTN90_RACECHECK_FILTER:-}" ]; then
    echo "--- racecheck ($CB, $ATTN90_RACECHECK_FILTER, BM = 192 forced)"
    ZIMAGE_ATTN90_BM=192 timeout ${ATTN90_MEMCHECK_S:-150} compute-sanitizer --tool racecheck $B/$CB \
        "$ATTN90_RACECHECK_FILTER" > "$OUT/racecheck.log" 2>&1
    echo "rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|hazard" "$OUT/racecheck.log" | head
fi
[ "${ATTN90_WHOLE:-1}" = 0 ] && exit 0
echo "--- whole parity test"
ZIMAGE_SYNC=1 timeout 150 $B/test_ops_cuda > "$OUT/test_all.log" 2>&1
echo "rc=$?"; grep -E "passed|FAIL" "$OUT/test_all.log"
