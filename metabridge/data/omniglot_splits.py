"""The Omniglot splits of the literature and their rotations.

>>> train = omniglot_split(ds, split="vinyals", part="train", rotations="classes")  # doctest: +SKIP
>>> train.describe()            # record this with every result               # doctest: +SKIP
{'dataset': 'omniglot', 'split': 'vinyals', 'part': 'train', 'rotations': 'classes', 'seed': 1, ...}
>>> sampler = FastEpisodeSampler(train, ways=5, shots=1, queries=15, seed=0)    # doctest: +SKIP
>>> for batch in sampler.prefetch(range(1000), meta_batch=32): ...             # doctest: +SKIP

Splits
    ``"lake"``: Lake et al.'s own split, by alphabet: ``images_background``
    (30 alphabets, 964 characters) is ``train``, ``images_evaluation`` (20
    alphabets, 659 characters) is ``test``; there is no ``val`` part
    (``trainval`` is ``train``). The split is fixed: ``seed`` is not used and is
    recorded as ``None``.

    ``"vinyals"``: the split of Matching networks, MAML and Prototypical
    networks: all 1623 characters, taken in global id order (``IIII`` of the file
    names), are shuffled by ``numpy.random.default_rng(seed).permutation`` with
    ``seed=VINYALS_SEED`` (= 1) unless another seed is given, then cut into
    1100 ``train``, 100 ``val`` and 423 ``test`` characters (``trainval`` = the
    1200 of train + val). Alphabets are mixed across parts, as in those papers.
    The membership is not the one of any one paper's code (MAML's shuffle ran
    over ``os.listdir`` order, which differs between machines), but it is the same
    on every machine for a given seed.

Rotations
    ``"none"``: classes are characters.
    ``"classes"`` (Prototypical networks): each character rotated by 0, 90, 180
    and 270 degrees (``np.rot90``, counter-clockwise) is a class of its own, so
    there are 4x the classes. Rotated images are made on indexing (no 4x copy):
    example ``4 * j + k`` is image ``j`` of the part rotated by ``k * 90``, in class
    ``4 * c + k`` where ``c`` is the character's class.
    ``"per-task"`` (MAML): classes are characters; in every episode each class
    is rotated, all its images alike, by a random multiple of 90 degrees drawn from
    that episode's own generator. This is done by :class:`FastEpisodeSampler`
    (which reads ``dataset.rotate_per_task``): the plain ``EpisodeSampler`` does
    not rotate.

Sampler
    :class:`~metabridge.data.samplers.FastEpisodeSampler` is an :class:`EpisodeSampler` (same checks, same
    ``episode(i)``/``batch(step, meta_batch)``) whose episode ``i`` is still a pure
    function of ``(seed, i)`` through ``numpy.random.default_rng([seed, i])``, but
    drawn with vectorised index generation and built with one gather per
    meta-batch. Its episodes are a different (equally uniform) draw from the
    ones of ``EpisodeSampler`` with the same seed. ``prefetch`` builds the same
    batches on a background thread.
"""
from __future__ import annotations

import os

import numpy as np

from metabridge.data.episodes import ArrayDataset, _check_int
from metabridge.data.samplers import FastEpisodeSampler, rotate_groups

__all__ = ["omniglot_split", "OmniglotSplit", "RotatedImages",
           "OMNIGLOT_SPLITS", "OMNIGLOT_PARTS", "OMNIGLOT_ROTATIONS", "VINYALS_SEED", "VINYALS_SIZES"]

OMNIGLOT_SPLITS = ("lake", "vinyals")
OMNIGLOT_PARTS = ("train", "val", "test", "trainval")
OMNIGLOT_ROTATIONS = ("none", "classes", "per-task")
#: Seed of the character shuffle of the Vinyals split (MAML's code seeded its shuffle with 1).
VINYALS_SEED = 1
#: Characters in train / val / test of the Vinyals split.
VINYALS_SIZES = (1100, 100, 423)


