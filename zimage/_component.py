"""What every model component shares: loading a diffusers/transformers subfolder into a C
core, the device it runs on, and torch-style `.to()` / `.cpu()` / `.cuda()` / `.eval()`."""
import os

from ._dtypes import device_name, resolve_device, resolve_dtype

# device argument of the C loaders: check the checkpoint now, read the weights on the first
# .to(device) or forward (so from_pretrained(...).to("cuda") reads them once, onto the GPU)
_DEFER = -2


def component_dir(path, subfolder):
    """The folder of one component (with its config.json), or FileNotFoundError."""
    path = os.fspath(path)
    if subfolder:
        path = os.path.join(path, subfolder)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"no config.json in {path}")
    return path


def is_dtype_like(value):
    """torch.bfloat16, 'float16', zimage.float32 ... (as opposed to a device)."""
    text = str(value)
    if text.startswith("torch.") and not text.startswith("torch.device") and "float" in text:
        return True
    return text in ("bfloat16", "float16", "float32") or type(value).__name__ == "dtype"


class Component:
    """Base of the model classes: `self._core` is the C object (with .to(int) and .device)."""

    def __init__(self, core, path, dtype):
        self._core = core
        self.path = path
        self.dtype = dtype

    @property
    def device(self):
        """Where the model runs ("cuda:0" also while offloaded)."""
        return device_name(self._core.device)

    @property
    def offloaded(self):
        """The weights live in host memory and visit the GPU while the model runs
        (ZImagePipeline.enable_model_cpu_offload); .to(device) makes them resident again."""
        return bool(getattr(self._core, "offloaded", False))

    def to(self, device=None, dtype=None):
        """to(device), to(dtype) or to(device, dtype), like torch; returns self."""
        if device is not None and is_dtype_like(device):
            device, dtype = None, device
        if device is not None:
            self._core.to(resolve_device(device))
        if dtype is not None:
            self.dtype = resolve_dtype(dtype)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=0):
        return self.to(f"cuda:{device}")

    def eval(self):
        return self
