#!/bin/bash
# One device call (within ~200 s) of the conv_out direct kernel and the register softmax: new binaries in
# prebuilt.tar.xz and "before" binaries (the commit before this work) in old.tar.xz, both built off the
# device (make -C benchmarks/kernels ARCH="80 90a" all). Parity test (ZIMAGE_SYNC=1); bench_ops cases
# $BFILTERS (each a substring) with the new and the old binary; 1024^2 decodes new, old, new (and new
# under each VENV setting; the S=16384 attention case under each AENV setting); compute-sanitizer memcheck over the direct-conv and softmax cases; with
# PYTEST=1 the extension is built here (sm_90a) and the GPU VAE tests run.
# Usage (repo root): OUT=/tmp/out bash benchmarks/kernels/convout_run.sh
set -u
OUT=${OUT:-/tmp/zi_convout_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.." || exit 1
nvidia-smi -L
python3 benchmarks/kernels/make_vae_checkpoint.py /tmp/zi_vae > /tmp/zi_ckpt.log 2>&1 &
CK=$!
[ -e tests/fixtures ] || ln -s ../../../tests/fixtures tests/fixtures # a copy under .wt/ of the repo: its fixtures
for d in prebuilt old; do mkdir -p $d && xz -dc $d.tar.xz | tar xf - -C $d; done
B=prebuilt O=old
ZIMAGE_SYNC=1 timeout 70 $B/test_ops_cuda ${TFILTER:-} > "$OUT/test.log" 2>&1
echo "test rc=$?"; grep -E "FAIL|passed" "$OUT/test.log" | head -20
for f in ${BFILTERS:-128->3 HD=512}; do
    { echo "--- new: $f"; timeout 30 $B/bench_ops "$f"; echo "--- old: $f"; timeout 30 $O/bench_ops "$f"; } >> "$OUT/bench.log" 2>&1
done
for kv in ${AENV:-}; do { echo "--- new, $kv"; env $kv timeout 30 $B/bench_ops "S=16384"; } >> "$OUT/bench.log" 2>&1; done
wait $CK; cat /tmp/zi_ckpt.log
timeout 20 $B/bench_vae /tmp/zi_vae > "$OUT/vae.log" 2>&1; echo "bench_vae rc=$?"
timeout 20 $O/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, before)/" >> "$OUT/vae.log" 2>&1
timeout 20 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, again)/" >> "$OUT/vae.log" 2>&1
for kv in ${VENV:-}; do env $kv timeout 20 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, $kv)/" >> "$OUT/vae.log" 2>&1; done
for c in "Co=3 k=3 G=32 silu x~[-1,1) +res" "Ci=40 33x65" "Co=1 k=3" "attention S=700" "attention S=2500"; do
    timeout 40 compute-sanitizer --tool memcheck $B/test_ops_cuda "$c" >> "$OUT/memcheck.log" 2>&1
    echo "memcheck '$c' rc=$?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log" | tail -2
done
cat "$OUT/bench.log"; grep -E "VAE decode|per kind|sum of" "$OUT/vae.log"; head -40 "$OUT/vae.log"
if [ -n "${PYTEST:-}" ]; then
    ZIMAGE_CUDA_ARCH=90a timeout 150 python3 setup.py build_ext --inplace -q > "$OUT/pybuild.log" 2>&1; echo "ext build rc=$?"
    timeout 100 python3 -m pytest -q tests/test_models_cuda.py tests/test_vae_tiling.py > "$OUT/pytest.log" 2>&1
    echo "pytest rc=$?"; tail -5 "$OUT/pytest.log"
fi
