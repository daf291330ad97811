#!/bin/bash
# One device call for the sm_90a (wgmma) convolution work in kernels/conv.cu, within ~200 s: the binaries
# come prebuilt in $PRE or $PRE.tar.xz (built off the device: make -C benchmarks/kernels ARCH="80 90a" all) or are built
# here when they do not run. Parity test (ZIMAGE_SYNC=1), the conv benchmarks (auto, mma.sync tile 4, the
# wgmma tiles 9-12), whole 1024^2 decodes (auto = wgmma, then ZIMAGE_CONV_SM90=0 = the mma.sync kernel,
# then each conv forced to the tiles in $TILES; BASE=<filter>: those bench_ops cases again with
# ZIMAGE_CONV_SM90=0; TENV / BENV / VENV = "VAR=value ...": the conv tests, bench_ops $BENVFILTER cases and
# decodes again under each; OLD=<dir>: decodes and conv benchmarks with the binaries in <dir>.tar.xz built
# from an earlier commit, between two decodes of these), and compute-sanitizer memcheck over the 7x13 wgmma cases.
# Usage (repo root): OUT=/tmp/out PRE=prebuilt bash benchmarks/kernels/conv90_run.sh
set -u
OUT=${OUT:-/tmp/zi_conv90_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.." || exit 1
nvidia-smi -L
python3 benchmarks/kernels/make_vae_checkpoint.py /tmp/zi_vae > /tmp/zi_ckpt.log 2>&1 &
CK=$!
B=${PRE:-prebuilt}
[ -d "$B" ] || { mkdir -p "$B" && xz -dc "$B.tar.xz" | tar xf - -C "$B"; }
if ! $B/test_ops_cuda no-such-case > /dev/null 2>&1; then
    echo "prebuilt binaries do not run: building"
    (time make -C benchmarks/kernels -j16 ARCH=90a all) > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
    B=build/kernels-make
fi
ZIMAGE_SYNC=1 timeout 60 $B/test_ops_cuda ${TFILTER:-} > "$OUT/test.log" 2>&1
echo "test rc=$?"; grep -E "FAIL|passed" "$OUT/test.log" | head -20
for kv in ${TENV:-}; do # more test runs, each with one VAR=value (filter conv)
    echo "--- $kv" >> "$OUT/test.log"; env ZIMAGE_SYNC=1 $kv timeout 40 $B/test_ops_cuda conv >> "$OUT/test.log" 2>&1
    echo "test $kv rc=$?"; tail -1 "$OUT/test.log"
done
timeout 70 $B/bench_ops ${BFILTER:-conv} > "$OUT/bench.log" 2>&1; echo "bench rc=$?"
for kv in ${BENV:-}; do { echo "--- $kv"; env $kv timeout 30 $B/bench_ops "${BENVFILTER:-_conv}"; } >> "$OUT/bench.log" 2>&1; done
[ -n "${BASE:-}" ] && { echo "--- ZIMAGE_CONV_SM90=0"; ZIMAGE_CONV_SM90=0 timeout 40 $B/bench_ops "$BASE"; } >> "$OUT/bench.log" 2>&1
wait $CK; cat /tmp/zi_ckpt.log
timeout 20 $B/bench_vae /tmp/zi_vae > "$OUT/vae.log" 2>&1; echo "bench_vae rc=$?"
ZIMAGE_CONV_SM90=0 timeout 20 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, ZIMAGE_CONV_SM90=0)/" >> "$OUT/vae.log" 2>&1
if [ -n "${OLD:-}" ]; then # binaries of the commit before this work ($OLD.tar.xz): the "before" numbers, same machine
    mkdir -p "$OLD" && xz -dc "$OLD.tar.xz" | tar xf - -C "$OLD"
    timeout 20 $OLD/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, before: $OLD)/" >> "$OUT/vae.log" 2>&1
    echo "--- before ($OLD)" >> "$OUT/bench.log"; timeout 40 $OLD/bench_ops "${OLDFILTER:-igemm}" >> "$OUT/bench.log" 2>&1
    timeout 20 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, again)/" >> "$OUT/vae.log" 2>&1
fi
for kv in ${VENV:-}; do env $kv timeout 20 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv auto, $kv)/" >> "$OUT/vae.log" 2>&1; done
for t in ${TILES:-}; do ZIMAGE_CONV_TILE=$t timeout 20 $B/bench_vae /tmp/zi_vae | sed "s/(conv auto)/(conv tile $t)/" >> "$OUT/vae.log" 2>&1; done
timeout 45 compute-sanitizer --tool memcheck $B/test_ops_cuda "7x13 Co=320" > "$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log"
for kv in ${TENV:-}; do
    env $kv timeout 40 compute-sanitizer --tool memcheck $B/test_ops_cuda "groupnorm_conv2d B=2 Ci=64 16x16" >> "$OUT/memcheck.log" 2>&1
    echo "memcheck $kv rc=$?"; grep -E "ERROR SUMMARY|passed" "$OUT/memcheck.log" | tail -2
done
cat "$OUT/bench.log"; grep -E "VAE decode|per kind|sum of" "$OUT/vae.log"; head -30 "$OUT/vae.log"
