"""Your own images: one folder per class, any format Pillow reads (numpy and Pillow only).

Layout
    ``root/<class>/<image>`` or, with super-classes as Omniglot's alphabets,
    ``root/<super>/<class>/<image>`` (any depth). A folder that holds image
    files is a class, named by its path relative to ``root`` with ``/``
    (``"Greek/character05"``). Hidden files and folders (``.name``) and files
    whose extension Pillow does not know (``README.txt``) are skipped. A folder
    must hold either images or sub-folders, not both.

Splits (class-wise: a class is entirely in train, val or test)
    * Seeded rule (default): the sorted class names (or super-class names with
      ``split_by="superclass"``) are permuted by ``numpy.random.default_rng(seed)``;
      the first ``round(ratio_train * n)`` are train, the next
      ``round(ratio_val * n)`` val, the rest test (``split_ratios``, default
      0.64 / 0.16 / 0.20 as miniImageNet's 64 / 16 / 20 classes).
      ``split="all"`` takes every class.
    * Split file (``split_file=``): either JSON ``{"train": [...], "val": [...],
      "test": [...]}`` or CSV lines ``split,folder`` (an optional header line
      ``split,folder``; blank lines and lines starting with ``#`` are ignored).
      A folder is a class path or a super-class path (then every class below
      it). Classes listed nowhere are not used; a class listed twice, or a
      folder that does not exist, is an error naming the file.

Images
    Decoded on first use (:class:`~metabridge.data.lazy_images.LazyImages`),
    converted to RGB (``channels=3``) or grey (``channels=1``), resized to
    ``image_size`` with Pillow's LANCZOS filter (``None`` keeps the size; then
    every image must have the same size), optionally inverted, and returned as
    ``dtype`` in [0, 1] (``(x - mean) / std`` when given), NHWC. At most
    ``cache_bytes`` of decoded ``uint8`` images are kept in memory; with
    ``cache_dir`` every image of the split is decoded once into an ``.npy``
    memory map there (keyed by the files' paths, sizes and times and the
    preprocessing), which later runs reuse.

>>> ds = ImageFolder("my_images", image_size=84, split="train", seed=0)      # doctest: +SKIP
>>> sampler = ds.episode_sampler(ways=5, shots=5, queries=15, seed=0)        # doctest: +SKIP
>>> ds.class_names[:2], ds.x[np.array([0, 1])].shape                          # doctest: +SKIP
(['birds/crow', 'birds/robin'], (2, 84, 84, 3))
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from metabridge.data.episodes import ArrayDataset
from metabridge.data.samplers import EpisodeSampler
from metabridge.data.lazy_images import DEFAULT_CACHE_BYTES, LazyImages, _open, image_extensions, init_lazy_dataset
from metabridge.data.lazy_images import read_image

__all__ = ["ImageFolder", "scan_class_folders", "split_classes", "read_split_file", "check_examples_per_class"]

SPLITS = ("train", "val", "test", "all")
_CACHE_VERSION = 1


def scan_class_folders(root: str | os.PathLike) -> dict[str, list[str]]:
    """``{class path: sorted image file names}`` for the tree under ``root`` (see the module doc).

    Raises FileNotFoundError for a missing root and ValueError naming the folder for an
    empty class folder, a folder with both images and sub-folders, or no classes at all.

    >>> scan_class_folders("my_images")                   # doctest: +SKIP
    {'cats': ['1.jpg', '2.jpg'], 'dogs': ['a.png']}
    """
    root = Path(os.fspath(root))
    if not root.is_dir():
        raise FileNotFoundError(f"Expected root to be a directory. Received: root={str(root)!r} (no such directory)")
    exts = image_extensions()
    classes: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        images = sorted(f for f in filenames if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts)
        here = Path(dirpath)
        if here == root:
            if images:
                raise ValueError(f"Expected class folders (one per class) in {root}. "
                                 f"Received: image files directly in it (e.g. {images[0]})")
            continue
        rel = here.relative_to(root).as_posix()
        if images and dirnames:
            raise ValueError(f"Expected a folder to hold either images (a class) or class folders. "
                             f"Received: {here} holds both ({images[0]}, {dirnames[0]}/)")
        if images:
            classes[rel] = images
        elif not dirnames:
            raise ValueError(f"Expected image files in every class folder. Received: no images in {here}")
    if not classes:
        raise ValueError(f"Expected class folders with images in {root}. Received: none")
    return classes


def _groups(names: Sequence[str], split_by: str) -> dict[str, list[str]]:
    if split_by == "class":
        return {n: [n] for n in names}
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(n.split("/")[0], []).append(n)
    return out


def split_classes(names: Sequence[str], seed: int = 0, ratios: Sequence[float] = (0.64, 0.16, 0.20),
                  split_by: str = "class") -> dict[str, list[str]]:
    """The seeded class-wise split ``{"train": [...], "val": [...], "test": [...]}`` of ``names``.

    ``split_by="superclass"`` keeps every class of a top-level folder together.

    >>> split_classes([f"c{i}" for i in range(10)], seed=0)["val"]      # doctest: +SKIP
    ['c3', 'c8']
    """
    if split_by not in ("class", "superclass"):
        raise ValueError(f"Expected split_by in ('class', 'superclass'). Received: split_by={split_by!r}")
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or np.any(r < 0) or not np.isclose(r.sum(), 1.0):
        raise ValueError(f"Expected three split_ratios >= 0 summing to 1. Received: split_ratios={tuple(ratios)!r}")
    groups = _groups(sorted(names), split_by)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_train, n_val = int(round(r[0] * len(keys))), int(round(r[1] * len(keys)))
    n_val = min(n_val, len(keys) - n_train)
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {s: sorted(c for i in idx for c in groups[keys[i]]) for s, idx in parts.items()}


def read_split_file(path: str | os.PathLike, names: Sequence[str]) -> dict[str, list[str]]:
    """Read a split file (JSON or ``split,folder`` CSV, see the module doc) against the
    class paths ``names``; returns ``{"train": [...], "val": [...], "test": [...]}``.

    >>> read_split_file("splits.csv", ["a/x", "a/y", "b/z"])          # doctest: +SKIP
    {'train': ['a/x', 'a/y'], 'val': [], 'test': ['b/z']}
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"Expected a split file. Received: split_file={str(path)!r} (no such file)")
    text = path.read_text(encoding="utf-8-sig")
    entries: list[tuple[str, str, str]] = []  # (split, folder, where)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"Expected JSON in {path}. Received: {err}") from None
        if not isinstance(data, dict) or not set(data) <= {"train", "val", "test"} or not all(
                isinstance(v, list) and all(isinstance(f, str) for f in v) for v in data.values()):
            raise ValueError(f'Expected {{"train": [folders], "val": [...], "test": [...]}} in {path}. '
                             f"Received: {text[:80]!r}")
        entries = [(s, f, f"{path} ({s})") for s, folders in data.items() for f in folders]
    else:
        for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and [c.strip() for c in row] == ["split", "folder"]:
                continue
            if len(row) != 2 or row[0].strip() not in ("train", "val", "test") or not row[1].strip():
                raise ValueError(f"Expected 'split,folder' lines with split in train/val/test in {path}. "
                                 f"Received: line {lineno}: {','.join(row)!r}")
            entries.append((row[0].strip(), row[1].strip(), f"{path} line {lineno}"))
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    owner: dict[str, str] = {}
    for split, folder, where in entries:
        folder = folder.strip("/")
        matched = [n for n in names if n == folder or n.startswith(folder + "/")]
        if not matched:
            raise ValueError(f"Expected every folder of the split file to be a class folder under the root "
                             f"(or above one). Received: {folder!r} at {where} matches none")
        for n in matched:
            if n in owner and owner[n] != split:
                raise ValueError(f"Expected each class in one split. Received: {n!r} in {owner[n]} and {split} "
                                 f"({where})")
            if n not in owner:
                owner[n] = split
                out[split].append(n)
    return {s: sorted(v) for s, v in out.items()}