class RotatedImages:
    """``base[rows[j]]`` rotated by ``k * 90`` degrees at index ``4 * j + k``, made on indexing.

    Indexing with an integer, a slice or an integer array returns a numpy array,
    like indexing the materialised ``[4 * len(rows), S, S, C]`` array would
    (``np.asarray(view)`` materialises it).
    """

    def __init__(self, base: np.ndarray, rows: np.ndarray):
        if base.ndim < 3 or base.shape[1] != base.shape[2]:
            raise ValueError(f"Expected square images [n, S, S, ...] to rotate. Received: shape={base.shape}")
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)
        self.shape = (4 * len(self.rows),) + tuple(base.shape[1:])
        self.dtype, self.ndim = base.dtype, base.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Expected integer indices. Received: {idx.dtype}")
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"Expected indices in [0, {len(self)}). Received: {idx.min()}..{idx.max()}")
        flat = idx.reshape(-1)
        out = self.base[self.rows[flat >> 2]]
        rotate_groups(out, flat & 3, axes=(1, 2))
        return out.reshape(idx.shape + self.shape[1:])

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RotatedImages(shape={self.shape}, dtype={self.dtype})"


class OmniglotSplit(ArrayDataset):
    """One part of an Omniglot split: an :class:`ArrayDataset` (``x``, ``y``, ``indices_by_class``).

    ``characters[c]`` is the global character index (0..1622) of class ``c``
    (of class ``4 * c + k`` with ``rotations="classes"``). ``describe()`` is the
    dict to record with any result computed on it.
    """

    def __init__(self, x, y: np.ndarray, indices_by_class: list, characters: np.ndarray, info: dict):
        # ArrayDataset.__init__ is skipped on purpose: x may be a lazy RotatedImages,
        # and the class grouping is known without scanning y once per class.
        self.x, self.y = x, y
        self.classes = np.arange(len(indices_by_class))
        self.indices_by_class = indices_by_class
        self.characters = characters
        self.info = info
        self.rotations = info["rotations"]
        self.rotate_per_task = info["rotations"] == "per-task"
        self.name = "omniglot/{split}/{part}/rotations={rotations}".format(**info)

    def describe(self) -> dict:
        """Split, part, rotations, seed and counts: what a result must record to be comparable."""
        return dict(self.info)

    def sampler(self, ways: int, shots: int, queries: int, seed: int = 0) -> "FastEpisodeSampler":
        """A :class:`FastEpisodeSampler` over this part (rotating per task when the split says so)."""
        return FastEpisodeSampler(self, ways, shots, queries, seed=seed)

    def __repr__(self) -> str:
        return (f"OmniglotSplit({self.info['split']!r}, part={self.info['part']!r}, "
                f"rotations={self.rotations!r}, classes={self.num_classes}, examples={len(self)})")


def _choose(name: str, value, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"Expected {name} in {allowed}. Received: {name}={value!r}")
    return value


