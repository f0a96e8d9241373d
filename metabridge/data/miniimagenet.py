"""miniImageNet with the Ravi & Larochelle (2017) split: 64 / 16 / 20 classes
of 600 images, resized to 84×84.

Two layouts are read:

* the split files ``train.csv`` / ``val.csv`` / ``test.csv`` (header
  ``filename,label``) beside an ``images/`` folder, as Ravi & Larochelle
  distribute them. Decoded images are cached as ``.npz`` (see
  :class:`MiniImageNet`);
* the widely shared pickles ``mini-imagenet-cache-{split}.pkl``: a dict with
  ``image_data`` (uint8 ``[n, 84, 84, 3]``) and ``class_dict``
  (``{label: [indices]}``). Unpickling can run arbitrary code, so these are
  read only with ``allow_pickle=True``.
"""
from __future__ import annotations

import csv
import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from metabridge.utils.atomic import atomic_file
from metabridge.data.episodes import ArrayDataset

SPLITS = ("train", "val", "test")
PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"
_CACHE_VERSION = 1


def _default_cache_dir(root: Path) -> Path:
    """``<root>/.metabridge_cache`` if it can be written, else ``~/.cache/metabridge``."""
    preferred = root / ".metabridge_cache"
    try:
        preferred.mkdir(exist_ok=True)
        if os.access(preferred, os.W_OK | os.X_OK):
            return preferred
    except OSError:
        pass
    return Path.home() / ".cache" / "metabridge"