def check_examples_per_class(dataset: ArrayDataset, needed: int, what: str = "shots + queries") -> None:
    """Raise ValueError naming the folder of every class of ``dataset`` with fewer than
    ``needed`` examples (``dataset.class_folders`` when it has them, else the class names).

    >>> check_examples_per_class(ds, 5 + 15)                         # doctest: +SKIP
    """
    sizes = np.array([len(i) for i in dataset.indices_by_class])
    small = np.flatnonzero(sizes < needed)
    if small.size:
        where = getattr(dataset, "class_folders", None) or getattr(dataset, "class_names", None)
        names = [str(where[c]) if where is not None else f"class {c}" for c in small]
        more = f" (and {small.size - 1} more)" if small.size > 1 else ""
        raise ValueError(f"Expected at least {needed} images ({what}) in every class of {dataset.name}. "
                         f"Received: {sizes[small[0]]} in {names[0]}{more}")


class ImageFolder(ArrayDataset):
    """One split of a folder-per-class image tree, lazily decoded (see the module doc).

    Attributes: ``x`` (:class:`LazyImages`, NHWC), ``y`` (labels ``0..C-1`` in the
    sorted order of ``class_names``), ``class_names`` (paths relative to ``root``),
    ``class_folders`` (absolute folders), ``files`` (every image's path).

    >>> ds = ImageFolder("data/birds", image_size=84, split="val", split_file="splits.json")  # doctest: +SKIP
    >>> ds.num_classes, ds.x.shape                                                           # doctest: +SKIP
    (50, (2900, 84, 84, 3))
    """

    def __init__(self, root: str | os.PathLike, image_size: int | Sequence[int] | None = None, channels: int = 3,
                 split: str = "train", split_file: str | os.PathLike | None = None, seed: int = 0,
                 split_ratios: Sequence[float] = (0.64, 0.16, 0.20), split_by: str = "class",
                 dtype: str = "float32", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 invert: bool = False, max_pixels: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 cache_dir: str | os.PathLike | None = None, check_files: bool = True):
        if split not in SPLITS:
            raise ValueError(f"Expected split in {SPLITS}. Received: split={split!r}")
        if channels not in (1, 3):
            raise ValueError(f"Expected channels 1 (grey) or 3 (RGB). Received: channels={channels!r}")
        size = _size(image_size)
        self.root = Path(os.fspath(root))
        tree = scan_class_folders(self.root)
        if len(tree) < 2:
            raise ValueError(f"Expected at least 2 class folders in {self.root}. "
                             f"Received: 1 class ({self.root / next(iter(tree))})")
        if split == "all":
            names = sorted(tree)
        elif split_file is not None:
            names = read_split_file(split_file, sorted(tree))[split]
        else:
            names = split_classes(sorted(tree), seed, split_ratios, split_by)[split]
        if len(names) < 2:
            rule = f"split_file={os.fspath(split_file)!r}" if split_file is not None else \
                f"split_ratios={tuple(split_ratios)}, {len(tree)} classes"
            raise ValueError(f"Expected at least 2 classes in split {split!r} of {self.root}. "
                             f"Received: {len(names)} ({rule})")
        self.split, self.channels, self.invert, self.max_pixels = split, channels, bool(invert), max_pixels
        self.class_names = names
        self.class_folders = [str(self.root / n) for n in names]
        self.files = [str(self.root / n / f) for n in names for f in tree[n]]
        y = np.repeat(np.arange(len(names)), [len(tree[n]) for n in names])
        if size is None or check_files:
            size = self._check_headers(size, check_files)
        self.image_size = size
        x = LazyImages(self._decode, len(self.files), size + (channels,), dtype=dtype, mean=mean, std=std,
                       cache_bytes=cache_bytes, source=lambda i: self.files[i])
        init_lazy_dataset(self, x, y, name=f"{self.root} ({split})")
        if cache_dir is not None:
            key = self._cache_key()
            cache_file = Path(os.fspath(cache_dir)) / f"imagefolder-{key[:16]}.npy"
            x.build_memmap(cache_file, key)

    def _decode(self, i: int) -> np.ndarray:
        return read_image(self.files[i], self.image_size, self.channels, self.invert, self.max_pixels)

    def _check_headers(self, size, check_all: bool) -> tuple[int, int]:
        """Open every file's header (not its pixels): unreadable and too-large files fail here,
        naming the file; with ``image_size=None`` every image must have the first one's size."""
        first = None
        for path in self.files if check_all else self.files[:1]:
            with _open(path, self.max_pixels) as im:
                hw = (im.size[1], im.size[0])
            if first is None:
                first = hw
            elif size is None and hw != first:
                raise ValueError(f"Expected every image to be {first[0]}x{first[1]} (the size of "
                                 f"{self.files[0]}) when image_size=None. Received: {path} is {hw[0]}x{hw[1]} "
                                 "(pass image_size to resize)")
        return size if size is not None else first

    def _cache_key(self) -> str:
        h = hashlib.sha256(f"v{_CACHE_VERSION}|{self.image_size}|{self.channels}|{self.invert}".encode())
        for path in self.files:
            st = os.stat(path)
            h.update(f"|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def check_examples_per_class(self, shots: int, queries: int) -> None:
        """Raise ValueError naming the class folder(s) with fewer than ``shots + queries`` images."""
        check_examples_per_class(self, int(shots) + int(queries))

    def episode_sampler(self, ways: int, shots: int, queries: int, seed: int = 0) -> EpisodeSampler:
        """An :class:`EpisodeSampler` over this split, after :meth:`check_examples_per_class`.

        >>> ImageFolder("imgs", 84).episode_sampler(5, 1, 15).batch(0, 4)    # doctest: +SKIP
        """
        self.check_examples_per_class(shots, queries)
        return EpisodeSampler(self, ways, shots, queries, seed)

    def __repr__(self) -> str:
        return (f"ImageFolder(root={str(self.root)!r}, split={self.split!r}, classes={self.num_classes}, "
                f"images={len(self)}, x={self.x!r})")


def _size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool) and image_size > 0:
        return (int(image_size), int(image_size))
    if (isinstance(image_size, (tuple, list)) and len(image_size) == 2
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in image_size)):
        return (int(image_size[0]), int(image_size[1]))
    raise ValueError(f"Expected image_size None, a positive int or (height, width). Received: image_size={image_size!r}")
