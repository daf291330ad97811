"""Flow-match Euler schedule: bit-for-bit the tables diffusers computes (dit_spec.md §5.1,
values produced by diffusers HEAD on the GPU and recorded as f32 bit patterns)."""
import numpy as np
import pytest

from zimage import _zimage

# (sigma hex, t_model) per step, new default path: sigmas = linspace(1, 1/N, N), shift 3
N9 = [("3f800000", 0.0), ("3f75c290", 0.0399999395), ("3f69bd39", 0.0869564265), ("3f5b6db6", 0.142857179),
      ("3f4a1af3", 0.210526317), ("3f34b4b5", 0.29411763), ("3f199999", 0.400000066), ("3eec4ec6", 0.538461566),
      ("3e8ba2e9", 0.727272749)]
N8 = [("3f800000", 0.0), ("3f745d17", 0.0454545915), ("3f666666", 0.100000001), ("3f555555", 0.166666701),
      ("3f400000", 0.25), ("3f249249", 0.357142895), ("3f000000", 0.5), ("3e99999a", 0.700000048)]


def bits(x):
    return format(int(np.float32(x).view(np.uint32)), "08x")


@pytest.mark.parametrize("table", [N9, N8], ids=["N9", "N8"])
def test_default_sigmas_bitwise(table):
    n = len(table)
    sigmas, timesteps, t_model = _zimage.flow_match_schedule(n, 3.0)
    assert sigmas.shape == (n + 1,) and timesteps.shape == (n,) and t_model.shape == (n,)
    assert sigmas[-1] == 0.0
    for i, (hexv, tm) in enumerate(table):
        assert bits(sigmas[i]) == hexv, f"step {i}"
        assert t_model[i] == np.float32(tm), f"step {i}: {t_model[i]!r} vs {tm!r}"
        assert timesteps[i] == np.float32(sigmas[i] * np.float32(1000))


def test_step_3_of_8_uses_the_reciprocal_multiply():
    # torch computes (1000 - t) / 1000 as a multiply by f32(0.001): 0.166666701, not 0.166666687
    _, _, t_model = _zimage.flow_match_schedule(8, 3.0)
    assert t_model[3] == np.float32(0.166666701)


def test_custom_sigmas_and_shift():
    raw = np.array([1.0, 0.75, 0.5, 0.25], np.float32)
    sigmas, timesteps, _ = _zimage.flow_match_schedule(4, 2.0, raw)
    expect = (np.float32(2.0) * raw) / (np.float32(1.0) + np.float32(1.0) * raw)
    np.testing.assert_array_equal(sigmas[:4], expect.astype(np.float32))
    np.testing.assert_array_equal(timesteps, sigmas[:4] * np.float32(1000))


def test_bad_arguments():
    with pytest.raises(ValueError):
        _zimage.flow_match_schedule(0, 3.0)
    with pytest.raises(ValueError):
        _zimage.flow_match_schedule(4, 0.0)
    with pytest.raises(ValueError):
        _zimage.flow_match_schedule(4, 3.0, np.ones(3, np.float32))
