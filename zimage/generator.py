"""Random generators with torch.Generator's behaviour, without torch: the initial latents of
ZImagePipeline come out bit for bit as diffusers' randn_tensor draws them.

    g = zimage.generator.Generator("cuda").manual_seed(42)
    latents = g.randn((1, 16, 128, 128))        # == torch.randn(..., generator=torch's g, device="cuda")

A "cuda" generator reproduces torch's CUDA generator (Philox through curand) on the host, so it
needs no GPU. Its numbers depend on the GPU torch would run on (the kernel's grid is capped at
SMs x threads per SM): we take the geometry of the generator's GPU when the C core can report
it, else an H100's (132 x 2048); set `g.gpu_geometry = (sms, threads_per_sm)` to override.
A "cpu" generator reproduces torch's mt19937 generator, including its state layout.

randn_like_torch(shape, generator) also accepts a real torch.Generator (CPU or CUDA): it reads
the generator's state, draws like torch, and writes the advanced state back, as torch would.
"""
import os
import threading

from . import _zimage
from ._dtypes import resolve_device

DEFAULT_SEED = 67280421310721      # torch's default_rng_seed_val, a new generator's seed
H100_GEOMETRY = (132, 2048)        # multiProcessorCount, maxThreadsPerMultiProcessor
_CUDA_STATE_BYTES = 16             # torch CUDA generator state: seed u64 + philox offset i64 (LE)

__all__ = ["Generator", "randn_like_torch", "DEFAULT_SEED", "H100_GEOMETRY"]


class GeneratorDevice:
    """A generator's device, printed like torch.device: .type is 'cpu' or 'cuda', .index an int
    (None for the CPU). Compares equal to the strings 'cpu', 'cuda', 'cuda:N' and torch.devices."""

    __slots__ = ("type", "index")

    def __init__(self, ordinal):
        self.type = "cpu" if ordinal < 0 else "cuda"
        self.index = None if ordinal < 0 else ordinal

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self):
        return f"device(type='{self.type}')" if self.index is None else f"device(type='{self.type}', index={self.index})"

    def __eq__(self, other):
        if isinstance(other, GeneratorDevice):
            return (self.type, self.index) == (other.type, other.index)
        text = str(other)
        return text == str(self) or (text == self.type and self.type == "cuda")

    def __hash__(self):
        return hash(str(self))


def _check_seed(seed):
    """torch's manual_seed accepts ints in [-2**63, 2**64); negative ones wrap to uint64."""
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    seed = seed.__index__()
    if not -(1 << 63) <= seed < (1 << 64):
        raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
    return seed & ((1 << 64) - 1)


def cuda_geometry(ordinal):
    """(multiProcessorCount, maxThreadsPerMultiProcessor) of CUDA device `ordinal`, as torch's
    randn kernel sizes its grid; an H100's when the C core cannot tell (no GPU, or no query)."""
    query = getattr(_zimage, "cuda_device_properties", None)
    if query is not None and ordinal >= 0:
        try:
            props = query(ordinal)
        except Exception:  # no such device / no GPU: fall back like the CPU-only build does
            props = None
        if props:
            get = props.get if isinstance(props, dict) else lambda k: getattr(props, k, None)
            sms, tps = get("multi_processor_count"), get("max_threads_per_multi_processor")
            if sms and tps:
                return int(sms), int(tps)
    return H100_GEOMETRY


