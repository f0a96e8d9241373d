"""Where an experiment's tasks come from: samplers and model input per dataset.

``build_sources(config)`` turns the dataset fields of an
:class:`~metabridge.train.experiment.ExperimentConfig` into train and test
samplers plus a ``describe`` dict recorded with every result (which split,
which rotations, which seed), so a number is never separated from the data
protocol that produced it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metabridge.data import (
    EpisodeSampler,
    FastEpisodeSampler,
    MiniImageNet,
    Omniglot,
    PairSampler,
    SinusoidTasks,
    WithinAlphabetEpisodeSampler,
    load_digits,
    omniglot_split,
)


@dataclass
class Sources:
    """Samplers of one experiment. ``train`` yields meta-batches (or pairs for
    Siamese: ``train_pairs``); ``test`` yields evaluation episodes."""

    input_shape: tuple
    train: Any = None
    train_pairs: PairSampler | None = None
    test: Any = None
    val: Any = None
    describe: dict | None = None


def _need_data_dir(c) -> str:
    if not c.data_dir:
        raise ValueError(f"Expected --data-dir (the folder of the {c.dataset} files). Received: data_dir=None")
    return c.data_dir


def build_sources(c) -> Sources:
    """Samplers for a resolved config (``c.dataset`` in sinusoid, digits, omniglot, miniimagenet)."""
    siamese = c.algo == "siamese"
    if c.dataset == "sinusoid":
        return Sources((1,), train=SinusoidTasks(c.shots, c.queries, c.seed, dtype=c.floatx),
                       test=SinusoidTasks(c.test_shots, c.queries, c.seed + 1, dtype=c.floatx),
                       describe={"dataset": "sinusoid", "amplitude": [0.1, 5.0], "phase": [0, 3.14159],
                                 "x": [-5.0, 5.0]})
    if c.dataset == "digits":
        train, test = load_digits("train", dtype=c.floatx), load_digits("test", dtype=c.floatx)
        describe = {"dataset": "digits", "train_classes": [0, 1, 2, 3, 4], "test_classes": [5, 6, 7, 8, 9]}
        return _class_sources(c, train, test, (8, 8, 1), describe, siamese)
    if c.dataset == "omniglot":
        return _omniglot_sources(c, siamese)
    if c.dataset == "miniimagenet":
        root = _need_data_dir(c)
        train = MiniImageNet(root, "train", image_size=c.image_size or 84)
        test = MiniImageNet(root, "test", image_size=c.image_size or 84)
        describe = {"dataset": "miniimagenet", "split": "ravi-larochelle", "image_size": c.image_size or 84}
        return _class_sources(c, train, test, tuple(train.x.shape[1:]), describe, siamese)
    raise ValueError(f"Expected a known dataset. Received: dataset={c.dataset!r}")


def _class_sources(c, train, test, input_shape, describe, siamese) -> Sources:
    test_sampler = EpisodeSampler(test, c.test_ways, c.test_shots if not siamese else 1, c.queries, seed=c.seed + 1)
    if siamese:
        return Sources(input_shape, train_pairs=PairSampler(train, c.meta_batch, c.seed), test=test_sampler,
                       describe=describe)
    return Sources(input_shape, train=EpisodeSampler(train, c.ways, c.shots, c.queries, c.seed),
                   test=test_sampler, describe=describe)


def _omniglot_sources(c, siamese: bool) -> Sources:
    """MAML family: the chosen split's train/test parts with the chosen rotations.
    Siamese (Koch et al.): pairs from Lake's background set, N-way one-shot
    episodes within one alphabet of the evaluation set."""
    root = _need_data_dir(c)
    size = c.image_size or 28
    load = {"image_size": size, "download": c.download}
    if siamese:
        background = Omniglot(root, "background", **load)
        evaluation = Omniglot(root, "evaluation", **load)
        test = WithinAlphabetEpisodeSampler.from_dataset(evaluation, c.test_ways, 1, 1, seed=c.seed + 1)
        describe = {"dataset": "omniglot", "split": "lake", "train": "background (pairs)",
                    "test": "evaluation, within-alphabet one-shot", "rotations": "none", "image_size": size}
        return Sources((size, size, 1), train_pairs=PairSampler(background, c.meta_batch, c.seed), test=test,
                       describe=describe)
    data = Omniglot(root, "all" if c.split == "vinyals" else "background", **load)
    train = omniglot_split(data, c.split, "train", rotations=c.rotations)
    if c.split == "lake":
        data = Omniglot(root, "evaluation", **load)
    test = omniglot_split(data, c.split, "test", rotations=c.rotations)
    describe = {"train": train.describe(), "test": test.describe(), "image_size": size}
    val = None
    if c.split == "vinyals":  # Lake's split has no validation characters
        val_part = omniglot_split(data, c.split, "val", rotations=c.rotations)
        val = FastEpisodeSampler(val_part, c.test_ways, c.test_shots, c.queries, seed=c.seed + 2)
    return Sources((size, size, 1), train=FastEpisodeSampler(train, c.ways, c.shots, c.queries, c.seed),
                   test=FastEpisodeSampler(test, c.test_ways, c.test_shots, c.queries, seed=c.seed + 1),
                   val=val, describe=describe)
