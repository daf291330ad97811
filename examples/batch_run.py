"""Batch generation with one loaded pipeline: one image per prompt, seeds 42, 43, ...

Usage: python examples/batch_run.py [--model ID_OR_DIR] [--height H] [--width W] [--steps N] [--out DIR]
"""
import argparse
import os

import zimage
from zimage import ZImagePipeline

PROMPTS = [
    "A cute cyberpunk cat, neon lights, 8k high definition",
    "一只可爱的熊猫在竹林里吃竹子，水墨画风格",
    "A lighthouse on a cliff at sunset, oil painting",
]

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="Tongyi-MAI/Z-Image-Turbo")
parser.add_argument("--height", type=int, default=1024)
parser.add_argument("--width", type=int, default=1024)
parser.add_argument("--steps", type=int, default=9)
parser.add_argument("--out", default=".")
args = parser.parse_args()

device = "cuda" if zimage.cuda_device_count() > 0 else "cpu"
pipe = ZImagePipeline.from_pretrained(args.model, torch_dtype=zimage.bfloat16).to(device)
pipe.set_progress_bar_config(disable=True)
os.makedirs(args.out, exist_ok=True)
for i, p in enumerate(PROMPTS):
    image = pipe(prompt=p, height=args.height, width=args.width, num_inference_steps=args.steps, guidance_scale=0.0,
                 generator=zimage.Generator(device).manual_seed(42 + i)).images[0]
    path = os.path.join(args.out, f"batch_{i + 1}.png")
    image.save(path)
    print(f"[{i + 1}/{len(PROMPTS)}] {p} -> {path}")
