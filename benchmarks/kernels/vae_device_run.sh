#!/bin/bash
# One device call for the VAE convolution work (kernels/conv.cu): build the kernel lab and the extension
# for sm_90a, run the CUDA parity test (ZIMAGE_SYNC=1), the conv benchmarks (old im2col path, the
# implicit GEMM with each tile configuration, the fused ops), one whole 1024^2 decode broken down per
# op (auto tiles, every conv forced to tile 5, 7 and 8, then ZIMAGE_CONV=im2col), the pytest suite,
# and compute-sanitizer memcheck over the 7x13 conv cases (scalar paths). Six logs go to $OUT.
# QUICK=1: only the auto-tile conv benchmarks and decodes (the final check of a change).
# Usage (repo root): OUT=/tmp/out bash benchmarks/kernels/vae_device_run.sh
set -u
OUT=${OUT:-/tmp/zi_vae_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.." || exit 1
nvidia-smi -L
(ZIMAGE_CUDA_ARCH=90a python3 setup.py build_ext --inplace -q > /tmp/zi_ext_build.log 2>&1; echo "ext build rc=$?" >> /tmp/zi_ext_build.log) &
EXT=$!
(time make -C benchmarks/kernels -j16 ARCH=90a all) > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
python3 benchmarks/kernels/make_vae_checkpoint.py /tmp/zi_vae > /tmp/zi_ckpt.log 2>&1 &
CK=$!
B=build/kernels-make
ZIMAGE_SYNC=1 timeout 200 $B/test_ops_cuda > "$OUT/test.log" 2>&1
echo "test rc=$?"; grep -E "FAIL|passed" "$OUT/test.log"
FILTER=conv TILES="5 7 8"
[ -n "${QUICK:-}" ] && FILTER=igemm TILES=
timeout 150 $B/bench_ops $FILTER > "$OUT/bench.log" 2>&1; echo "bench rc=$?"
wait $CK; cat /tmp/zi_ckpt.log
timeout 60 $B/bench_vae /tmp/zi_vae > "$OUT/vae.log" 2>&1; echo "bench_vae rc=$?"
for t in $TILES; do ZIMAGE_CONV_TILE=$t timeout 60 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv tile $t)/" >> "$OUT/vae.log" 2>&1; done
ZIMAGE_CONV=im2col timeout 60 $B/bench_vae /tmp/zi_vae >> "$OUT/vae.log" 2>&1; echo "bench_vae im2col rc=$?"
wait $EXT; cat /tmp/zi_ext_build.log >> "$OUT/build.log"; tail -2 /tmp/zi_ext_build.log
PYTHONUNBUFFERED=1 timeout 300 python3 -m pytest -q tests > "$OUT/pytest.log" 2>&1; echo "pytest rc=$?"; tail -3 "$OUT/pytest.log"
timeout 120 compute-sanitizer --tool memcheck $B/test_ops_cuda 7x13 > "$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log"
cat "$OUT/bench.log"; grep -v "^ *$" "$OUT/vae.log" | head -40; grep -E "VAE decode|per kind|sum of" "$OUT/vae.log"
