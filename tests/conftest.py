"""Shared test helpers: fixture paths, a GPU skip marker, and a minimal safetensors writer
(pure Python, so tests need neither torch nor the safetensors package)."""
import json
import os
import struct

import numpy as np
import pytest

import zimage

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

requires_gpu = pytest.mark.skipif(zimage.cuda_device_count() == 0, reason="needs a CUDA GPU")

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}


def safetensors_bytes(tensors, header_extra=None):
    """Serialise {name: ndarray} like safetensors does (F32/F16/I64, or 'BF16' via (uint16 array, 'BF16'))."""
    header, blobs, off = {}, [], 0
    for name, value in tensors.items():
        if isinstance(value, tuple):  # (raw uint16 array, "BF16")
            arr, dt = value
        else:
            arr, dt = value, _DTYPES[np.asarray(value).dtype]
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(np.asarray(arr).shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if header_extra:
        header.update(header_extra)
    hjson = json.dumps(header).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs)


def write_safetensors(path, tensors):
    with open(path, "wb") as f:
        f.write(safetensors_bytes(tensors))


def to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """tests/fixtures/pipeline/tiny (saved by diffusers) made whole: its tokenizer.json is the
    vendored tests/fixtures/qwen3-tokenizer/tokenizer.json.xz (same file), unpacked here.
    Laid out as a ModelScope cache: returns (cache_dir, hub_id, folder)."""
    import lzma
    import shutil
    cache = tmp_path_factory.mktemp("mscache")
    folder = cache / "models" / "Tiny-Org" / "Z-Image-Tiny"
    shutil.copytree(os.path.join(FIXTURES, "pipeline", "tiny"), folder)
    with lzma.open(os.path.join(FIXTURES, "qwen3-tokenizer", "tokenizer.json.xz")) as src:
        (folder / "tokenizer" / "tokenizer.json").write_bytes(src.read())
    return str(cache), "Tiny-Org/Z-Image-Tiny", str(folder)


def pipeline_cases():
    """The cases of tests/fixtures/pipeline/cases.json, by name (made by make_pipeline_fixtures.py)."""
    with open(os.path.join(FIXTURES, "pipeline", "cases.json")) as f:
        return {c["name"]: c for c in json.load(f)["cases"]}
