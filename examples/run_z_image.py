"""The model card's example, with zimage in place of modelscope/diffusers (torch optional)."""
from zimage import ZImagePipeline

try:
    import torch
    dtype, generator = torch.bfloat16, torch.Generator("cuda" if torch.cuda.is_available() else "cpu").manual_seed(42)
except ImportError:
    import zimage
    dtype, generator = zimage.bfloat16, zimage.Generator("cpu").manual_seed(42)

import zimage

device = "cuda" if zimage.cuda_device_count() > 0 else "cpu"
pipe = ZImagePipeline.from_pretrained("Tongyi-MAI/Z-Image-Turbo", torch_dtype=dtype).to(device)
prompt = "A cute cyberpunk cat, neon lights, 8k high definition"
image = pipe(prompt=prompt, height=1024, width=1024, num_inference_steps=9, guidance_scale=0.0,
             generator=generator).images[0]
image.save("result.png")
print("saved result.png")
