"""NumPy images with .save() (PNG written in C, read back by an independent decoder written
here with zlib), and hub-id resolution through the ModelScope / Hugging Face caches."""
import io
import os
import struct
import zlib

import numpy as np
import pytest

import zimage
from zimage import _hub


def decode_png(data):
    """A small independent PNG reader (8-bit, non-interlaced, all five filter types)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        crc = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        assert zlib.crc32(typ + body) & 0xFFFFFFFF == crc, typ
        if typ == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif typ == b"IDAT":
            idat += body
        pos += 12 + n
    W, H, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and interlace == 0
    ch = {0: 1, 2: 3, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = W * ch
    out = np.zeros((H, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(H):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for i in range(stride):
            a = cur[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(f)
            if f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out.reshape(H, W, ch).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (16, 33, 4), (9, 4, 1)])
def test_png_roundtrip(tmp_path, shape):
    rng = np.random.default_rng(sum(shape))
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    img = zimage.Image(arr)
    p = tmp_path / "x.png"
    img.save(str(p))
    np.testing.assert_array_equal(decode_png(p.read_bytes()), arr)
    np.testing.assert_array_equal(decode_png(img._repr_png_()), arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(decode_png(buf.getvalue()), arr)


def test_image_is_an_ndarray():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    img = zimage.Image(arr)
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (2, 3, 3)
    assert img.size == (3, 2) and img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), arr)
    with pytest.raises(ValueError):
        zimage.Image(np.zeros((4, 4), np.uint8))


def test_save_errors(tmp_path):
    img = zimage.Image(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(FileNotFoundError):
        img.save(str(tmp_path / "missing_dir" / "x.png"))
    try:
        import PIL  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="Pillow"):
            img.save(str(tmp_path / "x.jpg"))


def make_pipeline_dir(root):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "model_index.json"), "w") as f:
        f.write('{"_class_name": "ZImagePipeline"}')
    return root


def test_resolve_local_folder(tmp_path):
    d = make_pipeline_dir(str(tmp_path / "m"))
    assert _hub.resolve(d) == d
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        _hub.resolve(str(tmp_path))


def test_resolve_modelscope_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    d = make_pipeline_dir(str(tmp_path / "ms" / "models" / "Org" / "Name"))
    assert _hub.resolve("Org/Name", local_files_only=True) == d
    d2 = make_pipeline_dir(str(tmp_path / "ms2" / "Org" / "Name"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms2"))
    assert _hub.resolve("Org/Name", local_files_only=True) == d2


def test_resolve_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MODELSCOPE_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    base = tmp_path / "hf" / "hub" / "models--Org--Name"
    d = make_pipeline_dir(str(base / "snapshots" / "abc123"))
    os.makedirs(base / "refs")
    (base / "refs" / "main").write_text("abc123")
    assert _hub.resolve("Org/Name", local_files_only=True) == d


def test_resolve_not_found_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        _hub.resolve("Org/Missing", local_files_only=True)
    msg = str(e.value)
    assert "MODELSCOPE_CACHE" in msg and "Hugging Face" in msg and "modelscope download" in msg


def test_scheduler_config(tmp_path):
    d = tmp_path / "scheduler"
    d.mkdir()
    (d / "scheduler_config.json").write_text('{"_class_name": "FlowMatchEulerDiscreteScheduler", '
                                             '"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": false}')
    s = zimage.FlowMatchEulerDiscreteScheduler.from_pretrained(str(tmp_path), subfolder="scheduler")
    assert s.shift == 3.0
    t = s.set_timesteps(8)
    assert t.shape == (8,) and s.sigmas.shape == (9,) and t[0] == 1000.0
    (d / "scheduler_config.json").write_text('{"shift": 3.0, "use_dynamic_shifting": true}')
    with pytest.raises(ValueError, match="dynamic"):
        zimage.FlowMatchEulerDiscreteScheduler.from_pretrained(str(tmp_path), subfolder="scheduler")


def test_download_failure_is_file_not_found(tmp_path, monkeypatch):
    """With a hub client installed but no network (or no such repo), a clear FileNotFoundError."""
    import sys
    import types
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MODELSCOPE_CACHE", raising=False)
    fake = types.ModuleType("huggingface_hub")

    def snapshot_download(repo_id, revision=None):
        raise ConnectionError("no network")

    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails
    with pytest.raises(FileNotFoundError, match="huggingface_hub.snapshot_download: failed.*no network"):
        _hub.resolve("Org/Offline")
