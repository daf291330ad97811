#!/bin/bash
# One device call (within ~220 s) of the VAE GroupNorm / packing work: binaries built off the device
# (make -C benchmarks/kernels ARCH=90a OUT=<dir> all, then tar cJf <name>.tar.xz -C <dir> test_ops_cuda
# bench_ops bench_vae): new.tar.xz (this code), old.tar.xz (the commit before the work) and, per name in
# VARIANTS, var_<name>.tar.xz (lab variants of the new code). Untimed first: the parity test of the new
# binary (ZIMAGE_SYNC=1), the groupnorm_conv2d / groupnorm cases of the old binary (the error columns to
# compare), compute-sanitizer memcheck over $MEMCHECK cases, while (PYTEST=1) the extension builds (sm_90a)
# and the checkpoint is written; then timed: bench_ops cases $BFILTERS (substrings separated by ;) with
# every binary, 1024^2 decodes new, old, each variant, new again, new under each VENV setting, old again; last
# (PYTEST=1) the GPU VAE tests (pytest -k vae).
# Usage (repo root): OUT=/tmp/out [PYTEST=1] [VARIANTS="a b"] [VENV="K=V .."] bash benchmarks/kernels/gnfast_run.sh
set -u
OUT=${OUT:-/tmp/zi_gnfast_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.." || exit 1
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
PYBUILD_TIMEOUT=200 source benchmarks/kernels/vae_lab_start.sh
BINS="new old"
for v in ${VARIANTS:-}; do BINS="$BINS var_$v"; done
for d in $BINS; do mkdir -p $d && xz -dc $d.tar.xz | tar xf - -C $d; done
ZIMAGE_SYNC=1 timeout 80 new/test_ops_cuda ${TFILTER:-} > "$OUT/test.log" 2>&1
echo "test rc=$?"; grep -E "FAIL|passed" "$OUT/test.log" | head -20
{ ZIMAGE_SYNC=1 timeout 30 old/test_ops_cuda groupnorm; } > "$OUT/test_old_gn.log" 2>&1
echo "old groupnorm cases rc=$?"; tail -1 "$OUT/test_old_gn.log"
IFS=';' read -ra MC <<< "${MEMCHECK:-Co=3 k=3 G=32 silu x~[-1,1) +res;B=2 Ci=64 16x16 Co=64 k=3 G=32 silu x~[-1,1) +res in place;Ci=40 33x65;Ci=256 100x100}"
for c in "${MC[@]}"; do
    timeout 40 compute-sanitizer --tool memcheck new/test_ops_cuda "$c" >> "$OUT/memcheck.log" 2>&1
    echo "memcheck '$c' rc=$?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log" | tail -2
done
vae_lab_wait
IFS=';' read -ra BF <<< "${BFILTERS:-pack;stats;groupnorm_conv2d 128->128}"
for f in "${BF[@]}"; do
    for d in $BINS; do { echo "--- $d: $f"; timeout 30 $d/bench_ops "$f"; } >> "$OUT/bench.log" 2>&1; done
done
for d in $BINS; do timeout 20 $d/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, $d)/" >> "$OUT/vae.log" 2>&1; done
timeout 20 new/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, new again)/" >> "$OUT/vae.log" 2>&1
for kv in ${VENV:-}; do env $kv timeout 20 new/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, new, $kv)/" >> "$OUT/vae.log" 2>&1; done
timeout 20 old/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, old again)/" >> "$OUT/vae.log" 2>&1
cat "$OUT/bench.log" | grep -v "^#"; grep -E "VAE decode|per kind" "$OUT/vae.log"; head -26 "$OUT/vae.log"
if [ -n "$PB" ]; then
    timeout 110 python3 -m pytest -q tests -k "vae or pipeline" > "$OUT/pytest.log" 2>&1
    echo "pytest rc=$?"; tail -5 "$OUT/pytest.log"
fi
