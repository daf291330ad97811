"""FlowMatchEulerDiscreteScheduler's configuration, as ZImagePipeline uses it. The sigma
tables themselves are computed in C (_zimage.flow_match_schedule)."""
import json
import os

import numpy as np

from . import _zimage


class FlowMatchEulerDiscreteScheduler:
    order = 1

    def __init__(self, num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, **kwargs):
        if use_dynamic_shifting:
            raise ValueError("use_dynamic_shifting=True is not supported (Z-Image uses a static shift)")
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                    "stochastic_sampling"):
            if kwargs.get(key):
                raise ValueError(f"{key}=True is not supported (Z-Image does not use it)")
        if kwargs.get("shift_terminal"):
            raise ValueError("shift_terminal is not supported (Z-Image does not use it)")
        self.config = dict(kwargs, num_train_timesteps=int(num_train_timesteps), shift=float(shift),
                           use_dynamic_shifting=False)
        self.timesteps = None
        self.sigmas = None

    @classmethod
    def from_pretrained(cls, path, subfolder=None, **kwargs):
        folder = os.path.join(os.fspath(path), subfolder) if subfolder else os.fspath(path)
        cfg_path = os.path.join(folder, "scheduler_config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"no scheduler_config.json in {folder}")
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: invalid JSON: {e}") from None
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        return cls(**cfg)

    @property
    def shift(self):
        return self.config["shift"]

    def set_timesteps(self, num_inference_steps=None, sigmas=None, **kwargs):
        if sigmas is not None:
            sigmas = np.asarray(sigmas, dtype=np.float32).reshape(-1)
            num_inference_steps = sigmas.size
        if num_inference_steps is None:
            raise ValueError("give num_inference_steps or sigmas")
        s, t, _ = _zimage.flow_match_schedule(int(num_inference_steps), self.shift, sigmas,
                                              self.config["num_train_timesteps"])
        self.sigmas, self.timesteps = s, t
        return t

    def __repr__(self):
        return f"FlowMatchEulerDiscreteScheduler({self.config})"
