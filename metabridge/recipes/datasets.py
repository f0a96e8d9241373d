"""The built-in data sets: sinusoid regression, scikit-learn's digits, Omniglot,
miniImageNet, your own image folders, CIFAR-FS, FC100, tieredImageNet and CUB.

Each is a :class:`~metabridge.recipes.registry.DatasetRecipe`: how to build
its samplers from a resolved config, the network algorithms use on it, and
its defaults.
"""
from __future__ import annotations

import numpy as np

from metabridge.data import (
    CUB,
    FC100,
    CifarFS,
    EpisodeSampler,
    FastEpisodeSampler,
    ImageFolder,
    MiniImageNet,
    Omniglot,
    PairSampler,
    SinusoidTasks,
    TieredImageNet,
    WithinAlphabetEpisodeSampler,
    load_digits,
    load_embedded_omniglot,
    omniglot_split,
)
from metabridge.nn import MLP, Conv4
from metabridge.recipes.registry import DatasetRecipe, Sources, register_dataset

# Few-shot classification defaults: 1-shot, 5 queries per class, MAML's inner step size.
_CLASSIFICATION = {"steps": 1000, "meta_batch": 8, "shots": 1, "queries": 5, "inner_lr": 0.4, "rotations": "none"}


def _need_data_dir(c) -> str:
    if not c.data_dir:
        raise ValueError(f"Expected --data-dir (the folder of the {c.dataset} files). Received: data_dir=None")
    return c.data_dir


def _class_sources(c, train, test, input_shape, describe, trains_on: str) -> Sources:
    """Episodes (or pairs) from a train part, N-way episodes from a test part."""
    pairs = trains_on == "pairs"
    test_sampler = EpisodeSampler(test, c.test_ways, 1 if pairs else c.test_shots, c.queries, seed=c.seed + 1)
    train_sampler = (PairSampler(train, c.meta_batch, c.seed, augment=c.augment,
                                 all_pairs=c.siamese_pairs == "all-in-batch") if pairs
                     else EpisodeSampler(train, c.ways, c.shots, c.queries, c.seed))
    return Sources(input_shape, train=train_sampler, test=test_sampler, describe=describe)


# ---- sinusoid ------------------------------------------------------------------------------------
def sinusoid_sources(c, trains_on: str) -> Sources:
    """MAML's sinusoid regression tasks (amplitude 0.1–5, phase 0–π, x in [-5, 5])."""
    return Sources((1,), train=SinusoidTasks(c.shots, c.queries, c.seed, dtype=c.floatx),
                   test=SinusoidTasks(c.test_shots, c.queries, c.seed + 1, dtype=c.floatx),
                   describe={"dataset": c.dataset, "amplitude": [0.1, 5.0], "phase": [0, 3.14159],
                             "x": [-5.0, 5.0]})


def sinusoid_backbone(input_shape: tuple, out_features: int | None):
    """MAML's regression network: 1-40-40-1."""
    return MLP([1, 40, 40, 1])


# ---- digits --------------------------------------------------------------------------------------
def digits_sources(c, trains_on: str) -> Sources:
    """scikit-learn's 8×8 digits: classes 0–4 train, 5–9 test."""
    train, test = load_digits("train", dtype=c.floatx), load_digits("test", dtype=c.floatx)
    describe = {"dataset": c.dataset, "train_classes": [0, 1, 2, 3, 4], "test_classes": [5, 6, 7, 8, 9]}
    return _class_sources(c, train, test, (8, 8, 1), describe, trains_on)


def digits_backbone(input_shape: tuple, out_features: int | None):
    """An MLP on the 64 flattened pixels (64-64-64, plus a head of ``out_features``)."""
    return MLP([64, 64, 64] + ([out_features] if out_features is not None else []))


# ---- Omniglot ------------------------------------------------------------------------------------
def _omniglot(c, subset: str):
    """Omniglot's ``subset`` from the archives in ``--data-dir``, or else from the
    28×28 copy embedded in the package (identical images, see ``tools/make_embedded_omniglot.py``)."""
    size = c.image_size or 28
    if c.data_dir:
        return Omniglot(c.data_dir, subset, image_size=size, download=c.download)
    if size != 28 or c.download:
        raise ValueError(f"Expected --data-dir (the folder of the {c.dataset} archives) for image_size {size}"
                         f"{' or --download' if c.download else ''}: the embedded copy is 28x28. "
                         "Received: data_dir=None")
    return load_embedded_omniglot(subset)


