"""dtype and device arguments as diffusers users write them (torch objects, strings, ours)."""
import os


class dtype:
    """A storage/compute dtype name: zimage.bfloat16, zimage.float16, zimage.float32."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"zimage.{self.name}"

    def __eq__(self, other):
        return isinstance(other, dtype) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


bfloat16 = dtype("bfloat16")
float16 = dtype("float16")
float32 = dtype("float32")
_BY_NAME = {"bfloat16": bfloat16, "bf16": bfloat16, "float16": float16, "fp16": float16, "half": float16,
            "float32": float32, "fp32": float32, "float": float32}


def resolve_dtype(value):
    """None, a zimage dtype, a string, or a torch.dtype -> a zimage dtype (None stays None)."""
    if value is None or isinstance(value, dtype):
        return value
    text = str(value)  # torch.bfloat16 prints as "torch.bfloat16"
    name = text[len("torch."):] if text.startswith("torch.") else text
    if name in _BY_NAME:
        return _BY_NAME[name]
    raise ValueError(f"unsupported torch_dtype {value!r}: use bfloat16, float16 or float32")


def resolve_device(device):
    """'cpu', 'cuda', 'cuda:N', an int, or a torch.device -> -1 (CPU) or a CUDA ordinal."""
    if isinstance(device, int) and not isinstance(device, bool):
        if device < -1:
            raise ValueError(f"invalid device {device!r}")
        return device
    text = str(device).strip().lower()  # torch.device("cuda:1") prints as "cuda:1"
    if text == "cpu":
        return -1
    if text == "cuda":
        return int(os.environ.get("ZIMAGE_DEFAULT_CUDA_DEVICE", "0"))
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"invalid device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


def device_name(ordinal):
    return "cpu" if ordinal < 0 else f"cuda:{ordinal}"