def omniglot_split(dataset_or_root, split: str = "vinyals", part: str = "train",
                   rotations: str = "none", seed: int | None = None,
                   sizes: tuple[int, int, int] = VINYALS_SIZES, **load_kwargs) -> OmniglotSplit:
    """One part of one of the two standard Omniglot splits (see the module docstring).

    ``dataset_or_root``: an :class:`~metabridge.data.Omniglot` (the Vinyals
    split needs ``subset="all"``; the Lake split needs the subset of the part),
    or the folder of the archives, which is then loaded with ``load_kwargs``
    (``image_size``, ``download``, ``cache_dir``, ...). ``seed`` (Vinyals only,
    default :data:`VINYALS_SEED`) seeds the character shuffle; ``sizes`` are
    the train/val/test character counts (default 1100/100/423; they must add up
    to the number of characters, so a partial copy of Omniglot needs its own).
    """
    from metabridge.data.omniglot import Omniglot

    split = _choose("split", split, OMNIGLOT_SPLITS)
    part = _choose("part", part, OMNIGLOT_PARTS)
    rotations = _choose("rotations", rotations, OMNIGLOT_ROTATIONS)
    if split == "lake" and part == "val":
        raise ValueError(
            "Expected part in ('train', 'test', 'trainval') for the lake split: it has no validation "
            "part (background = train, evaluation = test). Received: part='val'. "
            "Use split='vinyals' for a validation part."
        )
    if split == "lake":
        seed = None
    else:
        seed = VINYALS_SEED if seed is None else _check_int("seed", seed, 0)
    if isinstance(dataset_or_root, (str, os.PathLike)):
        subset = "all" if split == "vinyals" else ("evaluation" if part == "test" else "background")
        ds = Omniglot(dataset_or_root, subset=subset, **load_kwargs)
    elif isinstance(dataset_or_root, Omniglot):
        if load_kwargs:
            raise ValueError("Expected no loading options with a loaded dataset. "
                             f"Received: {sorted(load_kwargs)}")
        ds = dataset_or_root
    else:
        raise TypeError(
            "Expected an Omniglot dataset or the folder of its archives. "
            f"Received: {type(dataset_or_root).__name__}"
        )

    chars = np.unique(ds.character)
    if split == "lake":
        want = "evaluation" if part == "test" else "background"
        part_chars = np.unique(ds.character[ds.subset_of == want])
        if len(part_chars) == 0:
            raise ValueError(
                f"Expected images_{want} in the dataset for the lake split's {part!r} part. "
                f"Received: Omniglot(subset={ds.subset!r}); load subset='all' or {want!r}"
            )
        cut = {}
    else:
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) != 3 or min(sizes) < 0 or sum(sizes) != len(chars):
            raise ValueError(
                f"Expected sizes (train, val, test) adding up to the {len(chars)} characters of the "
                f"dataset (Omniglot subset='all' has 1623: {VINYALS_SIZES}). Received: sizes={sizes}"
                + ("" if ds.subset == "all" else f" on Omniglot(subset={ds.subset!r}); load subset='all'")
            )
        shuffled = chars[np.random.default_rng(seed).permutation(len(chars))]
        n_train, n_val, _ = sizes
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
                  "test": (n_train + n_val, len(chars)), "trainval": (0, n_train + n_val)}[part]
        part_chars = np.sort(shuffled[bounds[0]:bounds[1]])
        if len(part_chars) == 0:
            raise ValueError(f"Expected characters in the {part!r} part. Received: sizes={sizes}")
        cut = {"sizes": list(sizes), "shuffle": f"numpy.random.default_rng({seed}).permutation over "
                                                "characters in global id order"}

    rows = np.flatnonzero(np.isin(ds.character, part_chars))  # (character, drawer) order
    y = np.searchsorted(part_chars, ds.character[rows]).astype(np.int64)
    order = np.argsort(y, kind="stable")
    bounds_ = np.cumsum(np.bincount(y, minlength=len(part_chars)))[:-1]
    by_class = np.split(order, bounds_)
    if rotations == "classes":
        x = RotatedImages(ds.images, rows)
        y = (4 * y[:, None] + np.arange(4)).reshape(-1)
        by_class = [4 * idx + k for idx in by_class for k in range(4)]
    else:
        if rows[-1] - rows[0] + 1 == len(rows):  # contiguous (lake parts): a view, no copy
            x = ds.images[rows[0]:rows[-1] + 1]
        else:
            x = ds.images[rows]
    info = {
        "dataset": "omniglot", "split": split, "part": part, "rotations": rotations, "seed": seed,
        "num_characters": int(len(part_chars)), "num_classes": int(len(by_class)),
        "num_examples": int(len(y)), "image_size": int(ds.image_size), "resize": "PIL LANCZOS",
        "num_alphabets": int(len(np.unique(ds.alphabet[rows]))), "omniglot_subset": ds.subset, **cut,
    }
    return OmniglotSplit(x, y, by_class, part_chars, info)
