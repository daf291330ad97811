"""Qwen3Model (the Z-Image text encoder) with transformers' loading convention, backed by the C encoder."""
import numpy as np

from . import _zimage
from ._component import _DEFER, Component, component_dir
from ._dtypes import resolve_dtype


class Qwen3Model(Component):
    """transformers' Qwen3Model for one unpadded sequence at a time.

    `encode(input_ids, layer=-2)` returns, as a float32 (L, hidden_size) NumPy array, what
    `Qwen3Model(input_ids[None], output_hidden_states=True).hidden_states[layer][0]` returns:
    0 = embeddings, i = raw output of decoder layer i-1, -1 = final RMSNorm of the last layer.
    ZImagePipeline uses layer=-2. Only the layers needed are run.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, torch_dtype=None, **kwargs):
        path = component_dir(pretrained_model_name_or_path, subfolder)
        dtype = resolve_dtype(torch_dtype)
        return cls(_zimage.TextEncoder(path, _DEFER), path, dtype)

    @property
    def config(self):
        return self._core.config


    def encode(self, input_ids, layer=-2):
        """hidden_states[layer] for one sequence: input_ids of shape (L,) or (1, L) -> float32 (L, hidden_size)."""
        ids = np.asarray(input_ids)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim != 1:
            raise ValueError(f"input_ids must be one sequence of shape (L,) or (1, L), got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError("input_ids is empty: at least one token is needed")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids must be integers, got dtype {ids.dtype}")
        vocab = self.config["vocab_size"]
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            bad = ids[(ids < 0) | (ids >= vocab)][0]
            raise ValueError(f"input_ids contains {int(bad)}, out of range for vocab_size {vocab}")
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        n = self.config["num_hidden_layers"]
        if not -(n + 1) <= layer <= n:
            raise ValueError(f"layer {layer} out of range: hidden_states has {n + 1} entries ({-(n + 1)}..{n})")
        return self._core.encode(ids.astype(np.int64, copy=False), int(layer))

    def __repr__(self):
        c = self.config
        return (f"Qwen3Model(hidden_size={c['hidden_size']}, num_hidden_layers={c['num_hidden_layers']}, "
                f"num_attention_heads={c['num_attention_heads']}, num_key_value_heads={c['num_key_value_heads']}, "
                f"device={self.device!r})")
