#!/bin/bash
# Lab driver for the sm_90a attention kernel (kernels/attention_sm90.cu), in two halves so that the
# device time goes to running, not compiling:
#   bash benchmarks/kernels/attn90_lab.sh build      # anywhere with nvcc (no GPU needed): builds the
#       parity test and the benchmark for sm_90a, the lab variants (VARIANTS below) and a bench_ops
#       whose kernels are compute_80 PTX only (JIT on the H100: the sm_90a probe must say "not taken")
#   OUT=/tmp/out bash benchmarks/kernels/attn90_lab.sh run   # on the GPU machine, from the repo root
# run: attention parity cases through the new kernel, each variant and the old one (ZIMAGE_ATTN_SM90=0),
# DiT attention timings (new, old, each variant, the new one again for the spread), PyTorch SDPA on
# the same card, Nsight Compute's speed-of-light section for one launch, compute-sanitizer memcheck
# on the attention cases, and the whole parity test once.
set -u
cd "$(dirname "$0")/../.." || exit 1
CUDA=${CUDA:-/usr/local/cuda}
B=build/kernels-make
CORE="csrc/ops_cpu.c csrc/ops_cuda.c csrc/backend.c csrc/zi_error.c csrc/safetensors.c csrc/json.c"
CFLAGS="-std=gnu11 -O2 -fopenmp -Wall -Wno-unused-parameter -DZI_WITH_CUDA -Icsrc -Ikernels -I$CUDA/include"
LIBS="-L$CUDA/lib64 -Wl,-rpath,$CUDA/lib64 -lcublasLt -lcublas -lcudart_static -lstdc++ -lpthread -ldl -lrt -lm"
NVFLAGS="-O3 -std=c++17 -Xcompiler -fPIC -lineinfo -Ikernels -Icsrc"
VARIANTS=("-DZI_ATTN90_PINGPONG=1")

if [ "${1:-}" = build ]; then
    set -e
    make -C benchmarks/kernels -j"$(nproc)" ARCH=90a all
    $CUDA/bin/nvcc -c kernels/attention_sm90.cu -o $B/a90.o $NVFLAGS -gencode arch=compute_90a,code=sm_90a -Xptxas -v 2>&1 |
        grep -E "attention_sm90|Used|spill"
    for i in "${!VARIANTS[@]}"; do
        $CUDA/bin/nvcc -c kernels/attention_sm90.cu ${VARIANTS[$i]} -o $B/a90_v$i.o $NVFLAGS \
            -gencode arch=compute_90a,code=sm_90a -Xptxas -v 2>&1 | grep -E "Used|spill" | tail -2
        gcc $CFLAGS benchmarks/kernels/bench_ops.c $CORE $(ls $B/*.cu.o | grep -v attention_sm90) $B/a90_v$i.o $LIBS \
            -o $B/bench_v$i
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
echo "--- attention cases, sm_90a kernel"
ZIMAGE_SYNC=1 timeout 90 $B/test_ops_cuda attention > "$OUT/test_attn.log" 2>&1
rc=$?
echo "rc=$rc"; grep -E "HD=128|passed|FAIL" "$OUT/test_attn.log"
if [ $rc = 124 ]; then tail -5 "$OUT/test_attn.log"; echo "the new kernel hangs: stopping here"; exit 1; fi
for i in "${!VARIANTS[@]}"; do
    echo "--- attention cases, variant ${VARIANTS[$i]}"
    ZIMAGE_SYNC=1 timeout 90 $B/test_v$i attention > "$OUT/test_v$i.log" 2>&1
    echo "rc=$?"; grep -E "passed|FAIL" "$OUT/test_v$i.log"
done
echo "--- attention cases, old kernel (ZIMAGE_ATTN_SM90=0)"
ZIMAGE_SYNC=1 ZIMAGE_ATTN_SM90=0 timeout 90 $B/test_ops_cuda attention > "$OUT/test_old.log" 2>&1
echo "rc=$?"; grep -E "passed|FAIL" "$OUT/test_old.log"
echo "--- timings"
{
    timeout 60 $B/bench_ops attention
    echo "old kernel:"; ZIMAGE_ATTN_SM90=0 timeout 60 $B/bench_ops "HD=128"
    for i in "${!VARIANTS[@]}"; do echo "variant ${VARIANTS[$i]}:"; timeout 60 $B/bench_v$i "HD=128"; done
    echo "sm_90a kernel again:"; timeout 60 $B/bench_ops "HD=128"
    echo "compute_80 PTX build (JIT):"; timeout 120 $B/bench_ptx80 "S=1024"
} 2>&1 | tee "$OUT/bench.log"
timeout 90 python3 benchmarks/kernels/bench_torch_ref.py 2>&1 | tee "$OUT/torch.log"
echo "--- Nsight Compute speed of light, one DiT-shape launch"
timeout 90 ncu --clock-control none --section SpeedOfLight -k regex:attention_sm90 --launch-skip 5 --launch-count 1 \
    $B/bench_ops "S=4128" > "$OUT/ncu.log" 2>&1
echo "rc=$?"; grep -E "Throughput|Duration|Elapsed Cycles|SM Frequency" "$OUT/ncu.log"
echo "--- memcheck (attention cases)"
timeout 150 compute-sanitizer --tool memcheck $B/test_ops_cuda attention > "$OUT/memcheck.log" 2>&1
echo "rc=$?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log"
echo "--- whole parity test"
ZIMAGE_SYNC=1 timeout 150 $B/test_ops_cuda > "$OUT/test_all.log" 2>&1
echo "rc=$?"; grep -E "passed|FAIL" "$OUT/test_all.log"
