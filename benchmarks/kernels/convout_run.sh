#!/bin/bash
# One device call (within ~200 s) of the conv_out direct kernel, the register softmax and the pipelined
# packing pass: new binaries in prebuilt.tar.xz and "before" binaries (the commit before this work) in
# old.tar.xz, both built off the device (make -C benchmarks/kernels ARCH="80 90a" all). Untimed first: the
# parity test (ZIMAGE_SYNC=1), the conv tests again under each TENV setting, compute-sanitizer memcheck
# over the new paths' cases, while (PYTEST=1) the extension builds (sm_90a) and the checkpoint is written;
# then timed on a quiet host: bench_ops cases $BFILTERS (substrings separated by ;) with the new and the
# old binary, the BENVFILTER cases under each BENV setting, 1024^2 decodes new, old, new and new under each
# VENV setting; last (PYTEST=1) the GPU VAE tests of the extension.
# Usage (repo root): OUT=/tmp/out [PYTEST=1] bash benchmarks/kernels/convout_run.sh
set -u
OUT=${OUT:-/tmp/zi_convout_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.." || exit 1
PYBUILD_TIMEOUT=170 source benchmarks/kernels/vae_lab_start.sh
for d in prebuilt old; do mkdir -p $d && xz -dc $d.tar.xz | tar xf - -C $d; done
B=prebuilt O=old
ZIMAGE_SYNC=1 timeout 70 $B/test_ops_cuda ${TFILTER:-} > "$OUT/test.log" 2>&1
echo "test rc=$?"; grep -E "FAIL|passed" "$OUT/test.log" | head -20
for kv in ${TENV:-}; do
    echo "--- $kv" >> "$OUT/test.log"; env ZIMAGE_SYNC=1 $kv timeout 40 $B/test_ops_cuda conv >> "$OUT/test.log" 2>&1
    echo "test conv $kv rc=$?"; tail -1 "$OUT/test.log"
done
IFS=';' read -ra MC <<< "${MEMCHECK:-Co=3 k=3 G=32 silu x~[-1,1) +res;Ci=40 33x65;Co=1 k=3;attention S=700;Ci=256 100x100}"
for c in "${MC[@]}"; do
    timeout 40 compute-sanitizer --tool memcheck $B/test_ops_cuda "$c" >> "$OUT/memcheck.log" 2>&1
    echo "memcheck '$c' rc=$?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log" | tail -2
done
vae_lab_wait
IFS=';' read -ra BF <<< "${BFILTERS:-128->3;HD=512}"
for f in "${BF[@]}"; do
    { echo "--- new: $f"; timeout 30 $B/bench_ops "$f"; echo "--- old: $f"; timeout 30 $O/bench_ops "$f"; } >> "$OUT/bench.log" 2>&1
done
for kv in ${BENV:-}; do { echo "--- new, $kv"; env $kv timeout 30 $B/bench_ops "${BENVFILTER:-pack}"; } >> "$OUT/bench.log" 2>&1; done
timeout 20 $B/bench_vae /tmp/zi_vae > "$OUT/vae.log" 2>&1; echo "bench_vae rc=$?"
timeout 20 $O/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, before)/" >> "$OUT/vae.log" 2>&1
timeout 20 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, again)/" >> "$OUT/vae.log" 2>&1
for kv in ${VENV:-}; do env $kv timeout 20 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, $kv)/" >> "$OUT/vae.log" 2>&1; done
timeout 20 $O/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, before, again)/" >> "$OUT/vae.log" 2>&1
cat "$OUT/bench.log"; grep -E "VAE decode|per kind" "$OUT/vae.log"; head -26 "$OUT/vae.log"
if [ -n "$PB" ]; then
    timeout 100 python3 -m pytest -q tests/test_models_cuda.py tests/test_vae_tiling.py > "$OUT/pytest.log" 2>&1
    echo "pytest rc=$?"; tail -5 "$OUT/pytest.log"
fi
