"""Shared helpers for the reference-fixture generators in tests/reference/.

Every generator is run as `/work/refenv/bin/python tests/reference/<script>.py` (the script's
own directory is on sys.path, so `import _common` works). Nothing here touches anything outside
tests/fixtures/.
"""
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MANIFESTS = FIXTURES / "manifests"


def versions() -> dict:
    import torch
    import safetensors
    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
    }
    try:
        import diffusers
        out["diffusers"] = diffusers.__version__
    except ImportError:
        out["diffusers"] = None
    try:
        import transformers
        out["transformers"] = transformers.__version__
    except ImportError:
        out["transformers"] = None
    try:
        import accelerate
        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    out["torch_num_threads"] = __import__("torch").get_num_threads()
    return out


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    print(f"  wrote {rel(path)} ({path.stat().st_size} B)")


def write_versions(directory: Path) -> None:
    write_json(Path(directory) / "versions.json", versions())


def fresh_dir(path: Path) -> Path:
    """Remove and recreate a fixture directory (only ever called on paths under FIXTURES)."""
    path = Path(path).resolve()
    assert FIXTURES.resolve() in path.parents, path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def savez(path: Path, arrays: dict) -> None:
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype.kind == "f":
            assert np.isfinite(a).all(), f"{path}:{k} has non-finite values"
    np.savez_compressed(path, **arrays)
    print(f"  wrote {rel(path)} ({Path(path).stat().st_size} B, {len(arrays)} arrays)")


def rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def list_files(path: Path) -> None:
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            print(f"    {rel(p)}  {p.stat().st_size} B")


def setup_torch():
    import torch
    torch.set_num_threads(1)           # fixed reduction order -> reproducible fp32 references
    torch.use_deterministic_algorithms(True)
    torch.set_grad_enabled(False)
    return torch
