"""Omniglot shipped inside the package: all 32,460 images at 28x28, no download (numpy only).

>>> ds = load_embedded_omniglot("evaluation")
>>> ds.images.shape, ds.images.dtype, ds.num_classes, len(ds.alphabets)
((13180, 28, 28, 1), dtype('float32'), 659, 20)
>>> from metabridge.data.omniglot_splits import omniglot_split            # doctest: +SKIP
>>> test = omniglot_split(ds, split="lake", part="test")                 # doctest: +SKIP

The object returned is an :class:`~metabridge.data.omniglot.Omniglot` (a subclass
of it, :class:`EmbeddedOmniglot`) with the same attributes — ``x``/``images``,
``y``/``character`` (global character index 0..1622), ``alphabet``,
``alphabet_index``, ``alphabets``, ``character_number``, ``character_id``,
``drawer``, ``subset_of``, ``file`` — so ``omniglot_split`` and the
within-alphabet episode sampler take it as they take one loaded from the archives.

The images are **identical** (float32, bit for bit) to
``Omniglot(root, subset, image_size=28)`` on the official archives: Pillow's
LANCZOS resize yields 8-bit grey levels ``g`` and the loader returns
``1 - g / 255``; the file stores ``255 - g`` as ``uint8`` and this module applies
the same float32 formula. The file, ``embedded/omniglot28.npz`` (6.5 MB), is
written reproducibly by ``tools/make_embedded_omniglot.py`` from the archives;
loading it takes 0.3-0.5 s. Omniglot: MIT licence, (c) 2015 Brenden Lake; cite
Lake, Salakhutdinov & Tenenbaum (2015), Science 350(6266):1332-1338
(see ``embedded/LICENSE-omniglot.txt``).
"""
from __future__ import annotations

import os

import numpy as np

from metabridge.data.episodes import ArrayDataset
from metabridge.data.omniglot import OMNIGLOT_SUBSETS, Omniglot

__all__ = ["load_embedded_omniglot", "EmbeddedOmniglot", "EMBEDDED_OMNIGLOT_PATH",
           "EMBEDDED_OMNIGLOT_LICENSE"]

#: The shipped file.
EMBEDDED_OMNIGLOT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded", "omniglot28.npz")
#: Omniglot's licence and citation, shipped beside it.
EMBEDDED_OMNIGLOT_LICENSE = os.path.join(os.path.dirname(EMBEDDED_OMNIGLOT_PATH), "LICENSE-omniglot.txt")
_FORMAT_VERSION = 1
_SUBSETS = ("background", "evaluation")
_DTYPES = ("float32", "float64", "uint8")
_MEMBERS = ("images", "alphabet_index", "character_number", "character_id", "drawer",
            "alphabet_names", "alphabet_subset", "format_version")


def _read(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Expected the embedded Omniglot file at {path}. Received: no such file — rebuild it with "
            "`python tools/make_embedded_omniglot.py` or reinstall metabridge"
        )
    with np.load(path, allow_pickle=False) as z:
        missing = [m for m in _MEMBERS if m not in z.files]
        if missing:
            raise ValueError(f"Expected members {list(_MEMBERS)} in {path}. Received: {missing} missing")
        arrays = {m: z[m] for m in _MEMBERS}
    if int(arrays["format_version"]) != _FORMAT_VERSION:
        raise ValueError(f"Expected format_version {_FORMAT_VERSION} in {path}. "
                         f"Received: {int(arrays['format_version'])}")
    return arrays


def _to_float(ink: np.ndarray, dtype: str) -> np.ndarray:
    """``uint8`` ink -> strokes 1.0, background 0.0, computed as the archive loader does."""
    # the loader: 1 - g / 255 in float32 with g = 255 - ink; a table gives the same values faster
    grey = np.arange(255, -1, -1, dtype=np.float32)          # g for ink = 0..255
    table = np.float32(1.0) - grey / np.float32(255.0)
    return table.astype(dtype)[ink]


class EmbeddedOmniglot(Omniglot):
    """Omniglot read from the package's embedded copy; see :func:`load_embedded_omniglot`."""

    def __init__(self, subset: str = "background", dtype: str = "float32", path: str | None = None):
        if subset not in OMNIGLOT_SUBSETS:
            raise ValueError(f"Expected subset in {OMNIGLOT_SUBSETS}. Received: subset={subset!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"Expected dtype in {_DTYPES}. Received: dtype={dtype!r}")
        path = os.fspath(path) if path is not None else EMBEDDED_OMNIGLOT_PATH
        a = _read(path)
        names = a["alphabet_names"]
        subset_of_image = np.asarray(_SUBSETS)[a["alphabet_subset"][a["alphabet_index"]]]
        rows = (slice(None) if subset == "all"
                else np.flatnonzero(subset_of_image == subset))
        ink = a["images"][rows]
        images = ink[..., None] if dtype == "uint8" else _to_float(ink[..., None], dtype)

        self.root, self.subset, self.image_size = os.path.dirname(path), subset, int(ink.shape[1])
        self.path, self.sources, self._cache_files = path, (path,), ()
        self.subset_of = subset_of_image[rows]
        self.alphabet = names[a["alphabet_index"][rows]]
        self.character_id = a["character_id"][rows].astype(np.int32)
        self.character_number = a["character_number"][rows].astype(np.int16)
        self.drawer = a["drawer"][rows].astype(np.int16)
        self.file = np.array([f"images_{s}/{al}/character{n:02d}/{i:04d}_{d:02d}.png" for s, al, n, i, d
                              in zip(self.subset_of, self.alphabet, self.character_number,
                                     self.character_id, self.drawer)], dtype=str)
        present = np.unique(a["alphabet_index"][rows])  # file order = order of first character id
        self.alphabets = tuple(str(names[i]) for i in present)
        lookup = np.full(len(names), -1, dtype=np.int32)
        lookup[present] = np.arange(len(present), dtype=np.int32)
        self.alphabet_index = lookup[a["alphabet_index"][rows]]
        y = self.character_id.astype(np.int64) - 1
        ArrayDataset.__init__(self, images, y, name=f"omniglot-{subset}-{self.image_size}px-embedded")

    def describe(self) -> dict:
        return {**super().describe(), "dataset": "omniglot", "source": "embedded",
                "resize": "PIL LANCZOS (precomputed, 8-bit exact)", "sources": [self.path]}

    def __repr__(self) -> str:
        return (f"EmbeddedOmniglot(subset={self.subset!r}, image_size={self.image_size}, images={len(self)}, "
                f"characters={self.num_classes}, alphabets={len(self.alphabets)})")


def load_embedded_omniglot(subset: str = "background", dtype: str = "float32",
                           path: str | None = None) -> EmbeddedOmniglot:
    """Omniglot at 28x28 from the copy inside the package (no download, no Pillow).

    ``subset``: ``"background"`` (30 alphabets, 964 characters, 19,280 images),
    ``"evaluation"`` (20 alphabets, 659 characters, 13,180 images) or ``"all"``.
    ``dtype``: ``"float32"`` (strokes 1.0, background 0.0 — identical to
    ``Omniglot(root, subset, image_size=28)``), ``"float64"`` (the same values)
    or ``"uint8"`` (ink 0..255, 4x less memory). ``path``: another file in the
    same format (default :data:`EMBEDDED_OMNIGLOT_PATH`).

    >>> ds = load_embedded_omniglot("background")
    >>> len(ds), ds.num_classes, ds.alphabets[0]
    (19280, 964, 'Arcadian')
    """
    return EmbeddedOmniglot(subset=subset, dtype=dtype, path=path)
