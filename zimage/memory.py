"""zimage's own GPU memory, with torch.cuda's names: what the CUDA backend of a GPU holds (every
device allocation zimage makes: weights, activations, scratch, staging), its peak, and the cache
of scratch buffers that `cuda_empty_cache` gives back. Device-wide use (every process, the CUDA
context) is `zimage._zimage.cuda_mem_info`."""
from . import _zimage
from ._dtypes import resolve_device


def _ordinal(device):
    if device is None:
        device = "cuda"
    d = resolve_device(device)
    if d < 0:
        raise ValueError(f"expected a CUDA device, got {device!r}")
    return d


def cuda_memory_stats(device=None):
    """dict(allocated, peak, pinned): device bytes zimage holds on the GPU now, the most it held since
    the last cuda_reset_peak_memory_stats (or the start), and page-locked host bytes holding offloaded
    weights. Zeros when zimage has not used that GPU (or was built without CUDA)."""
    return _zimage.cuda_memory_stats(_ordinal(device))


def cuda_memory_allocated(device=None):
    """Bytes of GPU memory zimage holds now (torch.cuda.memory_allocated's counterpart)."""
    return cuda_memory_stats(device)["allocated"]


def cuda_max_memory_allocated(device=None):
    """The peak of cuda_memory_allocated since the last reset (torch.cuda.max_memory_allocated)."""
    return cuda_memory_stats(device)["peak"]


def cuda_reset_peak_memory_stats(device=None):
    """Start the peak over from the current allocation (torch.cuda.reset_peak_memory_stats)."""
    _zimage.cuda_reset_peak_memory_stats(_ordinal(device))


def cuda_empty_cache(device=None):
    """Give zimage's cached scratch and staging buffers back to the GPU; they regrow when next needed
    (torch.cuda.empty_cache). Model weights and activations are freed with their models."""
    _zimage.cuda_empty_cache(_ordinal(device))
