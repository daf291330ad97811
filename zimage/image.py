"""Images as NumPy: `Image` is a uint8 (H, W, 3) ndarray with `.save()` (PNG written by the C
core; other formats through Pillow when installed) and `_repr_png_` for notebooks."""
import os

import numpy as np

from . import _zimage


class Image(np.ndarray):
    """A uint8 (H, W, C) image. `np.asarray(img)` gives the plain array."""

    def __new__(cls, array):
        arr = np.ascontiguousarray(array, dtype=np.uint8)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"an image is (H, W, 1|3|4) uint8, got shape {arr.shape}")
        return arr.view(cls)

    @property
    def size(self):  # PIL's (width, height)
        return (self.shape[1], self.shape[0])

    @property
    def width(self):
        return self.shape[1]

    @property
    def height(self):
        return self.shape[0]

    @property
    def mode(self):
        return {1: "L", 3: "RGB", 4: "RGBA"}[self.shape[2]]

    def save(self, fp, format=None, **params):
        """Write the image; PNG in C, anything else through Pillow."""
        fmt = (format or "").upper()
        path = os.fspath(fp) if isinstance(fp, (str, os.PathLike)) else None
        if not fmt and path is not None:
            ext = os.path.splitext(path)[1].lower()
            fmt = "PNG" if ext in (".png", "") else ext[1:].upper()
        if fmt == "PNG" and not params:
            data = np.ascontiguousarray(self.view(np.ndarray))
            if path is not None:
                _zimage.write_png(path, data)
            else:
                fp.write(_zimage.encode_png(data))
            return
        try:
            from PIL import Image as PILImage
        except ImportError:
            raise ValueError(f"saving as {fmt or 'this format'} needs Pillow (pip install pillow); PNG works without it")
        PILImage.fromarray(self.view(np.ndarray).squeeze(-1) if self.shape[2] == 1 else self.view(np.ndarray)).save(
            fp, format=format, **params)

    def to_pil(self):
        from PIL import Image as PILImage
        return PILImage.fromarray(self.view(np.ndarray))

    def _repr_png_(self):
        return _zimage.encode_png(np.ascontiguousarray(self.view(np.ndarray)))

    def __reduce__(self):
        return (Image, (np.asarray(self),))


def wrap_images(batch):
    """uint8 (B, H, W, 3) -> list of Image."""
    return [Image(batch[i]) for i in range(batch.shape[0])]