class Generator:
    """torch.Generator's seeding and randn without torch.

    Generator(device="cpu"): 'cpu', 'cuda', 'cuda:N' (or a torch.device). New generators hold
    torch's default seed; manual_seed(s) returns the generator; randn(shape) draws float32 like
    torch.randn(shape, generator=g, device=g.device) and advances the state as torch does:
    a CUDA generator's philox offset grows by 4 * ceil(n / (4 T)) per draw (T = launched
    threads), a CPU generator consumes mt19937 words (n for n >= 16, else 4 per pair of values,
    keeping the second value of a pair for the next draw).
    """

    def __init__(self, device="cpu"):
        self._ordinal = resolve_device(device)
        self._lock = threading.Lock()
        self.gpu_geometry = cuda_geometry(self._ordinal) if self._ordinal >= 0 else H100_GEOMETRY
        self.manual_seed(DEFAULT_SEED)

    # ---- torch.Generator API -------------------------------------------------------------
    @property
    def device(self):
        return GeneratorDevice(self._ordinal)

    def manual_seed(self, seed):
        seed = _check_seed(seed)
        with self._lock:
            self._seed = seed
            self._offset = 0
            self._cpu_state = bytearray(_zimage.cpu_generator_state(seed)) if self._ordinal < 0 else None
        return self

    def seed(self):
        """Seed with a non-deterministic value (from os.urandom) and return it."""
        s = int.from_bytes(os.urandom(8), "little") >> 1
        self.manual_seed(s)
        return s

    def initial_seed(self):
        return self._seed

    def get_offset(self):
        if self._ordinal < 0:
            raise RuntimeError("CPU Generator does not use offset")
        return self._offset

    def set_offset(self, offset):
        if self._ordinal < 0:
            raise RuntimeError("CPU Generator does not use offset")
        if isinstance(offset, bool) or not hasattr(offset, "__index__") or not 0 <= offset.__index__() < (1 << 63):
            raise ValueError(f"offset must be an int in [0, 2**63), got {offset!r}")
        if offset % 4:
            raise ValueError("offset must be a multiple of 4")
        self._offset = offset.__index__()
        return self

    def get_state(self):
        """torch's state bytes: CPU 5056 (CPUGeneratorImplState), CUDA 16 (seed, offset)."""
        with self._lock:
            if self._ordinal < 0:
                return bytes(self._cpu_state)
            return self._seed.to_bytes(8, "little") + self._offset.to_bytes(8, "little", signed=True)

    def set_state(self, state):
        """Accepts what get_state() returns here or in torch (bytes, a uint8 array or tensor)."""
        raw = bytes(state.numpy() if hasattr(state, "numpy") else memoryview(state).cast("B"))
        with self._lock:
            if self._ordinal < 0:
                probe = bytearray(raw)
                _zimage.randn_cpu(0, state=probe)   # validates the layout (ValueError if bad)
                self._cpu_state, self._seed = probe, int.from_bytes(raw[:8], "little")
            else:
                if len(raw) not in (8, _CUDA_STATE_BYTES):
                    raise ValueError(f"a CUDA generator state is 16 bytes, got {len(raw)}")
                offset = int.from_bytes(raw[8:16], "little", signed=True) if len(raw) == 16 else 0
                if offset < 0 or offset % 4:
                    raise ValueError(f"invalid philox offset {offset} (must be a multiple of 4, >= 0)")
                self._seed, self._offset = int.from_bytes(raw[:8], "little"), offset
        return self

    # ---- drawing -------------------------------------------------------------------------
    def randn(self, shape):
        """float32 ndarray of `shape` (an int or a sequence of ints), standard normal."""
        with self._lock:
            if self._ordinal < 0:
                return _zimage.randn_cpu(shape, state=self._cpu_state)
            sms, tps = self.gpu_geometry
            out = _zimage.randn_cuda(shape, self._seed, self._offset, sms, tps)
            self._offset += _zimage.philox_offset_increment(out.size, sms, tps)
            return out

    def __repr__(self):
        extra = f", offset={self._offset}" if self._ordinal >= 0 else ""
        return f"<zimage.Generator device={self.device} seed={self._seed}{extra}>"


def _is_torch_generator(obj):
    t = type(obj)
    return t.__name__ == "Generator" and t.__module__.split(".")[0] == "torch"


def _randn_torch_generator(shape, gen, advance):
    """Draw from a real torch.Generator's state (torch is already imported: gen exists)."""
    import sys

    torch = sys.modules["torch"]
    dev = gen.device
    state = gen.get_state()          # a CPU uint8 tensor; .numpy() shares its memory
    buf = state.numpy()
    if dev.type == "cpu":
        out = _zimage.randn_cpu(shape, state=buf if advance else bytearray(buf.tobytes()))
    elif dev.type == "cuda":
        if buf.size != _CUDA_STATE_BYTES:
            raise ValueError(f"unexpected CUDA generator state of {buf.size} bytes")
        raw = buf.tobytes()
        seed = int.from_bytes(raw[:8], "little")
        offset = int.from_bytes(raw[8:], "little", signed=True)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        sms, tps = props.multi_processor_count, props.max_threads_per_multi_processor
        out = _zimage.randn_cuda(shape, seed, offset, sms, tps)
        offset += _zimage.philox_offset_increment(out.size, sms, tps)
        buf[8:] = list(offset.to_bytes(8, "little", signed=True))
    else:
        raise ValueError(f"cannot reproduce a {dev.type!r} generator")
    if advance:
        gen.set_state(state)
    return out


def randn_like_torch(shape, generator, advance=True):
    """torch.randn(shape, generator=generator, device=generator.device, dtype=float32) as a
    float32 ndarray, for our Generator or a real torch.Generator (whose state is read with
    get_state() and, when `advance`, written back moved on as torch would have)."""
    if isinstance(generator, Generator):
        if advance:
            return generator.randn(shape)
        saved = generator.get_state()
        try:
            return generator.randn(shape)
        finally:
            generator.set_state(saved)
    if _is_torch_generator(generator):
        return _randn_torch_generator(shape, generator, advance)
    raise TypeError(f"generator must be a zimage.generator.Generator or a torch.Generator, got {type(generator).__name__}")
