"""ZImageTransformer2DModel with diffusers' calling convention, backed by the C DiT."""
import numpy as np

from . import _zimage
from ._component import _DEFER, Component, component_dir
from ._dtypes import resolve_dtype


class ZImageTransformer2DModel(Component):
    """The Z-Image DiT. `model(x, t, cap_feats)` returns what diffusers' model returns (before
    the pipeline negates it), as float32 NumPy arrays.

    x: a list of (C, 1, H, W) or (C, H, W) arrays, or one (B, C, H, W) array.
    t: B timesteps (the pipeline's (1000 - 1000*sigma)/1000), a scalar, list or array.
    cap_feats: a list of B (L_i, cap_feat_dim) arrays (or one (B, L, cap_feat_dim) array).
    Returns a (B, C, H, W) array when all samples share a size and x was not a list of 4-D
    latents, else a list of per-sample arrays shaped like the inputs.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, torch_dtype=None, **kwargs):
        path = component_dir(pretrained_model_name_or_path, subfolder)
        dtype = resolve_dtype(torch_dtype)
        return cls(_zimage.Transformer(path, _DEFER), path, dtype)

    @property
    def config(self):
        return self._core.config


    def __call__(self, x, t, cap_feats, return_dict=False, patch_size=2, f_patch_size=1, **kwargs):
        if patch_size != 2 or f_patch_size != 1:
            raise ValueError("only patch_size=2, f_patch_size=1 (the trained patch sizes) are supported")
        batched_array = not isinstance(x, (list, tuple))
        latents = list(x) if not batched_array else [x[i] for i in range(np.asarray(x).shape[0])]
        if isinstance(cap_feats, np.ndarray) and cap_feats.ndim == 3:
            cap_feats = [cap_feats[i] for i in range(cap_feats.shape[0])]
        cap_feats = list(cap_feats)
        tt = np.atleast_1d(np.asarray(t, dtype=np.float32)).reshape(-1)
        B = len(latents)
        if B == 0:
            raise ValueError("x is empty")
        if len(cap_feats) != B:
            raise ValueError(f"{B} latents but {len(cap_feats)} caption feature arrays")
        if tt.size == 1 and B > 1:
            tt = np.repeat(tt, B)
        if tt.size != B:
            raise ValueError(f"{B} latents but {tt.size} timesteps")
        outs = []
        for lat, tv, cap in zip(latents, tt, cap_feats):
            lat = np.asarray(lat, dtype=np.float32)
            if lat.ndim == 3:
                out = self._core.forward(lat[:, None], float(tv), np.asarray(cap, dtype=np.float32))[:, 0]
            elif lat.ndim == 4:
                out = self._core.forward(lat, float(tv), np.asarray(cap, dtype=np.float32))
            else:
                raise ValueError(f"each latent must be (C, 1, H, W) or (C, H, W), got shape {lat.shape}")
            outs.append(out)
        if batched_array:
            return np.stack(outs)
        return outs

    forward = __call__

    def __repr__(self):
        c = self.config
        return (f"ZImageTransformer2DModel(dim={c['dim']}, n_layers={c['n_layers']}, n_heads={c['n_heads']}, "
                f"device={self.device!r})")


