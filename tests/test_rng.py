"""torch.randn reproduced without torch (csrc/rng.c, zimage/generator.py), against draws made by
torch itself (tests/fixtures/rng/, written by tests/reference/make_rng_fixtures.py):
cpu_randn.npz by torch 2.15 on this CI's kind of CPU, cuda_randn.npz by torch 2.11 on an H100.
Every comparison is bit for bit."""
import hashlib
import os
import platform

import numpy as np
import pytest

from zimage import _zimage
from zimage.generator import DEFAULT_SEED, H100_GEOMETRY, Generator, randn_like_torch

RNG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "rng")
CPU_NPZ = os.path.join(RNG, "cpu_randn.npz")
CUDA_NPZ = os.path.join(RNG, "cuda_randn.npz")

# docs/spec §6.4: torch.randn((1,16,128,128), generator=cuda gen seeded 42) on an H100 starts with
SPEC_SEED42 = ["0.19401880", "2.1613736", "-0.17205022", "0.84906012"]


def bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32)


def check_draw(z, key, got):
    """Compare a draw with a fixture entry: whole array (small) or samples + sha256 (large)."""
    got = np.ascontiguousarray(got, dtype=np.float32).reshape(-1)
    assert got.size == int(z[key + "_n"]), key
    if key in z.files:
        bad = np.nonzero(bits(got) != bits(z[key]))[0]
        assert bad.size == 0, f"{key}: {bad.size} of {got.size} differ, first at {bad[:5]}"
    else:
        for part, sl in (("head", slice(0, 2048)), ("tail", slice(got.size - 256, got.size)), ("every61", slice(None, None, 61))):
            ref, mine = z[f"{key}_{part}"], got[sl]
            bad = np.nonzero(bits(mine) != bits(ref))[0]
            assert bad.size == 0, f"{key} ({part}): {bad.size} of {ref.size} sampled values differ, first at {bad[:5]}"
    digest = hashlib.sha256(got.astype("<f4").tobytes()).digest()
    assert digest == z[key + "_sha256"].tobytes(), f"{key}: sha256 differs"


def fixture_keys(z, prefix=""):
    return sorted(k[: -len("_sha256")] for k in z.files if k.endswith("_sha256") and k.startswith(prefix))


# ---------------------------------------------------------------------------------------------
# CPU generator (mt19937)

@pytest.fixture(scope="module")
def cpu_fix():
    with np.load(CPU_NPZ) as z:
        yield {k: z[k] for k in z.files} | {"files": list(z.files)}


class _Z(dict):
    """dict with .files, so check_draw works on an unpacked npz"""

    @property
    def files(self):
        return self["files"]


def test_cpu_fixture_kernels_bit_exact(cpu_fix):
    z = _Z(cpu_fix)
    keys = [k for k in fixture_keys(z) if not k.endswith("_seq")]
    kinds = sorted({k.split("_")[0] for k in keys})
    assert "avx2" in kinds and "default" in kinds
    for key in keys:
        kind, s, n = key.split("_")
        got = _zimage.randn_cpu(int(n[1:]), int(s[1:]), kernel=kind)
        check_draw(z, key, got)


def test_cpu_sequence_and_state(cpu_fix):
    """Several draws from one generator: the cached second sample of the small-size path, the
    blocks of 16 and the generator state (torch's get_state() bytes) after them."""
    z = _Z(cpu_fix)
    sizes = [int(s) for s in z["seq_sizes"]]
    for kind in sorted({k.split("_")[0] for k in fixture_keys(z) if k.endswith("_seq")}):
        state = bytearray(_zimage.cpu_generator_state(7))
        got = np.concatenate([_zimage.randn_cpu(n, state=state, kernel=kind) for n in sizes])
        check_draw(z, f"{kind}_seq", got)
        assert bytes(state) == z[f"{kind}_seq_state"].tobytes()


