"""Lake et al.'s 20-way one-shot classification benchmark (Science, 2015).

The Omniglot project distributes the 20 runs as ``all_runs/runNN/`` with
``training/`` (one image per class, ``class01.png`` ... ``class20.png``),
``test/`` (``item01.png`` ... ``item20.png``) and ``class_labels.txt``, whose
lines pair a test image with its training image, as paths relative to
``all_runs/``::

    run01/test/item01.png run01/training/class12.png

The protocol is that of Lake's ``demo_classification.py``: within a run, the
test and training files are taken from ``class_labels.txt`` and sorted, every
test image is scored against every training image, it is assigned the
best-scoring one (the first on ties, like ``numpy.argmax``), and the run's
error is the percentage of test images assigned a training image other than
their own. The benchmark reports each run's error and their mean over runs.
(Lake's script pairs answers by line position and test images by sorted name,
which coincide on the official files; here answers are paired by name.)

>>> runs = load_lake_runs("omniglot/python/one-shot-classification")  # doctest: +SKIP

This module reads the runs (numpy and Pillow only); scoring is in
:mod:`metabridge.data.one_shot` and model similarity functions in
:mod:`metabridge.algorithms.similarity`.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
import zipfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metabridge.data.episodes import Episode

LABELS_FILE = "class_labels.txt"
_RUN_DIR = re.compile(r"^run\d+$")


# ---- preprocessing -------------------------------------------------------------------------------
def _check_image_size(image_size):
    if image_size is None:
        return None
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(
            f"Expected image_size to be a positive int or None. Received: image_size={image_size!r}"
        )
    return int(image_size)


def preprocess_omniglot_image(image, image_size: int | None = 28, dtype: str = "float32") -> np.ndarray:
    """An Omniglot drawing as a ``[S, S, 1]`` array with strokes 1.0 and background 0.0.

    ``image`` is a PIL image, a path or the bytes of an image file (the
    official PNGs are 105×105, one bit, black strokes on white). It is
    converted to 8-bit grey, resized to ``image_size × image_size`` with
    Pillow's antialiasing LANCZOS filter (``None`` keeps its size), scaled to
    [0, 1] and inverted.

    >>> preprocess_omniglot_image(Image.new("1", (105, 105), 1)).max()   # doctest: +SKIP
    0.0
    """
    from PIL import Image

    image_size = _check_image_size(image_size)
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            image = opened.copy()
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"Expected a PIL image, a path or image bytes. Received: {type(image).__name__}"
        )
    grey = image.convert("L")
    if image_size is not None and grey.size != (image_size, image_size):
        grey = grey.resize((image_size, image_size), Image.LANCZOS)
    arr = np.asarray(grey, dtype=np.float32) / 255.0
    return (1.0 - arr)[..., None].astype(dtype)


# ---- reading -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LakeRun:
    """One run: training images (one per class), test images and the answers.

    ``answers[i]`` is the index in ``train_images`` of the training image that
    matches ``test_images[i]``. File names are as in ``class_labels.txt``
    (relative to ``all_runs/``), in the sorted order of the arrays.
    """

    name: str
    train_images: np.ndarray
    test_images: np.ndarray
    answers: np.ndarray
    train_files: tuple
    test_files: tuple

    @property
    def ways(self) -> int:
        return int(self.train_images.shape[0])

    def episode(self) -> Episode:
        """The run as an :class:`Episode`: support labels ``0..ways-1`` (one per
        training image), query labels the answers; e.g.
        ``Siamese.one_shot_accuracy(params, run.episode())``."""
        return Episode(self.train_images, np.arange(self.ways), self.test_images, self.answers)


class _DirSource:
    def __init__(self, base: str):
        self.base, self.where = base, base

    def runs(self) -> list[str]:
        return sorted(d for d in os.listdir(self.base)
                      if _RUN_DIR.match(d) and os.path.isfile(os.path.join(self.base, d, LABELS_FILE)))

    def exists(self, rel: str) -> bool:
        return os.path.isfile(os.path.join(self.base, *rel.split("/")))

    def read(self, rel: str) -> bytes:
        path = os.path.join(self.base, *rel.split("/"))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Expected the image file {path}. Received: no such file")
        with open(path, "rb") as f:
            return f.read()

    def close(self):
        pass


class _ZipSource:
    def __init__(self, path: str):
        self.zip = zipfile.ZipFile(path)
        self.where = path
        self.names = {n for n in self.zip.namelist() if not n.endswith("/")}
        self.prefix = None
        for n in sorted(self.names, key=lambda s: (s.count("/"), s)):
            if n.startswith("__MACOSX/"):
                continue
            parts = n.split("/")
            if len(parts) >= 2 and parts[-1] == LABELS_FILE and _RUN_DIR.match(parts[-2]):
                self.prefix = "/".join(parts[:-2])
                self.prefix = self.prefix + "/" if self.prefix else ""
                break

    def runs(self) -> list[str]:
        if self.prefix is None:
            return []
        found = set()
        for n in self.names:
            if n.startswith(self.prefix):
                parts = n[len(self.prefix):].split("/")
                if len(parts) == 2 and parts[1] == LABELS_FILE and _RUN_DIR.match(parts[0]):
                    found.add(parts[0])
        return sorted(found)

    def exists(self, rel: str) -> bool:
        return (self.prefix or "") + rel in self.names

    def read(self, rel: str) -> bytes:
        name = (self.prefix or "") + rel
        if name not in self.names:
            raise FileNotFoundError(f"Expected {name} inside {self.where}. Received: no such member")
        return self.zip.read(name)

    def close(self):
        self.zip.close()


def _open_source(root):
    root = os.fspath(root)
    if os.path.isfile(root):
        if not zipfile.is_zipfile(root):
            raise ValueError(f"Expected root to be a directory or a zip archive. Received: root={root!r}")
        return _ZipSource(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            "Expected root to be all_runs/, its parent, or all_runs.zip. "
            f"Received: root={root!r} (no such path)"
        )
    candidates = [root, os.path.join(root, "all_runs")]
    for c in candidates:
        if os.path.isdir(c) and _DirSource(c).runs():
            return _DirSource(c)
    zipped = os.path.join(root, "all_runs.zip")
    if os.path.isfile(zipped):
        return _ZipSource(zipped)
    raise FileNotFoundError(
        "Expected root to be all_runs/ (holding runNN/class_labels.txt), its parent, or all_runs.zip. "
        f"Received: root={root!r}, where none of these was found"
    )


def _resolve(source, run: str, rel: str) -> str:
    """A path from class_labels.txt, relative to all_runs/ (or, leniently, to the run)."""
    rel = posixpath.normpath(rel.replace("\\", "/"))
    if source.exists(rel):
        return rel
    inside = posixpath.join(run, rel)
    if source.exists(inside):
        return inside
    raise FileNotFoundError(
        f"Expected the image {rel!r} listed in {run}/{LABELS_FILE} to exist in {source.where}. "
        "Received: no such file"
    )


def _read_run(source, run: str, image_size, dtype) -> LakeRun:
    text = source.read(f"{run}/{LABELS_FILE}").decode("utf-8-sig")
    pairs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(
                f"Expected lines '<test image> <training image>' in {run}/{LABELS_FILE}. "
                f"Received: line {lineno}: {line!r}"
            )
        pairs.append((_resolve(source, run, fields[0]), _resolve(source, run, fields[1])))
    if not pairs:
        raise ValueError(f"Expected at least one pair in {run}/{LABELS_FILE}. Received: an empty file")
    test_files = sorted(p[0] for p in pairs)
    if len(set(test_files)) != len(test_files):
        raise ValueError(
            f"Expected each test image once in {run}/{LABELS_FILE}. Received: repeated test images"
        )
    train_files = sorted({p[1] for p in pairs})
    if len(train_files) < 2:
        raise ValueError(
            f"Expected at least 2 training images in {run}/{LABELS_FILE}. Received: {len(train_files)}"
        )
    answer_of = dict(pairs)
    train_index = {f: i for i, f in enumerate(train_files)}
    answers = np.array([train_index[answer_of[f]] for f in test_files], dtype=np.int64)

    def load(files):
        return np.stack([preprocess_omniglot_image(source.read(f), image_size, dtype) for f in files])

    train, test = load(train_files), load(test_files)
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(
            f"Expected training and test images of one size in {run}. "
            f"Received: {train.shape[1:]} and {test.shape[1:]} (pass an image_size)"
        )
    return LakeRun(run, train, test, answers, tuple(train_files), tuple(test_files))


def load_lake_runs(root, image_size: int | None = 28, runs: Sequence[int] | None = None,
                   dtype: str = "float32") -> list[LakeRun]:
    """Read Lake's one-shot runs from ``root``: the ``all_runs/`` folder, its
    parent, an ``all_runs.zip`` in either, or the zip itself.

    Images are ``[n, image_size, image_size, 1]`` with strokes 1.0 and
    background 0.0 (see :func:`preprocess_omniglot_image`). ``runs`` keeps only
    the given run numbers (``[1, 2]`` for ``run01`` and ``run02``).

    >>> runs = load_lake_runs("all_runs", image_size=28)   # doctest: +SKIP
    >>> runs[0].train_images.shape, runs[0].answers[:3]   # doctest: +SKIP
    ((20, 28, 28, 1), array([11, 3, 0]))
    """
    image_size = _check_image_size(image_size)
    source = _open_source(root)
    try:
        names = source.runs()
        if not names:
            raise FileNotFoundError(
                f"Expected runNN/{LABELS_FILE} folders in {source.where}. Received: none found"
            )
        if runs is not None:
            wanted = {f"run{int(r):02d}" for r in runs}
            missing = sorted(wanted - set(names))
            if missing:
                raise ValueError(
                    f"Expected runs among {names}. Received: runs={list(runs)!r} ({missing} missing)"
                )
            names = [n for n in names if n in wanted]
        return [_read_run(source, n, image_size, dtype) for n in names]
    finally:
        source.close()
