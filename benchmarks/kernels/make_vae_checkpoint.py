"""Write a random-weight FLUX/Z-Image VAE decoder at the real sizes (config.json and
diffusion_pytorch_model.safetensors, F32, decoder tensors only) from the manifest in
tests/fixtures/manifests, with numpy alone, for bench_vae.c:

    python3 benchmarks/kernels/make_vae_checkpoint.py OUT_DIR

Weights ~ normal(0, 1/sqrt(fan_in)), biases ~ normal(0, 0.02), norm gains 1 (activations stay O(1)).
"""
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "tests", "fixtures", "manifests", "vae_manifest.json")


def main(out):
    man = json.load(open(MANIFEST))
    os.makedirs(out, exist_ok=True)
    json.dump({k: v for k, v in man["config"].items()}, open(os.path.join(out, "config.json"), "w"), indent=1)
    rng = np.random.default_rng(0)
    header, blobs, off = {}, [], 0
    for t in man["tensors"]:
        shape = t["shape"]
        name = t["name"]
        if len(shape) == 1:
            a = np.ones(shape, np.float32) if "norm" in name and name.endswith("weight") else \
                rng.normal(0, 0.02, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            a = rng.normal(0, fan_in ** -0.5, shape).astype(np.float32)
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "diffusion_pytorch_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    print(f"{out}: {len(header)} tensors, {off / 2**20:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1])