def _native_cpu_kind():
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        return "default"
    if platform.machine() not in ("x86_64", "AMD64"):
        return "default"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        pytest.skip("cannot read CPU flags")
    return "avx2" if "avx2" in flags and "fma" in flags else "default"


def test_cpu_native_kernel_is_torchs_choice(cpu_fix):
    z = _Z(cpu_fix)
    kind = _native_cpu_kind()
    for n in (16, 17, 1000):
        check_draw(z, f"{kind}_s42_n{n}", _zimage.randn_cpu(n, 42))
    g = Generator("cpu").manual_seed(1234)
    check_draw(z, f"{kind}_s1234_n{16 * 128 * 128}", g.randn((1, 16, 128, 128)))


def test_cpu_small_draws_kernel_independent():
    """n < 16 uses torch's double-precision scalar path on every machine."""
    for n in (1, 7, 15):
        a = _zimage.randn_cpu(n, 3, kernel="avx2")
        assert np.array_equal(bits(a), bits(_zimage.randn_cpu(n, 3, kernel="default")))


def test_cpu_seed_uses_low_32_bits_like_torch():
    a = _zimage.randn_cpu(64, 5)
    assert np.array_equal(bits(a), bits(_zimage.randn_cpu(64, 5 + (1 << 40))))
    assert np.array_equal(bits(_zimage.randn_cpu(64, -1)), bits(_zimage.randn_cpu(64, (1 << 64) - 1)))


# ---------------------------------------------------------------------------------------------
# CUDA generator (Philox / curand)

def test_cuda_spec_values_seed42():
    x = _zimage.randn_cuda((1, 16, 128, 128), 42)
    assert x.shape == (1, 16, 128, 128) and x.dtype == np.float32
    want = np.array([np.float32(s) for s in SPEC_SEED42])
    assert np.array_equal(bits(x.reshape(-1)[:4]), bits(want)), x.reshape(-1)[:4]
    # the same through a Generator, and through other shapes with the same element count
    g = Generator("cuda").manual_seed(42)
    assert np.array_equal(bits(g.randn((1, 16, 128, 128))), bits(x))
    assert np.array_equal(bits(_zimage.randn_cuda(16 * 128 * 128, 42)), bits(x))


@pytest.mark.skipif(not os.path.exists(CUDA_NPZ), reason="no cuda_randn.npz (run make_rng_fixtures.py on a GPU machine)")
def test_cuda_fixture_bit_exact():
    with np.load(CUDA_NPZ) as z:
        sms, tps = int(z["sms"]), int(z["threads_per_sm"])
        for key in fixture_keys(z, "s"):
            if key.startswith("seq"):
                continue
            seed, n = key.split("_")
            check_draw(z, key, _zimage.randn_cuda(int(n[1:]), int(seed[1:]), 0, sms, tps))
        # two consecutive draws from one generator: offset 0, then torch's increment
        g = Generator("cuda").manual_seed(42)
        g.gpu_geometry = (sms, tps)
        offsets = [g.get_offset()]
        check_draw(z, "seq42_draw0", g.randn((1, 16, 128, 128)))
        offsets.append(g.get_offset())
        check_draw(z, "seq42_draw1", g.randn((1, 16, 128, 128)))
        offsets.append(g.get_offset())
        assert offsets == [int(v) for v in z["seq42_offsets"]]
        assert g.get_state() == z["seq42_state"].tobytes()


