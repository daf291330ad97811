"""AutoencoderKL (decoder only) with diffusers' calling convention, backed by the C VAE decoder."""
import json
import os

import numpy as np

from . import _zimage
from ._component import _DEFER, Component, component_dir
from ._dtypes import resolve_dtype


class FrozenConfig(dict):
    """config.json values (diffusers defaults filled in) as a dict that also reads as attributes,
    like diffusers' FrozenDict: `vae.config.scaling_factor` or `vae.config["scaling_factor"]`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class DecoderOutput:
    """What `AutoencoderKL.decode` returns: `.sample` float32 (B, out_channels, H, W)."""

    def __init__(self, sample):
        self.sample = sample

    def __getitem__(self, key):
        if key == 0 or key == "sample":
            return self.sample
        raise KeyError(key)

    def to_tuple(self):
        return (self.sample,)

    def __repr__(self):
        return f"DecoderOutput(sample=<float32 {self.sample.shape}>)"


class AutoencoderKL(Component):
    """The FLUX / Z-Image VAE decoder. `decode(z).sample` is what diffusers' `AutoencoderKL.decode`
    returns, as float32 NumPy arrays; no latent scaling or shift is applied here (the pipeline
    does `z = latents / scaling_factor + shift_factor`). A batch is decoded one sample at a time.
    `enable_tiling()` decodes large latents in overlapping blended tiles as diffusers' tiled_decode does
    (also inside the pipeline), with activations sized for one tile.
    """

    def __init__(self, core, path, dtype, raw_config):
        super().__init__(core, path, dtype)
        self._raw_config = raw_config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, torch_dtype=None, **kwargs):
        path = component_dir(pretrained_model_name_or_path, subfolder)
        dtype = resolve_dtype(torch_dtype)
        core = _zimage.Vae(path, _DEFER)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
        return cls(core, path, dtype, raw if isinstance(raw, dict) else {})

    @property
    def config(self):
        return FrozenConfig({**self._raw_config, **self._core.config})

    def enable_tiling(self, tile_sample_min_size=None, tile_latent_min_size=None, tile_overlap_factor=None):
        """Tiled decoding as diffusers' `AutoencoderKL.enable_tiling()`: latents larger than
        `tile_latent_min_size` (default sample_size / 2**(len(block_out_channels)-1), 128 for the real VAE)
        in either dimension are decoded in overlapping tiles blended linearly at the seams. The result
        differs from an untiled decode (each tile has its own GroupNorm statistics and attention). The
        optional arguments change the tile sizes (a size given alone sets the other to match) and the
        overlap factor (0.25)."""
        self._core.enable_tiling(tile_sample_min_size, tile_latent_min_size, tile_overlap_factor)

    def disable_tiling(self):
        """Decode in one pass again."""
        self._core.disable_tiling()

    @property
    def use_tiling(self):
        return self._core.tiling["use_tiling"]

    @use_tiling.setter
    def use_tiling(self, value):
        if value:
            self.enable_tiling()
        else:
            self.disable_tiling()

    @property
    def tile_sample_min_size(self):
        return self._core.tiling["tile_sample_min_size"]

    @property
    def tile_latent_min_size(self):
        return self._core.tiling["tile_latent_min_size"]

    @property
    def tile_overlap_factor(self):
        return self._core.tiling["tile_overlap_factor"]

    def enable_slicing(self):
        """No-op: batches are always decoded one sample at a time (same result per sample)."""

    def disable_slicing(self):
        """No-op, see enable_slicing."""

    def decode(self, z, return_dict=True, generator=None):
        if hasattr(z, "detach") and hasattr(z, "cpu"):  # a torch tensor
            z = z.detach().cpu().float().numpy()
        sample = self._core.decode(np.asarray(z, dtype=np.float32))
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def __repr__(self):
        c = self._core.config
        return (f"AutoencoderKL(block_out_channels={c['block_out_channels']}, latent_channels={c['latent_channels']}, "
                f"device={self.device!r})")


def postprocess_uint8(image, bf16=False):
    """VaeImageProcessor.postprocess(image, "pil") as one uint8 array: float (B, C, H, W) in [-1, 1]
    -> uint8 (B, H, W, C) = round_half_even(clamp(x * 0.5 + 0.5, 0, 1) * 255). bf16=True reproduces a
    bf16 tensor (the pipeline's dtype on GPU), where x * 0.5 + 0.5 is rounded to bf16 first."""
    return _zimage.postprocess_uint8(np.asarray(image, dtype=np.float32), bf16)
