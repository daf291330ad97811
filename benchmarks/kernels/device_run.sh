#!/bin/bash
# One call on a GPU machine: build the kernels for sm_90a, run the CUDA parity test (ZIMAGE_SYNC=1),
# the op benchmark, the attention cases + DiT attention timing for each lab variant of the
# tensor-core attention kernel, the PyTorch reference timings (TORCH_REF=1), compute-sanitizer memcheck over the
# whole test and racecheck on one multi-tile attention case. Logs go to $OUT.
# Usage (repo root): OUT=/tmp/out bash benchmarks/kernels/device_run.sh
set -u
OUT=${OUT:-/tmp/zi_device_out}
CUDA=${CUDA:-/usr/local/cuda}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.." || exit 1
nvidia-smi -L
rm -rf build/kernels-make
(time make -C benchmarks/kernels -j16 ARCH=90a all) > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
B=build/kernels-make
CORE="csrc/ops_cpu.c csrc/ops_cuda.c csrc/backend.c csrc/zi_error.c csrc/safetensors.c csrc/json.c"
CFLAGS="-std=gnu11 -O2 -fopenmp -Wall -Wno-unused-parameter -DZI_WITH_CUDA -Icsrc -Ikernels -I$CUDA/include"
LIBS="-L$CUDA/lib64 -Wl,-rpath,$CUDA/lib64 -lcublasLt -lcublas -lcudart_static -lstdc++ -lpthread -ldl -lrt -lm"
# lab variants of the tensor-core attention kernel (see the knobs in kernels/attention.cu)
VARIANTS=("-DZI_ATTN_BM=128 -DZI_ATTN_WM=2" "-DZI_ATTN_BM=128 -DZI_ATTN_WM=2 -DZI_ATTN_BN=32" "-DZI_ATTN_MINB=3")
for i in "${!VARIANTS[@]}"; do
    ( $CUDA/bin/nvcc -c kernels/attention.cu ${VARIANTS[$i]} -o $B/att_v$i.o -O3 -std=c++17 -Xcompiler -fPIC -Ikernels \
          -Icsrc -gencode arch=compute_90a,code=sm_90a &&
      OBJS="$(ls $B/*.cu.o | grep -v attention) $B/att_v$i.o" &&
      gcc $CFLAGS tests/c/test_ops_cuda.c $CORE $OBJS $LIBS -o $B/test_v$i &&
      gcc $CFLAGS benchmarks/kernels/bench_ops.c $CORE $OBJS $LIBS -o $B/bench_v$i ) > "$OUT/build_v$i.log" 2>&1 &
done
wait

ZIMAGE_SYNC=1 timeout 300 $B/test_ops_cuda > "$OUT/test.log" 2>&1
echo "test rc=$?"
grep -E "FAIL|passed|testing" "$OUT/test.log"
timeout 120 $B/bench_ops 2>&1 | tee "$OUT/bench.log"
for i in "${!VARIANTS[@]}"; do
    echo "--- variant $i: ${VARIANTS[$i]}"
    timeout 120 $B/test_v$i attention > "$OUT/test_v$i.log" 2>&1
    echo "test (attention cases) rc=$?"; grep -E "FAIL|passed" "$OUT/test_v$i.log"
    timeout 60 $B/bench_v$i "HD=128" 2>&1 | tail -1
done
echo "--- default again (run-to-run spread)"
timeout 60 $B/bench_ops "HD=128" 2>&1 | tail -1
[ -n "${TORCH_REF:-}" ] && timeout 90 python3 benchmarks/kernels/bench_torch_ref.py 2>&1 | tee "$OUT/torch.log"
timeout 200 compute-sanitizer --tool memcheck $B/test_ops_cuda > "$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?"
grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log"
timeout 60 compute-sanitizer --tool racecheck $B/test_ops_cuda "attention S=130" > "$OUT/race.log" 2>&1
echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|passed" "$OUT/race.log"
timeout 60 compute-sanitizer --tool racecheck $B/test_v0 "attention S=130" > "$OUT/race_v0.log" 2>&1
echo "racecheck variant 0 rc=$?"; grep -E "RACECHECK SUMMARY|passed" "$OUT/race_v0.log"