def koch_alphabet_split(alphabets, val_alphabets: int = 10) -> tuple[list, list]:
    """``(validation, test)`` alphabets of Omniglot's evaluation set for Siamese
    runs (Koch et al. validated on 10 of its 20 alphabets and tested on the
    other 10): in name order, the alphabets at even positions validate, then
    those at odd positions, until ``val_alphabets`` are taken (at most half of
    them); the rest test.

    >>> val, test = koch_alphabet_split(load_embedded_omniglot("evaluation").alphabets)  # doctest: +SKIP
    >>> val[:2], test[:2]                                                              # doctest: +SKIP
    (['Angelic', 'Atlantean'], ['Atemayar_Qelisayer', 'Aurek-Besh'])
    """
    names = sorted({str(a) for a in alphabets})
    order = names[0::2] + names[1::2]
    val = set(order[:min(val_alphabets, len(names) // 2)])  # at most half: some always test
    return [a for a in names if a in val], [a for a in names if a not in val]


def _within_alphabet(data, alphabets, ways: int, seed: int):
    keep = np.isin(data.alphabet, list(alphabets))
    return WithinAlphabetEpisodeSampler(data.x[keep], data.y[keep], data.alphabet[keep], ways, 1, 1, seed=seed,
                                        drawer_ids=data.drawer[keep])


def omniglot_sources(c, trains_on: str) -> Sources:
    """Episodes: the chosen split's train/test (and val) parts with the chosen
    rotations. Pairs (Koch et al.): balanced pairs from Lake's background set
    (``within_alphabet`` of the different ones from one alphabet, Koch's
    distortions with ``augment``); 20-way within-alphabet one-shot episodes of
    the evaluation set, ``val_alphabets`` of its alphabets validating and the
    others testing (:func:`koch_alphabet_split`). Without ``--data-dir`` the
    images come from the copy embedded in the package."""
    size = c.image_size or 28
    if trains_on == "pairs":
        background = _omniglot(c, "background")
        evaluation = _omniglot(c, "evaluation")
        val_names, test_names = koch_alphabet_split(evaluation.alphabet, c.val_alphabets)
        test = _within_alphabet(evaluation, test_names, c.test_ways, c.seed + 1)
        val = _within_alphabet(evaluation, val_names, c.test_ways, c.seed + 2) if val_names else None
        describe = {"dataset": c.dataset, "split": "lake", "train": "background (pairs)",
                    "within_alphabet": c.within_alphabet, "alphabet_group": c.alphabet_group, "augment": c.augment,
                    "pairs": c.siamese_pairs,
                    "test": "evaluation, within-alphabet one-shot", "test_alphabets": test_names,
                    "val_alphabets": val_names, "rotations": "none", "image_size": size,
                    "source": "archives" if c.data_dir else "embedded"}
        pairs = PairSampler(background, c.meta_batch, c.seed, within_alphabet=c.within_alphabet,
                            augment=c.augment, alphabet_ids=background.alphabet, alphabet_group=c.alphabet_group,
                            all_pairs=c.siamese_pairs == "all-in-batch")
        return Sources((size, size, 1), train=pairs, test=test, val=val, describe=describe)
    data = _omniglot(c, "all" if c.split == "vinyals" else "background")
    train = omniglot_split(data, c.split, "train", rotations=c.rotations)
    if c.split == "lake":
        data = _omniglot(c, "evaluation")
    test = omniglot_split(data, c.split, "test", rotations=c.rotations)
    describe = {"train": train.describe(), "test": test.describe(), "image_size": size,
                "source": "archives" if c.data_dir else "embedded"}
    val = None
    if c.split == "vinyals":  # Lake's split has no validation characters
        val_part = omniglot_split(data, c.split, "val", rotations=c.rotations)
        val = FastEpisodeSampler(val_part, c.test_ways, c.test_shots, c.queries, seed=c.seed + 2)
    return Sources((size, size, 1), train=FastEpisodeSampler(train, c.ways, c.shots, c.queries, c.seed),
                   test=FastEpisodeSampler(test, c.test_ways, c.test_shots, c.queries, seed=c.seed + 1),
                   val=val, describe=describe)


def omniglot_backbone(input_shape: tuple, out_features: int | None):
    """Conv4 with 64 channels: strided, with a head, as MAML used it on Omniglot;
    with max-pooling and no head as an embedding (Prototypical and Matching networks)."""
    if out_features is None:
        return Conv4(None, input_shape=input_shape, channels=64)
    return Conv4(out_features, input_shape=input_shape, channels=64, strided=True)


# ---- miniImageNet --------------------------------------------------------------------------------
def miniimagenet_sources(c, trains_on: str) -> Sources:
    """Ravi & Larochelle's split of miniImageNet (64 train / 20 test classes used here)."""
    root = _need_data_dir(c)
    train = MiniImageNet(root, "train", image_size=c.image_size or 84, allow_pickle=c.allow_pickle)
    test = MiniImageNet(root, "test", image_size=c.image_size or 84, allow_pickle=c.allow_pickle)
    describe = {"dataset": c.dataset, "split": "ravi-larochelle", "image_size": c.image_size or 84}
    return _class_sources(c, train, test, tuple(train.x.shape[1:]), describe, trains_on)


def miniimagenet_backbone(input_shape: tuple, out_features: int | None):
    """Conv4: 32 channels with a head (MAML's choice on miniImageNet), 64 as an embedding."""
    if out_features is None:
        return Conv4(None, input_shape=input_shape, channels=64)
    return Conv4(out_features, input_shape=input_shape, channels=32, strided=False)


SINUSOID = register_dataset(DatasetRecipe(
    "sinusoid", sinusoid_sources, sinusoid_backbone, task="regression",
    defaults={"steps": 300, "meta_batch": 25, "shots": 10, "queries": 10, "inner_lr": 0.01, "rotations": "none"},
    description="MAML's sinusoid regression tasks"))
DIGITS = register_dataset(DatasetRecipe(
    "digits", digits_sources, digits_backbone, defaults={**_CLASSIFICATION, "steps": 200},
    description="scikit-learn's 8x8 digits (0-4 train, 5-9 test), shipped with scikit-learn"))
OMNIGLOT = register_dataset(DatasetRecipe(
    "omniglot", omniglot_sources, omniglot_backbone, defaults=dict(_CLASSIFICATION),
    description="Omniglot: the embedded 28x28 copy, or the official archives (--data-dir, --download)"))
MINIIMAGENET = register_dataset(DatasetRecipe(
    "miniimagenet", miniimagenet_sources, miniimagenet_backbone, defaults=dict(_CLASSIFICATION),
    description="miniImageNet, Ravi & Larochelle's split (--data-dir)"))


# ---- image data sets with train / val / test class splits -----------------------------------------
def _split_sources(c, trains_on: str, make, describe: dict) -> Sources:
    """Samplers over ``make(split)`` for the train, val and test class splits:
    vectorised episodes (or pairs), validation on the val classes."""
    train, val, test = make("train"), make("val"), make("test")
    shape = tuple(train.x.shape[1:])
    pairs = trains_on == "pairs"
    train_sampler = (PairSampler(train, c.meta_batch, c.seed, augment=c.augment,
                                 all_pairs=c.siamese_pairs == "all-in-batch") if pairs
                     else FastEpisodeSampler(train, c.ways, c.shots, c.queries, c.seed))
    shots = 1 if pairs else c.test_shots
    return Sources(shape, train=train_sampler,
                   test=FastEpisodeSampler(test, c.test_ways, shots, c.queries, seed=c.seed + 1),
                   val=FastEpisodeSampler(val, c.test_ways, shots, c.queries, seed=c.seed + 2),
                   describe={**describe, "classes": [train.num_classes, val.num_classes, test.num_classes]})


def folder_sources(c, trains_on: str) -> Sources:
    """Your own images, one folder per class under ``--data-dir``; classes split by
    ``--split-file`` or by a seeded 64/16/20 rule (the seed is the run's)."""
    root = _need_data_dir(c)
    size = c.image_size or 84

    def make(split):
        return ImageFolder(root, image_size=size, split=split, split_file=c.split_file, seed=c.seed,
                           dtype=c.floatx)
    return _split_sources(c, trains_on, make, {"dataset": c.dataset, "root": root, "image_size": size,
                                               "split_file": c.split_file})


def _cifar(kind):
    def sources(c, trains_on: str) -> Sources:
        root = _need_data_dir(c)
        size = c.image_size or 32

        def make(split):
            return kind(root, split, image_size=size, dtype=c.floatx, allow_pickle=c.allow_pickle,
                        download=c.download)
        return _split_sources(c, trains_on, make, {"dataset": c.dataset, "image_size": size})
    return sources


def tiered_sources(c, trains_on: str) -> Sources:
    """tieredImageNet in Ren et al.'s pickle or npz form (pickles need --allow-pickle)."""
    root, size = _need_data_dir(c), c.image_size or 84
    return _split_sources(c, trains_on, lambda split: TieredImageNet(root, split, image_size=size, dtype=c.floatx,
                                                                      allow_pickle=c.allow_pickle),
                          {"dataset": c.dataset, "image_size": size})


def cub_sources(c, trains_on: str) -> Sources:
    """CUB-200-2011, the 100/50/50 class split of Chen et al. (2019)."""
    root, size = _need_data_dir(c), c.image_size or 84
    return _split_sources(c, trains_on, lambda split: CUB(root, split, image_size=size, dtype=c.floatx),
                          {"dataset": c.dataset, "image_size": size, "split": "chen-2019"})


FOLDER = register_dataset(DatasetRecipe(
    "folder", folder_sources, miniimagenet_backbone, defaults=dict(_CLASSIFICATION),
    description="your own images, one folder per class (--data-dir, --split-file, --image-size)"))
CIFAR_FS = register_dataset(DatasetRecipe(
    "cifar-fs", _cifar(CifarFS), miniimagenet_backbone, defaults=dict(_CLASSIFICATION),
    description="CIFAR-FS (Bertinetto et al. 2019) from the CIFAR-100 python archive"))
FC100_DATA = register_dataset(DatasetRecipe(
    "fc100", _cifar(FC100), miniimagenet_backbone, defaults=dict(_CLASSIFICATION),
    description="FC100 (Oreshkin et al. 2018) from the CIFAR-100 python archive"))
TIERED = register_dataset(DatasetRecipe(
    "tiered-imagenet", tiered_sources, miniimagenet_backbone, defaults=dict(_CLASSIFICATION),
    description="tieredImageNet (Ren et al. 2018), pickle or npz files"))
CUB_DATA = register_dataset(DatasetRecipe(
    "cub", cub_sources, miniimagenet_backbone, defaults=dict(_CLASSIFICATION),
    description="CUB-200-2011 birds, 100/50/50 classes"))
