"""zimage: Z-Image-Turbo text-to-image in C and CUDA, a drop-in for diffusers' ZImagePipeline.

Every tensor operation runs in the C core (`zimage._zimage`); this package is the thin Python
layer: the public classes with diffusers' names, path and dtype handling.
"""
from ._zimage import Qwen2Tokenizer, ZImageError, ZImagePipeline, cuda_compiled, cuda_device_count
from ._dtypes import bfloat16, float16, float32
from .transformer import ZImageTransformer2DModel
from .vae import AutoencoderKL
from .text_encoder import Qwen3Model
from .scheduler import FlowMatchEulerDiscreteScheduler
from .image import Image
from .generator import Generator
from ._pipeline_support import ZImagePipelineOutput
from .memory import (cuda_empty_cache, cuda_max_memory_allocated, cuda_memory_allocated, cuda_memory_stats,
                     cuda_reset_peak_memory_stats)

__version__ = "0.1.0"

__all__ = [
    "AutoencoderKL",
    "FlowMatchEulerDiscreteScheduler",
    "Generator",
    "Image",
    "Qwen2Tokenizer",
    "Qwen3Model",
    "ZImagePipeline",
    "ZImagePipelineOutput",
    "ZImageError",
    "ZImageTransformer2DModel",
    "bfloat16",
    "cuda_compiled",
    "cuda_device_count",
    "cuda_empty_cache",
    "cuda_max_memory_allocated",
    "cuda_memory_allocated",
    "cuda_memory_stats",
    "cuda_reset_peak_memory_stats",
    "float16",
    "float32",
]
