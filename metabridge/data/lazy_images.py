"""Images decoded on demand, with a bounded cache (numpy and Pillow only).

:class:`LazyImages` looks like a ``[n, H, W, C]`` array to the samplers
(``x[indices]`` returns a numpy array) but decodes an image only when it is
first asked for. Decoded images are kept as ``uint8`` in a slab of at most
``cache_bytes`` (first in, first out once full), so a tree larger than memory
never is held whole; :meth:`LazyImages.build_memmap` instead decodes every
image once into an ``.npy`` file that is then memory-mapped (the page cache,
not the process, holds it). Values are converted to the float dtype asked for
(``x / 255``, then ``(x - mean) / std``) on the way out.

>>> x = LazyImages(lambda i: np.full((8, 8, 3), i, np.uint8), n=10, item_shape=(8, 8, 3))
>>> x[np.array([3, 4])].shape, float(x[3][0, 0, 0]) * 255
((2, 8, 8, 3), 3.0)
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from metabridge.data.episodes import ArrayDataset
from metabridge.utils.atomic import atomic_file

__all__ = ["LazyImages", "read_image", "image_extensions", "init_lazy_dataset"]

DEFAULT_CACHE_BYTES = 256 << 20


def image_extensions() -> frozenset:
    """File extensions (lower case, with the dot) that Pillow can open.

    >>> ".png" in image_extensions()
    True
    """
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _pixel_cap(max_pixels: int | None) -> int:
    from PIL import Image

    if max_pixels is None:
        return int(Image.MAX_IMAGE_PIXELS or 2**62)
    return int(max_pixels)


def _open(path, max_pixels: int | None):
    """Open ``path`` with Pillow (header only); clear errors naming the file."""
    from PIL import Image

    cap = _pixel_cap(max_pixels)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ValueError(f"Expected images of at most {cap} pixels. Received: {path} is larger "
                         f"(Pillow refused it as a decompression bomb: {err})") from None
    except FileNotFoundError:
        raise
    except Exception as err:  # UnidentifiedImageError, truncated headers, ...
        raise ValueError(f"Expected a readable image file. Received: {path} ({type(err).__name__}: {err})") from None
    w, h = im.size
    if w * h > cap:
        im.close()
        raise ValueError(f"Expected images of at most {cap} pixels. Received: {path} is {w}x{h} = {w * h} pixels")
    return im


def read_image(path, size: tuple[int, int] | None = None, channels: int = 3, invert: bool = False,
               max_pixels: int | None = None, resample: str = "lanczos") -> np.ndarray:
    """Decode one image file to ``uint8 [H, W, channels]``, resized to ``size = (H, W)`` if given.

    Raises ValueError naming the file when it cannot be decoded or has more
    than ``max_pixels`` pixels (default: Pillow's ``Image.MAX_IMAGE_PIXELS``).

    >>> read_image("cat.jpg", size=(84, 84)).shape              # doctest: +SKIP
    (84, 84, 3)
    """
    from PIL import Image

    filters = {"lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "nearest": Image.NEAREST, "box": Image.BOX}
    if resample not in filters:
        raise ValueError(f"Expected resample in {sorted(filters)}. Received: resample={resample!r}")
    im = _open(path, max_pixels)
    try:
        with im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), filters[resample])
            arr = np.asarray(im, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as err:  # truncated or corrupt data found while decoding
        raise ValueError(f"Expected a readable image file. Received: {path} ({type(err).__name__}: {err})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return 255 - arr if invert else arr


class LazyImages:
    """``[n, *item_shape]`` images made by ``decode(i) -> uint8 item_shape`` on first use.

    Indexing with an int, a slice or an integer array returns a numpy array
    of ``dtype`` (floats: ``x / 255``, then ``(x - mean) / std`` per channel
    when given; ``"uint8"``: the raw values), shaped like indexing the
    materialised array. ``source(i)`` names item ``i`` in error messages.
    Thread-safe: a prefetching thread may share it with the main thread.
    """

    def __init__(self, decode: Callable[[int], np.ndarray], n: int, item_shape: Sequence[int],
                 dtype: str = "float32", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, source: Callable[[int], str] | None = None):
        np_dtype = np.dtype(dtype)
        if np_dtype.kind != "f" and np_dtype != np.uint8:
            raise ValueError(f"Expected a float dtype or 'uint8'. Received: dtype={dtype!r}")
        if np_dtype == np.uint8 and (mean is not None or std is not None):
            raise ValueError("Expected mean=None and std=None with dtype='uint8'. "
                             f"Received: mean={mean!r}, std={std!r}")
        self._decode, self._source = decode, source or (lambda i: f"image {i}")
        self.item_shape = tuple(int(s) for s in item_shape)
        self.shape = (int(n),) + self.item_shape
        self.dtype, self.ndim = np_dtype, len(self.shape)
        c = self.item_shape[-1]
        self._scale = None if np_dtype == np.uint8 else np_dtype.type(1.0 / 255.0)
        self._mean = None if mean is None else np.broadcast_to(np.asarray(mean, np_dtype), (c,)).copy()
        self._std = None if std is None else np.broadcast_to(np.asarray(std, np_dtype), (c,)).copy()
        if self._std is not None and np.any(self._std <= 0):
            raise ValueError(f"Expected std > 0. Received: std={std!r}")
        item_bytes = max(1, int(np.prod(self.item_shape)))
        self.cache_slots = int(min(n, max(0, int(cache_bytes)) // item_bytes))
        self._lock = threading.Lock()
        self._slab = None  # allocated on first use: np.empty commits pages only when written
        self._slot_of = np.full(n, -1, dtype=np.int64)
        self._owner = np.full(self.cache_slots, -1, dtype=np.int64)
        self._next = 0
        self._memmap = None
        self.memmap_path: str | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        where = f"memmap={self.memmap_path!r}" if self._memmap is not None else f"cache_slots={self.cache_slots}"
        return f"LazyImages(shape={self.shape}, dtype={self.dtype}, {where})"

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, index):
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Expected integer indices. Received: {idx.dtype}")
        n = len(self)
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"Expected indices in [0, {n}). Received: {idx.min()}..{idx.max()}")
        out = self._convert(self.uint8(idx.reshape(-1)))
        return out.reshape(idx.shape + self.item_shape)

    # ---- decoded uint8 values ---------------------------------------------------------------
    def uint8(self, flat: np.ndarray) -> np.ndarray:
        """Decoded ``uint8`` images of the 1-D index array ``flat`` (no conversion)."""
        flat = np.asarray(flat, dtype=np.int64)
        if self._memmap is not None:
            return np.asarray(self._memmap[flat])
        with self._lock:
            if self.cache_slots:
                slots = self._slot_of[flat]
                hit = slots >= 0
                if hit.all():
                    return self._slab[slots]
            else:
                hit = np.zeros(len(flat), dtype=bool)
            out = np.empty((len(flat),) + self.item_shape, dtype=np.uint8)
            if hit.any():
                out[hit] = self._slab[slots[hit]]
            miss = np.flatnonzero(~hit)
            wanted, inverse = np.unique(flat[miss], return_inverse=True)
            decoded = np.empty((len(wanted),) + self.item_shape, dtype=np.uint8)
            for j, i in enumerate(wanted):
                decoded[j] = self._checked(int(i))
            out[miss] = decoded[inverse.reshape(-1)]
            self._remember(wanted, decoded)
            return out

    def _checked(self, i: int) -> np.ndarray:
        img = np.asarray(self._decode(i))
        if img.ndim == len(self.item_shape) - 1:
            img = img[..., None]
        if img.shape != self.item_shape:
            raise ValueError(f"Expected every image to be {self.item_shape} after preprocessing. "
                             f"Received: {self._source(i)} is {img.shape} (pass image_size to resize)")
        return img

    def _remember(self, wanted: np.ndarray, decoded: np.ndarray) -> None:
        m = min(len(wanted), self.cache_slots)
        if m == 0:
            return
        if self._slab is None:
            self._slab = np.empty((self.cache_slots,) + self.item_shape, dtype=np.uint8)
        slots = (self._next + np.arange(m)) % self.cache_slots
        self._next = int((self._next + m) % self.cache_slots)
        old = self._owner[slots]
        self._slot_of[old[old >= 0]] = -1
        self._owner[slots] = wanted[:m]
        self._slot_of[wanted[:m]] = slots
        self._slab[slots] = decoded[:m]

    def _convert(self, u8: np.ndarray) -> np.ndarray:
        if self._scale is None:
            return u8
        out = np.multiply(u8, self._scale, dtype=self.dtype)  # one pass: convert and scale
        if self._mean is not None:
            out -= self._mean
        if self._std is not None:
            out /= self._std
        return out

    # ---- warming up -------------------------------------------------------------------------
    def preload(self, chunk: int = 512) -> int:
        """Decode images into the memory cache until it is full (or every image is in).
        Returns how many images are cached.

        >>> ds.x.preload()                                    # doctest: +SKIP
        10000
        """
        if self._memmap is not None:
            return len(self)
        stop = min(len(self), self.cache_slots)
        for start in range(0, stop, chunk):
            self.uint8(np.arange(start, min(stop, start + chunk)))
        return int((self._slot_of >= 0).sum())

    def build_memmap(self, path: str | os.PathLike, key: str = "") -> str:
        """Decode every image once into the ``.npy`` file ``path`` (written atomically) and read
        from a memory map of it from then on. An existing file made for the same ``key``
        and shape is reused. Returns the path.

        >>> ds.x.build_memmap("/scratch/cache/images.npy", key="v1")   # doctest: +SKIP
        """
        path = Path(os.fspath(path))
        key_path = path.with_name(path.name + ".key")
        try:
            if key_path.read_text() == key:
                mm = np.load(path, mmap_mode="r", allow_pickle=False)
                if mm.shape == self.shape and mm.dtype == np.uint8:
                    self._use_memmap(mm, path)
                    return str(path)
        except (OSError, ValueError):
            pass
        with atomic_file(path) as fh:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                      "fortran_order": False, "shape": self.shape}
            np.lib.format.write_array_header_1_0(fh, header)
            for start in range(0, len(self), 256):
                fh.write(np.ascontiguousarray(self.uint8(np.arange(start, min(len(self), start + 256)))).tobytes())
        with atomic_file(key_path) as fh:
            fh.write(key.encode())
        self._use_memmap(np.load(path, mmap_mode="r", allow_pickle=False), path)
        return str(path)

    def _use_memmap(self, mm: np.ndarray, path: Path) -> None:
        with self._lock:
            self._memmap, self.memmap_path = mm, str(path)
            self._slab, self._slot_of[:] = None, -1


def init_lazy_dataset(ds: ArrayDataset, x, y: np.ndarray, name: str) -> ArrayDataset:
    """Fill the fields of the :class:`ArrayDataset` ``ds`` for a lazy ``x`` (labels ``y``).

    ``ArrayDataset.__init__`` is skipped on purpose (as ``OmniglotSplit`` does):
    it would materialise ``x`` with ``np.asarray``. ``indices_by_class`` is the
    same as ``ArrayDataset`` computes (sorted indices per class).

    >>> class MyImages(ArrayDataset):                              # doctest: +SKIP
    ...     def __init__(self, lazy_x, y): init_lazy_dataset(self, lazy_x, y, "mine")
    """
    y = np.asarray(y, dtype=np.int64)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"Expected labels y [n] for {len(x)} images. Received: y.shape={y.shape}")
    ds.x, ds.y, ds.name = x, y, name
    ds.classes = np.unique(y)
    order = np.argsort(y, kind="stable")
    bounds = np.searchsorted(y[order], ds.classes, side="left").tolist() + [len(y)]
    ds.indices_by_class = [order[bounds[c]:bounds[c + 1]] for c in range(len(ds.classes))]
    return ds
