"""tieredImageNet (Ren et al., ICLR 2018): 608 ImageNet classes in 34 super-classes,
351 / 97 / 160 classes (20 / 6 / 8 super-classes) for train / val / test, 84×84 RGB.

Read from the widely shared files (the release of Ren et al.'s ``few-shot-ssl-public``),
in ``root`` or ``root/tiered-imagenet``; for each split the first that exists:

``{split}_images.npz`` (key ``images``, uint8 ``[n, 84, 84, 3]``)
    the decoded cache that release's code writes (also shared directly). Stored
    uncompressed (``np.savez``) it is memory-mapped, never loaded whole; a
    compressed one is loaded. Its images were decoded with OpenCV and are in
    **BGR** order: ``npz_channels="bgr"`` (default) turns them to RGB.
``{split}_images_png.pkl``
    a pickled list of PNG-encoded images (uint8 byte arrays), decoded with
    Pillow (to RGB) one by one on first use.

Labels come from ``{split}_labels.pkl`` (a dict with ``label_specific``
(class per image), ``label_general`` (super-class), ``label_specific_str`` and
``label_general_str`` (names)) or the same keys in ``{split}_labels.npz``.
Pickles can run arbitrary code, so they are read only with ``allow_pickle=True``.

>>> ds = TieredImageNet("data/tiered-imagenet", "test", allow_pickle=True)   # doctest: +SKIP
>>> ds.num_classes, len(ds)                                                   # doctest: +SKIP
(160, 206209)
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from metabridge.data.episodes import ArrayDataset
from metabridge.data.lazy_images import DEFAULT_CACHE_BYTES, LazyImages, init_lazy_dataset

__all__ = ["TieredImageNet", "TIERED_CLASSES", "memmap_npz"]

SPLITS = ("train", "val", "test")
#: Classes per split in the published files.
TIERED_CLASSES = {"train": 351, "val": 97, "test": 160}


def memmap_npz(path: str | os.PathLike, key: str) -> np.ndarray | None:
    """A read-only memory map of array ``key`` in an **uncompressed** ``.npz``; None when the
    member is compressed (then ``np.load`` it instead).

    >>> images = memmap_npz("train_images.npz", "images")      # doctest: +SKIP
    """
    path = os.fspath(path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"Expected a zip local header for {key}.npy in {path}. Received: {local[:4]!r}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"Expected a plain numeric array {key} in {path}. Received: dtype={dtype}")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _load_pickle(path: Path, allow_pickle: bool):
    if allow_pickle is not True:
        raise ValueError(f"Expected allow_pickle=True (--allow-pickle on the command line) to read {path}: unpickling runs arbitrary code from the file, "
                         f"so only load pickles from a source you trust. Received: allow_pickle={allow_pickle!r}")
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="latin1")  # Python 2 pickles of numpy arrays
        except Exception as err:
            raise ValueError(f"Expected a readable pickle in {path}. Received: {type(err).__name__}: {err}") from None


class TieredImageNet(ArrayDataset):
    """One split of tieredImageNet, lazily decoded (see the module doc).

    ``y`` are ``0..C-1`` in the order of the file's ``label_specific`` ids;
    ``label_names`` (WordNet ids when the file has ``label_specific_str``) and
    ``superclass`` (``label_general`` of each class) describe them. Images come
    out as ``dtype`` in [0, 1] (``(x - mean) / std`` when given), at most
    ``cache_bytes`` of decoded images are kept in memory.

    >>> TieredImageNet("data/tiered-imagenet", "val", allow_pickle=True).num_classes   # doctest: +SKIP
    97
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", image_size: int = 84, dtype: str = "float32",
                 allow_pickle: bool = False, npz_channels: str = "bgr", mean=None, std=None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        if split not in SPLITS:
            raise ValueError(f"Expected split in {SPLITS}. Received: split={split!r}")
        if npz_channels not in ("bgr", "rgb"):
            raise ValueError(f"Expected npz_channels 'bgr' or 'rgb'. Received: npz_channels={npz_channels!r}")
        if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"Expected image_size to be a positive int. Received: image_size={image_size!r}")
        root = Path(os.fspath(root))
        if not root.is_dir():
            raise FileNotFoundError(f"Expected root to be a directory. Received: root={str(root)!r} (no such directory)")
        folder = root / "tiered-imagenet" if (root / "tiered-imagenet").is_dir() else root
        self.root, self.split, self.image_size = folder, split, int(image_size)
        labels = self._labels(folder, split, allow_pickle)
        npz, png = folder / f"{split}_images.npz", folder / f"{split}_images_png.pkl"
        if npz.is_file():
            self.source = str(npz)
            images = memmap_npz(npz, "images")
            if images is None:
                with np.load(npz, allow_pickle=False) as z:
                    images = z["images"]
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                raise ValueError(f"Expected images uint8 [n, H, W, 3] in {npz}. "
                                 f"Received: {images.dtype} {images.shape}")
            flip = npz_channels == "bgr"
            decode = lambda i: self._resize(images[i][..., ::-1] if flip else images[i])  # noqa: E731
            n = len(images)
        elif png.is_file():
            self.source = str(png)
            encoded = _load_pickle(png, allow_pickle)
            if not isinstance(encoded, (list, tuple, np.ndarray)):
                raise ValueError(f"Expected a list of PNG-encoded images in {png}. Received: {type(encoded).__name__}")
            decode = lambda i: self._decode_png(encoded[i], i)  # noqa: E731
            n = len(encoded)
        else:
            raise FileNotFoundError(f"Expected {npz.name} or {png.name} in {folder}. Received: neither exists")
        specific = labels["specific"]
        if len(specific) != n:
            raise ValueError(f"Expected one label per image of {self.source}. "
                             f"Received: {n} images, {len(specific)} labels in {labels['path']}")
        ids, y = np.unique(specific, return_inverse=True)
        names = labels.get("names")
        self.label_names = [str(names[i]) if names is not None and 0 <= i < len(names) else str(i) for i in ids]
        general = labels.get("general")
        self.superclass = None if general is None else np.array([general[np.flatnonzero(specific == i)[0]] for i in ids])
        x = LazyImages(decode, n, (self.image_size, self.image_size, 3), dtype=dtype, mean=mean, std=std,
                       cache_bytes=cache_bytes, source=lambda i: f"image {i} of {self.source}")
        init_lazy_dataset(self, x, y.reshape(-1), name=f"tieredImageNet {split}")

    @staticmethod
    def _labels(folder: Path, split: str, allow_pickle: bool) -> dict:
        pkl, npz = folder / f"{split}_labels.pkl", folder / f"{split}_labels.npz"
        if pkl.is_file():
            data, path = _load_pickle(pkl, allow_pickle), pkl
        elif npz.is_file():
            with np.load(npz, allow_pickle=False) as z:
                data, path = {k: z[k] for k in z.files}, npz
        else:
            raise FileNotFoundError(f"Expected {pkl.name} or {npz.name} in {folder}. Received: neither exists")
        if not isinstance(data, dict) or "label_specific" not in data:
            got = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"Expected a dict with 'label_specific' in {path}. Received: {got}")
        out = {"path": path, "specific": np.asarray(data["label_specific"], dtype=np.int64).reshape(-1)}
        if "label_general" in data:
            out["general"] = np.asarray(data["label_general"], dtype=np.int64).reshape(-1)
        if "label_specific_str" in data:
            out["names"] = [s.decode() if isinstance(s, bytes) else str(s) for s in data["label_specific_str"]]
        return out

    def _resize(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] == (self.image_size, self.image_size):
            return np.ascontiguousarray(img)
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(
            (self.image_size, self.image_size), Image.LANCZOS))

    def _decode_png(self, data, i: int) -> np.ndarray:
        from PIL import Image

        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        try:
            with Image.open(io.BytesIO(raw)) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as err:
            raise ValueError(f"Expected a PNG-encoded image at index {i} of {self.source}. "
                             f"Received: {type(err).__name__}: {err}") from None
        return self._resize(arr)
