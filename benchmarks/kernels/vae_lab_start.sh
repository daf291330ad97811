# Sourced (from the repo root, with OUT set) by the VAE lab drivers convout_run.sh and gnfast_run.sh: names the
# card, links the fixtures into a .wt/ copy of the repo, and starts in the background the random VAE checkpoint
# (pid CK, log /tmp/zi_ckpt.log) and, with PYTEST=1, the sm_90a build of the extension (pid PB, log
# $OUT/pybuild.log, at most PYBUILD_TIMEOUT seconds). vae_lab_wait waits for both and prints their ends.
nvidia-smi -L
[ -e tests/fixtures ] || ln -s ../../../tests/fixtures tests/fixtures # a copy under .wt/ of the repo: its fixtures
python3 benchmarks/kernels/make_vae_checkpoint.py /tmp/zi_vae > /tmp/zi_ckpt.log 2>&1 &
CK=$!
PB=
if [ -n "${PYTEST:-}" ]; then
    (ZIMAGE_CUDA_ARCH=90a timeout "${PYBUILD_TIMEOUT:-200}" python3 setup.py build_ext --inplace -q > "$OUT/pybuild.log" 2>&1
     echo "rc=$?" >> "$OUT/pybuild.log") &
    PB=$!
fi

vae_lab_wait() {
    wait $CK; cat /tmp/zi_ckpt.log
    if [ -n "$PB" ]; then wait $PB; echo "ext build: $(tail -1 "$OUT/pybuild.log")"; fi
}
