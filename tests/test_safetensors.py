"""The safetensors reader: good files read back exactly; every kind of corrupt or lying file
is a ValueError naming the file (and the tensor), never a crash; plus a fuzz run."""
import json
import os
import random
import struct

import numpy as np
import pytest

from conftest import safetensors_bytes, to_bf16_bits, write_safetensors
from zimage import _zimage


def test_roundtrip_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    h = rng.standard_normal(7).astype(np.float16)
    b = rng.standard_normal((2, 2, 2)).astype(np.float32)
    p = tmp_path / "m.safetensors"
    p.write_bytes(safetensors_bytes({"a": a, "h": h, "b16": (to_bf16_bits(b), "BF16"), "empty": np.zeros((0, 4), np.float32)},
                                    header_extra={"__metadata__": {"format": "pt"}}))
    out = _zimage.read_safetensors(str(p))
    assert set(out) == {"a", "h", "b16", "empty"}
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["h"], h.astype(np.float32))
    bf = (to_bf16_bits(b).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(out["b16"], bf)
    assert out["empty"].shape == (0, 4)


def _raw(header, data=b""):
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(h)) + h + data


BAD_FILES = {
    "empty file": b"",
    "shorter than the length field": b"\x10\x00\x00",
    "header length past the end": struct.pack("<Q", 1000) + b"{}",
    "huge header length": struct.pack("<Q", 2**63) + b"{}",
    "not JSON": _raw(b"{not json"),
    "JSON not an object": _raw([1, 2]),
    "entry not an object": _raw({"t": 3}),
    "missing dtype": _raw({"t": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "unknown dtype": _raw({"t": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "shape not a list": _raw({"t": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}}, b"\0" * 4),
    "negative dim": _raw({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "fractional dim": _raw({"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4),
    "shape does not match bytes": _raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8),
    "offsets past the data (truncated)": _raw({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
    "offsets reversed": _raw({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}, b"\0" * 8),
    "offsets not a pair": _raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4),
    "overlapping tensors": _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
    "shape overflow": _raw({"t": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}}, b"\0" * 4),
    "too many dims": _raw({"t": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}}, b"\0" * 4),
    "duplicate name": b"",  # filled below (json.dumps cannot write duplicates)
}
_dup = b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
BAD_FILES["duplicate name"] = _raw(_dup, b"\0" * 8)


@pytest.mark.parametrize("what", sorted(BAD_FILES))
def test_bad_files_are_value_errors(tmp_path, what):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(BAD_FILES[what])
    with pytest.raises(ValueError) as e:
        _zimage.read_safetensors(str(p))
    assert "bad.safetensors" in str(e.value)


def test_error_names_the_tensor(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(_raw({"layers.3.w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8))
    with pytest.raises(ValueError, match=r"layers\.3\.w"):
        _zimage.read_safetensors(str(p))


def test_unloadable_dtype_is_value_error(tmp_path):
    p = tmp_path / "i.safetensors"
    write_safetensors(p, {"ids": np.arange(4, dtype=np.int64)})
    with pytest.raises(ValueError, match="I64"):
        _zimage.read_safetensors(str(p))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        _zimage.read_safetensors(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError):
        _zimage.read_safetensors(str(tmp_path))


def test_fuzz_corrupted_files_never_crash(tmp_path):
    """Thousands of random corruptions of a valid file: each either reads or raises ValueError."""
    rng = random.Random(1234)
    good = safetensors_bytes({"a": np.arange(12, dtype=np.float32).reshape(3, 4),
                              "b": (to_bf16_bits(np.ones(5, np.float32)), "BF16"),
                              "c": np.ones((2, 3), np.float16)})
    hlen = struct.unpack("<Q", good[:8])[0]
    p = tmp_path / "fuzz.safetensors"
    outcomes = {"ok": 0, "ValueError": 0}
    for i in range(3000):
        data = bytearray(good)
        kind = i % 5
        if kind == 0:  # flip random bytes anywhere
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:  # truncate
            data = data[: rng.randrange(len(data))]
        elif kind == 2:  # corrupt inside the JSON header only
            for _ in range(rng.randint(1, 4)):
                data[8 + rng.randrange(hlen)] = rng.choice(b'{}[]",:0123456789-eE.tfnul \\')
        elif kind == 3:  # lie about the header length
            data[:8] = struct.pack("<Q", max(0, hlen + rng.randint(-40, 40)))
        else:  # insert or delete bytes in the header
            pos = 8 + rng.randrange(hlen)
            if rng.random() < 0.5:
                del data[pos: pos + rng.randint(1, 6)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        p.write_bytes(bytes(data))
        try:
            out = _zimage.read_safetensors(str(p))
            outcomes["ok"] += 1
            for v in out.values():
                assert v.dtype == np.float32
        except ValueError:
            outcomes["ValueError"] += 1
    assert outcomes["ValueError"] > 1000  # the corruptions really are detected


def test_sharded_index_errors(tmp_path):
    """The DiT loader over a sharded folder: index problems are clear errors."""
    import shutil
    import zimage
    from conftest import FIXTURES
    src = os.path.join(FIXTURES, "dit", "b_hd128_sharded_f32", "transformer")
    d = tmp_path / "t"
    shutil.copytree(src, d)
    idx = d / "diffusion_pytorch_model.safetensors.index.json"
    meta = json.loads(idx.read_text())
    shards = sorted(set(meta["weight_map"].values()))
    assert len(shards) >= 3
    zimage.ZImageTransformer2DModel.from_pretrained(str(d))  # loads as is

    os.rename(d / shards[1], d / "moved")
    with pytest.raises(FileNotFoundError, match=shards[1]):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))
    os.rename(d / "moved", d / shards[1])

    bad = dict(meta)
    key = next(iter(meta["weight_map"]))
    bad["weight_map"] = dict(meta["weight_map"], **{key: "../../etc/passwd"})
    idx.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="plain file name"):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))

    wrong = dict(meta)
    other = [s for s in shards if s != meta["weight_map"][key]][0]
    wrong["weight_map"] = dict(meta["weight_map"], **{key: other})
    idx.write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="not in shard"):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))

    idx.write_text("{\"weight_map\": ")
    with pytest.raises(ValueError, match="invalid JSON"):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))
