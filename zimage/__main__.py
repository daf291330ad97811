"""`zimage` / `python -m zimage`: generate images from the command line, the workflow of the
model card's run_z_image.py, with one loaded pipeline for many prompts (--prompts-file).

    zimage --prompt "A cute cyberpunk cat" --output cat.png
    zimage --prompts-file prompts.txt --output out.png      # out_1.png, out_2.png, ...
    zimage --info                                            # build and device information
"""
import argparse
import os
import sys
import time

DEFAULT_PROMPT = "A cute cyberpunk cat, neon lights, 8k high definition"


def build_parser():
    p = argparse.ArgumentParser(prog="zimage", description="Z-Image-Turbo text-to-image in C and CUDA")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text prompt (default: %(default)r)")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line; all generated with one loaded pipeline")
    p.add_argument("--output", default="result.png", help="output image path (default: %(default)s)")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--steps", type=int, default=9, help="num_inference_steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--guidance", type=float, default=0.0, help="guidance_scale (default: %(default)s)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--model", default="Tongyi-MAI/Z-Image-Turbo", help="hub id or local folder (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--info", action="store_true", help="print build and device information and exit")
    return p


def numbered(path, i, n):
    if n == 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}_{i + 1}{ext or '.png'}"


def main(argv=None):
    args = build_parser().parse_args(argv)
    import zimage

    if args.info:
        print(f"zimage {zimage.__version__}")
        print(f"CUDA backend compiled in: {'yes' if zimage.cuda_compiled() else 'no'}")
        print(f"CUDA devices visible: {zimage.cuda_device_count()}")
        return 0
    for name in ("height", "width", "steps"):
        if getattr(args, name) <= 0:
            print(f"zimage: error: --{name} must be positive", file=sys.stderr)
            return 2
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        except OSError as e:
            print(f"zimage: error: cannot read --prompts-file: {e}", file=sys.stderr)
            return 2
        if not prompts:
            print(f"zimage: error: {args.prompts_file} holds no prompt", file=sys.stderr)
            return 2
    else:
        prompts = [args.prompt]
    device = args.device
    if device is None:
        device = "cuda" if zimage.cuda_device_count() > 0 else "cpu"
        if device == "cpu":
            print("zimage: warning: no CUDA GPU found, running on the CPU (this is slow)", file=sys.stderr)

    print(f"Loading {args.model} ...", flush=True)
    t0 = time.perf_counter()
    try:
        pipe = zimage.ZImagePipeline.from_pretrained(args.model, torch_dtype=zimage.bfloat16).to(device)
    except (FileNotFoundError, ValueError, zimage.ZImageError, MemoryError) as e:
        print(f"zimage: error: {e}", file=sys.stderr)
        return 1
    print(f"Loaded in {time.perf_counter() - t0:.1f} s on {device}", flush=True)
    for i, prompt in enumerate(prompts):
        out = numbered(args.output, i, len(prompts))
        print(f"Prompt: {prompt}", flush=True)
        print(f"Output: {out}", flush=True)
        t0 = time.perf_counter()
        try:
            image = pipe(prompt=prompt, height=args.height, width=args.width, num_inference_steps=args.steps,
                         guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
                         generator=zimage.Generator(device).manual_seed(args.seed + i)).images[0]
            image.save(out)
        except (ValueError, zimage.ZImageError, MemoryError, OSError) as e:
            print(f"zimage: error: {e}", file=sys.stderr)
            return 1
        print(f"Generated in {time.perf_counter() - t0:.1f} s; image saved to {os.path.abspath(out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
