"""Small Python helpers the C ZImagePipeline calls: loading the components of a resolved
folder, the offload device arguments, the initial noise from a generator, the progress bar and
the output objects."""
import json
import os
import sys

import numpy as np


class ZImagePipelineOutput:
    """diffusers' ZImagePipelineOutput: `.images`, also `out[0]` and `out.to_tuple()`."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def to_tuple(self):
        return (self.images,)

    def keys(self):
        return ["images"]

    def __repr__(self):
        n = len(self.images) if hasattr(self.images, "__len__") else "?"
        return f"ZImagePipelineOutput(images=<{n} images>)"


def load_components(pretrained_model_name_or_path, torch_dtype=None, **kwargs):
    """Resolve a folder or hub id and load the five components (keyword arguments of
    ZImagePipeline's constructor). Components passed as keyword arguments are used as given."""
    from . import _hub
    from .scheduler import FlowMatchEulerDiscreteScheduler
    from .text_encoder import Qwen3Model
    from ._zimage import Qwen2Tokenizer
    from .transformer import ZImageTransformer2DModel
    from .vae import AutoencoderKL

    given = {k: kwargs.pop(k) for k in ("scheduler", "vae", "text_encoder", "tokenizer", "transformer") if k in kwargs}
    path = _hub.resolve(pretrained_model_name_or_path, **kwargs)
    with open(os.path.join(path, "model_index.json")) as f:
        try:
            index = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}/model_index.json: invalid JSON: {e}") from None
    cls_name = index.get("_class_name", "ZImagePipeline")
    if cls_name != "ZImagePipeline":
        raise ValueError(f"{path} holds a {cls_name}, not a ZImagePipeline")
    loaders = {
        "transformer": lambda: ZImageTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=torch_dtype),
        "text_encoder": lambda: Qwen3Model.from_pretrained(path, subfolder="text_encoder", torch_dtype=torch_dtype),
        "tokenizer": lambda: Qwen2Tokenizer.from_pretrained(path, subfolder="tokenizer"),
        "vae": lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype),
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
    }
    return {name: given[name] if name in given else load() for name, load in loaders.items()}


def offload_device(name, gpu_id, device, previous):
    """The GPU ordinal enable_model_cpu_offload(gpu_id, device) targets, read as diffusers reads its
    arguments: device None means the accelerator (RuntimeError without one), gpu_id and an index in
    device together are a ValueError, else gpu_id, the device's index, the previous call's GPU, 0."""
    from . import _zimage

    if gpu_id is not None and (isinstance(gpu_id, bool) or not isinstance(gpu_id, int) or gpu_id < 0):
        raise ValueError(f"gpu_id must be a non-negative int, got {gpu_id!r}")
    if device is None:
        if _zimage.cuda_device_count() == 0:
            # diffusers' message; ZImageError is a RuntimeError, as diffusers raises
            raise _zimage.ZImageError(f"`{name}` requires accelerator, but not found")
        device = "cuda"
    if isinstance(device, int) and not isinstance(device, bool):
        index = device  # torch.device(0) is cuda:0
    else:
        text = str(device).strip().lower()  # also a torch.device
        if text == "cuda":
            index = None
        elif text.startswith("cuda:") and text[5:].isdigit():
            index = int(text[5:])
        elif text == "cpu":
            raise ValueError(f"`{name}` runs the models on a CUDA GPU, not device={device!r}; "
                             "pipe.to('cpu') runs everything on the CPU")
        else:
            raise ValueError(f"invalid device {device!r}: use 'cuda' or 'cuda:N'")
    if gpu_id is not None and index is not None:
        raise ValueError(f"You have passed both `gpu_id`={gpu_id} and an index as part of the passed device "
                         f"`device`={device}Cannot pass both. Please make sure to either not define `gpu_id` or not "
                         "pass the index as part of the device: `device`=cuda")
    # diffusers' own `gpu_id or device.index or previous or 0` chain, kept as is (gpu_id=0 defers to the rest)
    return gpu_id or index or previous or 0


def initial_latents(shape, generator):
    """randn_tensor(shape, generator, dtype=float32) as diffusers draws it: one generator for the
    whole batch, or a list with one per sample (each drawing shape (1, ...))."""
    from .generator import Generator, randn_like_torch

    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"You have passed a list of generators of length {len(generator)}, but requested an "
                             f"effective batch size of {shape[0]}. Make sure the batch size matches the length of "
                             "the generators.")
        return np.concatenate([np.asarray(randn_like_torch((1,) + tuple(shape[1:]), g), np.float32) for g in generator])
    if generator is None:
        generator = Generator("cpu").manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    elif isinstance(generator, int) and not isinstance(generator, bool):
        generator = Generator("cpu").manual_seed(generator)
    return np.asarray(randn_like_torch(tuple(shape), generator), np.float32)


class _Bar:
    """A minimal progress bar on stderr, drawn only on a terminal (tqdm when installed)."""

    def __init__(self, total, config):
        self.total, self.n = total, 0
        disable = config.get("disable", None)
        stream = sys.stderr
        self.enabled = not disable and (disable is False or stream.isatty())
        self._tqdm = None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
                cfg = {k: v for k, v in config.items() if k != "disable"}
                self._tqdm = tqdm(total=total, **cfg)
            except ImportError:
                self._draw()

    def _draw(self):
        width = 30
        done = int(width * self.n / max(self.total, 1))
        sys.stderr.write(f"\r{self.n:3d}/{self.total} [{'#' * done}{'.' * (width - done)}]")
        sys.stderr.flush()

    def update(self):
        self.n += 1
        if self._tqdm is not None:
            self._tqdm.update(1)
        elif self.enabled:
            self._draw()

    def close(self):
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            sys.stderr.write("\n")


def make_progress_bar(total, config):
    return _Bar(total, config or {})


def format_images(arr, output_type):
    """uint8 (B, H, W, 3) or float32 'np' (B, H, W, 3) -> what diffusers' output_type asks for."""
    from .image import wrap_images

    if output_type == "np":
        return arr
    if output_type == "pt":
        try:
            import torch
        except ImportError:
            raise ValueError("output_type='pt' needs torch; use 'np' for NumPy arrays") from None
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
    if output_type == "pil":
        try:
            from PIL import Image as PILImage
        except ImportError:
            raise ValueError("output_type='pil' needs Pillow (pip install pillow); the default output "
                             "(output_type=None) gives NumPy images with .save()") from None
        return [PILImage.fromarray(arr[i]) for i in range(arr.shape[0])]
    return wrap_images(arr)


def make_output(images):
    return ZImagePipelineOutput(images)