def test_philox_offset_rule():
    """torch: offset += ((n - 1) // (4 T) + 1) * 4 with T = 256 * min(ceil(n/256), SMs * tps / 256)."""
    sms, tps = H100_GEOMETRY
    T = sms * tps  # 270336 once n is large
    assert _zimage.philox_offset_increment(1) == 4
    assert _zimage.philox_offset_increment(16 * 256 * 256) == 4          # n <= 4T: one curand_normal4 round
    assert _zimage.philox_offset_increment(4 * T) == 4
    assert _zimage.philox_offset_increment(4 * T + 1) == 8
    assert _zimage.philox_offset_increment(12 * T + 1) == 16
    assert _zimage.philox_offset_increment(0) == 0
    small_T = 4 * (2048 // 256) * 256   # a 4-SM GPU: T = 8192
    assert _zimage.philox_offset_increment(1 << 20, sms=4, threads_per_sm=2048) == 4 * ((1 << 20) // (4 * small_T))
    assert _zimage.philox_offset_increment((1 << 20) + 1, sms=4, threads_per_sm=2048) == 4 * ((1 << 20) // (4 * small_T) + 1)


def test_cuda_layout_depends_on_sm_count():
    """n <= T: element i is component x of thread i's first curand_normal4 on every GPU; past
    the smaller GPU's thread count the layouts differ (pytorch issues 143086, 194676)."""
    a = _zimage.randn_cuda(300000, 0, sms=132, threads_per_sm=2048)   # T = 270336
    b = _zimage.randn_cuda(300000, 0, sms=114, threads_per_sm=1536)   # T = 175104 (RTX 4090)
    first = 114 * 1536
    assert np.array_equal(bits(a[:first]), bits(b[:first]))
    assert not np.array_equal(bits(a[first:]), bits(b[first:]))


def test_cuda_offset_matches_consecutive_draws():
    g = Generator("cuda").manual_seed(9)
    x0, x1 = g.randn(1000), g.randn(1000)
    assert np.array_equal(bits(x0), bits(_zimage.randn_cuda(1000, 9, 0)))
    assert np.array_equal(bits(x1), bits(_zimage.randn_cuda(1000, 9, 4)))
    assert not np.array_equal(bits(x0), bits(x1))


def test_statistics_are_normal():
    x = _zimage.randn_cuda(1 << 20, 123).astype(np.float64)
    assert abs(x.mean()) < 5e-3 and abs(x.std() - 1) < 5e-3 and np.isfinite(x).all()
    y = _zimage.randn_cpu(1 << 18, 123).astype(np.float64)
    assert abs(y.mean()) < 1e-2 and abs(y.std() - 1) < 1e-2


# ---------------------------------------------------------------------------------------------
# Generator API

def test_generator_api():
    g = Generator()
    assert str(g.device) == "cpu" and g.device.type == "cpu" and g.device.index is None
    assert g.initial_seed() == DEFAULT_SEED
    assert g.manual_seed(5) is g and g.initial_seed() == 5
    assert Generator("cpu").manual_seed(-1).initial_seed() == (1 << 64) - 1
    c = Generator("cuda:1")
    assert c.device == "cuda:1" and c.device.type == "cuda" and c.device.index == 1
    assert repr(Generator("cuda").device) == "device(type='cuda', index=0)"
    assert c.initial_seed() == DEFAULT_SEED and c.get_offset() == 0
    with pytest.raises(RuntimeError):
        g.get_offset()


def test_generator_draws_advance_and_reseed():
    for dev in ("cpu", "cuda"):
        g = Generator(dev).manual_seed(11)
        a, b = g.randn((2, 8)), g.randn((2, 8))
        assert a.shape == (2, 8) and a.dtype == np.float32 and not np.array_equal(a, b)
        g.manual_seed(11)
        assert np.array_equal(bits(g.randn((2, 8))), bits(a))
        # get_state / set_state round trip
        st = g.get_state()
        c = g.randn(40)
        g.set_state(st)
        assert np.array_equal(bits(g.randn(40)), bits(c))
        assert g.randn(0).shape == (0,) and g.randn(()).shape == ()
        assert g.randn(np.int64(3)).shape == (3,) and g.randn([np.int32(2), 3]).shape == (2, 3)


def test_cpu_small_draw_keeps_the_cached_sample():
    """torch: randn(1) twice from one CPU generator = randn(2) from a fresh one (cached sin sample)."""
    g = Generator().manual_seed(3)
    pair = np.concatenate([g.randn(1), g.randn(1)])
    assert np.array_equal(bits(pair), bits(_zimage.randn_cpu(2, 3)))


def test_randn_like_torch_on_our_generator():
    g = Generator("cuda").manual_seed(42)
    x = randn_like_torch((1, 16, 128, 128), g, advance=False)
    assert g.get_offset() == 0
    y = randn_like_torch((1, 16, 128, 128), g)
    assert np.array_equal(bits(x), bits(y)) and g.get_offset() == 4
    with pytest.raises(TypeError):
        randn_like_torch((2,), object())


def test_randn_like_torch_on_a_torch_generator():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(77)
    x = randn_like_torch((3, 40), g)
    ref_gen = torch.Generator().manual_seed(77)
    assert np.array_equal(bits(x), bits(torch.randn((3, 40), generator=ref_gen).numpy()))
    # the torch generator was advanced exactly as torch.randn would have done it
    assert np.array_equal(bits(torch.randn(5, generator=g).numpy()), bits(torch.randn(5, generator=ref_gen).numpy()))


def test_randn_like_torch_on_a_torch_cuda_generator():
    """The issue's case: pipe(..., generator=torch.Generator("cuda").manual_seed(42))."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    for n_shape in ((1, 16, 128, 128), (1, 16, 256, 256), (3000,)):
        g = torch.Generator("cuda").manual_seed(42)
        g.set_offset(8)
        x = randn_like_torch(n_shape, g)
        ref_gen = torch.Generator("cuda").manual_seed(42)
        ref_gen.set_offset(8)
        ref = torch.randn(n_shape, generator=ref_gen, device="cuda").cpu().numpy()
        assert np.array_equal(bits(x), bits(ref))
        assert g.get_offset() == ref_gen.get_offset()


# ---------------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("shape", [-1, (2, -3), (1.5,), "12", (2, "a"), None, (True,), (1 << 62, 1 << 62)])
def test_bad_shapes_raise_valueerror(shape):
    with pytest.raises(ValueError):
        _zimage.randn_cuda(shape, 0)
    with pytest.raises(ValueError):
        _zimage.randn_cpu(shape, 0)
    with pytest.raises(ValueError):
        Generator("cuda").randn(shape)


@pytest.mark.parametrize("seed", [1.5, "3", None, True, 1 << 64, -(1 << 63) - 1])
def test_bad_seeds_raise_valueerror(seed):
    with pytest.raises(ValueError):
        Generator().manual_seed(seed)
    with pytest.raises(ValueError):
        _zimage.randn_cuda(4, seed)
    if seed is not None:  # randn_cpu(shape, seed=None) needs a state instead: also a ValueError
        with pytest.raises(ValueError):
            _zimage.cpu_generator_state(seed)
    with pytest.raises(ValueError):
        _zimage.randn_cpu(4, seed)


def test_bad_arguments_raise_valueerror():
    with pytest.raises(ValueError):
        _zimage.randn_cuda(4, 0, sms=0)
    with pytest.raises(ValueError):
        _zimage.randn_cuda(4, 0, threads_per_sm=128)
    with pytest.raises(ValueError):
        _zimage.randn_cuda(4, 0, offset=-4)
    with pytest.raises(ValueError):
        _zimage.randn_cpu(4, 0, kernel="sse")
    with pytest.raises(ValueError):
        _zimage.randn_cpu(4, 0, state=bytearray(5056))   # both seed and state
    with pytest.raises(ValueError):
        _zimage.randn_cpu(4, state=bytearray(100))       # wrong size
    with pytest.raises(ValueError):
        _zimage.randn_cpu(4, state=bytearray(5056))      # not a seeded mt19937 state
    with pytest.raises(ValueError):
        _zimage.randn_cpu(4, state=bytes(_zimage.cpu_generator_state(1)))  # read-only
    with pytest.raises(ValueError):
        Generator("gpu")
    with pytest.raises(ValueError):
        Generator("cuda").set_offset(3)