def _resize_rgb(image, image_size: int) -> np.ndarray:
    """A PIL image as uint8 RGB ``[S, S, 3]``, resized with antialiasing (LANCZOS)."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


class MiniImageNet(ArrayDataset):
    """One split of miniImageNet as NHWC images ``x`` in [0, 1] with labels ``y``.

    ``root`` holds either ``{split}.csv`` and ``images/``, or
    ``mini-imagenet-cache-{split}.pkl`` (read only with ``allow_pickle=True``:
    loading a pickle runs code from the file). The CSV layout wins when both
    are present. Labels are ``0..C-1`` in the sorted order of the label names
    (WordNet ids such as ``n01532829``), which are kept in ``label_names``.
    Images of any size are converted to RGB and resized to
    ``image_size × image_size`` with Pillow's antialiasing LANCZOS filter.
    ``dtype`` is a float dtype (values in [0, 1]) or ``"uint8"`` (0..255, a
    quarter of the memory: the train split is 3.3 GB as float32).

    Decoded CSV images are cached in ``cache_dir`` (default
    ``<root>/.metabridge_cache``, or ``~/.cache/metabridge`` when ``root`` is
    read-only; ``cache_dir=False`` turns the cache off). The cache is keyed by
    the CSV file's path, size and modification time and by ``image_size``;
    edit the CSV (or delete the cache) after changing images in place.

    An :class:`~metabridge.data.ArrayDataset`, so it works with
    :class:`~metabridge.data.EpisodeSampler`:

    >>> ds = MiniImageNet("data/miniImageNet", split="test")            # doctest: +SKIP
    >>> ds.x.shape, ds.num_classes                                       # doctest: +SKIP
    ((12000, 84, 84, 3), 20)
    >>> EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)          # doctest: +SKIP
    """

    def __init__(self, root, split: str = "train", image_size: int = 84, allow_pickle: bool = False,
                 cache_dir=None, dtype: str = "float32"):
        if split not in SPLITS:
            raise ValueError(f"Expected split in {SPLITS}. Received: split={split!r}")
        if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"Expected image_size to be a positive int. Received: image_size={image_size!r}")
        np_dtype = np.dtype(dtype)
        if np_dtype.kind != "f" and np_dtype != np.uint8:
            raise ValueError(f"Expected a float dtype or 'uint8'. Received: dtype={dtype!r}")
        root = Path(os.fspath(root))
        if not root.is_dir():
            raise FileNotFoundError(
                f"Expected root to be a directory. Received: root={str(root)!r} (no such directory)"
            )
        self.root, self.split, self.image_size = root, split, int(image_size)
        self.cache_path = None

        csv_path, pkl_path = root / f"{split}.csv", root / PICKLE_NAME.format(split=split)
        if csv_path.is_file():
            self.source = "csv"
            images, labels = self._from_csv(csv_path, cache_dir)
        elif pkl_path.is_file():
            if allow_pickle is not True:
                raise ValueError(
                    f"Expected allow_pickle=True (--allow-pickle on the command line) to read {pkl_path}: unpickling runs arbitrary code from the "
                    "file, so only load pickles from a source you trust (or use the CSV layout). "
                    f"Received: allow_pickle={allow_pickle!r}"
                )
            self.source = "pickle"
            images, labels = self._from_pickle(pkl_path)
        else:
            raise FileNotFoundError(
                f"Expected {split}.csv (with an images/ folder) or {PICKLE_NAME.format(split=split)} in "
                f"{root}. Received: neither file exists"
            )
        self.label_names = sorted(set(labels))
        index = {name: i for i, name in enumerate(self.label_names)}
        y = np.array([index[name] for name in labels], dtype=np.int64)
        if np_dtype.kind == "f":
            x = images.astype(np_dtype) / np_dtype.type(255.0)
        else:
            x = images
        super().__init__(x, y, name=f"miniImageNet {split}")

    # ---- CSV + images/ ---------------------------------------------------------------------------
    def _read_csv(self, csv_path: Path) -> tuple[list, list]:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        header = [h.strip() for h in rows[0]] if rows else []
        if header != ["filename", "label"]:
            raise ValueError(f"Expected the header 'filename,label' in {csv_path}. Received: {header!r}")
        files, labels = [], []
        for lineno, row in enumerate(rows[1:], start=2):
            if not row or not any(field.strip() for field in row):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(
                    f"Expected 'filename,label' rows in {csv_path}. Received: line {lineno}: {row!r}"
                )
            files.append(row[0].strip())
            labels.append(row[1].strip())
        if not files:
            raise ValueError(f"Expected at least one image in {csv_path}. Received: no rows")
        return files, labels

    def _cache_key(self, csv_path: Path) -> str:
        st = csv_path.stat()
        text = f"v{_CACHE_VERSION}|{csv_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.image_size}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _from_csv(self, csv_path: Path, cache_dir):
        key = self._cache_key(csv_path)
        cache_file = None
        if cache_dir is not False:
            folder = _default_cache_dir(self.root) if cache_dir is None else Path(os.fspath(cache_dir))
            where = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
            cache_file = folder / f"miniimagenet-{where}-{self.split}-{self.image_size}.npz"
            cached = _load_cache(cache_file, key)
            if cached is not None:
                self.cache_path = cache_file
                return cached
        files, labels = self._read_csv(csv_path)
        from PIL import Image

        images = np.empty((len(files), self.image_size, self.image_size, 3), dtype=np.uint8)
        folder_images = self.root / "images"
        for i, name in enumerate(files):
            path = folder_images / name
            if not path.is_file():
                raise FileNotFoundError(
                    f"Expected the image {path} listed in {csv_path.name}. Received: no such file"
                )
            with Image.open(path) as im:
                images[i] = _resize_rgb(im, self.image_size)
        if cache_file is not None and _save_cache(cache_file, key, images, labels):
            self.cache_path = cache_file
        return images, labels

    # ---- pickle ----------------------------------------------------------------------------------
    def _from_pickle(self, pkl_path: Path):
        with open(pkl_path, "rb") as f:
            data = pickle.load(f, encoding="latin1")  # latin1: also reads Python 2 pickles of numpy arrays
        if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
            got = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"Expected a dict with 'image_data' and 'class_dict' in {pkl_path}. Received: {got}"
            )
        raw = np.asarray(data["image_data"])
        if raw.ndim != 4 or raw.shape[-1] != 3 or raw.dtype != np.uint8:
            raise ValueError(
                f"Expected image_data uint8 [n, H, W, 3] in {pkl_path}. "
                f"Received: dtype={raw.dtype}, shape={raw.shape}"
            )
        n = len(raw)
        label_of = [None] * n
        for name, indices in data["class_dict"].items():
            name = name.decode() if isinstance(name, bytes) else str(name)
            for i in np.asarray(indices, dtype=np.int64).ravel():
                if not 0 <= i < n or label_of[i] is not None:
                    raise ValueError(
                        f"Expected class_dict indices within 0..{n - 1}, each image in one class, "
                        f"in {pkl_path}. "
                        f"Received: index {int(i)} for class {name!r}"
                        + (f" (already in {label_of[i]!r})" if 0 <= i < n else "")
                    )
                label_of[i] = name
        unlabelled = [i for i, v in enumerate(label_of) if v is None]
        if unlabelled:
            raise ValueError(
                f"Expected every image of {pkl_path} in class_dict. Received: {len(unlabelled)} images in no "
                f"class (first: {unlabelled[0]})"
            )
        if raw.shape[1:3] != (self.image_size, self.image_size):
            from PIL import Image

            raw = np.stack([_resize_rgb(Image.fromarray(im), self.image_size) for im in raw])
        return raw, label_of


def _load_cache(path: Path, key: str):
    """``(images, labels)`` from a cache file written for ``key``, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return z["images"], [str(s) for s in z["labels"]]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _save_cache(path: Path, key: str, images: np.ndarray, labels: list) -> bool:
    """Write the cache atomically (see :mod:`metabridge.utils.atomic`); False if it cannot."""
    try:
        with atomic_file(path) as f:
            np.savez(f, key=np.array(key), images=images, labels=np.array(labels, dtype=str))
        return True
    except OSError:
        return False
