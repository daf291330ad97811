#!/bin/bash
# Lab driver for the sm_90a GEMM (kernels/gemm_sm90.cu), one call on the GPU machine, from the repo root:
#   OUT=/tmp/out bash benchmarks/kernels/gemm90_lab.sh
# Builds the parity test and the benchmark for sm_90a plus one bench/test pair per lab variant (VARIANTS:
# -D knobs of gemm_sm90.cu), then: matmul_swiglu parity cases (kernel, each variant, the unfused path with
# ZIMAGE_GEMM_SM90=0), the DiT GEMM / feed-forward timings (cuBLASLt and the kernel in the same process),
# each variant's feed-forward and GEMM timings, memcheck and racecheck on small cases, and the default
# feed-forward timings again (the spread).
set -u
cd "$(dirname "$0")/../.." || exit 1
CUDA=${CUDA:-/usr/local/cuda}
B=build/kernels-make
OUT=${OUT:-/tmp/zi_gemm90_out}
CORE="csrc/ops_cpu.c csrc/ops_cuda.c csrc/backend.c csrc/zi_error.c csrc/safetensors.c csrc/json.c"
CFLAGS="-std=gnu11 -O2 -fopenmp -Wall -Wno-unused-parameter -DZI_WITH_CUDA -Icsrc -Ikernels -I$CUDA/include"
LIBS="-L$CUDA/lib64 -Wl,-rpath,$CUDA/lib64 -lcublasLt -lcublas -lcudart_static -lstdc++ -lpthread -ldl -lrt -lm"
NVFLAGS="-O3 -std=c++17 -Xcompiler -fPIC -lineinfo -Ikernels -Icsrc -gencode arch=compute_90a,code=sm_90a"
VARIANTS=("-DZI_GEMM90_GROUP_M=0" "-DZI_GEMM90_GROUP_M=4" "-DZI_GEMM90_GROUP_M=16")
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; date -u

make -C benchmarks/kernels -j"$(nproc)" ARCH=90a all > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
for i in "${!VARIANTS[@]}"; do
    (
        $CUDA/bin/nvcc -c kernels/gemm_sm90.cu ${VARIANTS[$i]} -o $B/g90_v$i.o $NVFLAGS &&
            gcc $CFLAGS benchmarks/kernels/bench_ops.c $CORE $(ls $B/*.cu.o | grep -v gemm_sm90) $B/g90_v$i.o $LIBS -o $B/bench_v$i &&
            gcc $CFLAGS tests/c/test_ops_cuda.c $CORE $(ls $B/*.cu.o | grep -v gemm_sm90) $B/g90_v$i.o $LIBS -o $B/test_v$i
    ) > "$OUT/build_v$i.log" 2>&1 &
done
wait

echo "--- matmul_swiglu parity: kernel, unfused path, variants"
ZIMAGE_SYNC=1 timeout 60 $B/test_ops_cuda swiglu > "$OUT/test.log" 2>&1; echo "rc=$?"; grep -E "passed|FAIL" "$OUT/test.log"
ZIMAGE_GEMM_SM90=0 ZIMAGE_SYNC=1 timeout 40 $B/test_ops_cuda matmul_swiglu > "$OUT/test_unfused.log" 2>&1
echo "rc=$?"; grep -E "passed|FAIL" "$OUT/test_unfused.log"
for i in "${!VARIANTS[@]}"; do
    echo "variant ${VARIANTS[$i]}:"
    ZIMAGE_SYNC=1 timeout 40 $B/test_v$i matmul_swiglu > "$OUT/test_v$i.log" 2>&1; echo "rc=$?"; grep -E "passed|FAIL" "$OUT/test_v$i.log"
done
echo "--- timings (cuBLASLt and the kernel in one process)"
timeout 60 $B/bench_ops "M=4" 2>&1 | tee "$OUT/bench.log"
for i in "${!VARIANTS[@]}"; do
    echo "variant ${VARIANTS[$i]}:"
    BENCH_NO_COMPARE=1 timeout 30 $B/bench_v$i "M=4" 2>&1 | grep -E "ffn|gemm_sm90" | tee "$OUT/bench_v$i.log"
done
echo "default again:"; BENCH_NO_COMPARE=1 timeout 30 $B/bench_ops "ffn" 2>&1 | tee "$OUT/bench_again.log"
echo "--- sanitizers"
CS=$(command -v compute-sanitizer || echo $CUDA/bin/compute-sanitizer)
timeout 30 $CS --tool memcheck $B/test_ops_cuda "matmul_swiglu M=130" > "$OUT/memcheck.log" 2>&1
grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log"
timeout 30 $CS --tool racecheck $B/test_ops_cuda "matmul_swiglu M=32 " > "$OUT/racecheck.log" 2>&1
grep -E "RACECHECK SUMMARY|passed" "$OUT/racecheck.log"
if [ -x $B/test_v0 ]; then
    timeout 30 $CS --tool memcheck $B/test_v0 "matmul_swiglu M=2000" > "$OUT/memcheck_v0.log" 2>&1
    grep -E "ERROR SUMMARY|passed" "$OUT/memcheck_v0.log"
    timeout 40 $CS --tool racecheck $B/test_v0 "matmul_swiglu M=2000" > "$OUT/racecheck_v0.log" 2>&1
    grep -E "RACECHECK SUMMARY|passed" "$OUT/racecheck_v0.log"
fi
