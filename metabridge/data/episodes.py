"""Episodes, meta-batches and the samplers that make them (numpy only).

Episode ``i`` of a sampler with seed ``s`` is a pure function of ``(s, i)``:
its generator is ``numpy.random.default_rng([s, i])``. Resuming, prefetching
and sharding therefore see the same episodes as one uninterrupted process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Episode:
    """One task: support and query sets, labels remapped to ``0..ways-1``."""

    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch: the fields of :class:`Episode` stacked on a leading axis.

    >>> b = TaskBatch.stack([ep0, ep1])        # doctest: +SKIP
    >>> b.support_x.shape[0]                   # doctest: +SKIP
    2
    """

    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any

    def __post_init__(self):
        sizes = {}
        for name in ("support_x", "support_y", "query_x", "query_y"):
            shape = tuple(getattr(getattr(self, name), "shape", ()))
            if len(shape) < 2:
                raise ValueError(
                    f"Expected {name} with a leading meta-batch axis and an example axis "
                    f"(at least 2-D). Received: {name}.shape={shape}"
                )
            sizes[name] = shape
        if len({s[0] for s in sizes.values()}) != 1:
            raise ValueError(
                "Expected the same meta-batch size on every field. Received: "
                + ", ".join(f"{k}.shape={v}" for k, v in sizes.items())
            )
        for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
            if sizes[x][1] != sizes[y][1]:
                raise ValueError(
                    f"Expected as many {y} as {x} per task. "
                    f"Received: {x}.shape={sizes[x]}, {y}.shape={sizes[y]}"
                )
        for name in ("support_x", "query_x"):
            arr = getattr(self, name)
            if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ValueError(f"Expected finite values in {name}. Received: NaN or inf in {name}")

    @property
    def size(self) -> int:
        """Number of tasks in the meta-batch."""
        return int(self.support_x.shape[0])

    @staticmethod
    def stack(episodes: Sequence[Episode]) -> "TaskBatch":
        """Stack numpy episodes into a meta-batch."""
        if not episodes:
            raise ValueError("Expected at least one episode. Received: episodes=[]")
        return TaskBatch(*(np.stack([getattr(e, f) for e in episodes])
                           for f in ("support_x", "support_y", "query_x", "query_y")))

    def slice(self, start: int, stop: int) -> "TaskBatch":
        """Tasks ``start:stop`` (a worker's share of the meta-batch)."""
        return TaskBatch(self.support_x[start:stop], self.support_y[start:stop],
                         self.query_x[start:stop], self.query_y[start:stop])


class ArrayDataset:
    """Labelled examples in memory: ``x[i]`` has integer class ``y[i]``.

    >>> ds = ArrayDataset(np.zeros((4, 8, 8, 1)), np.array([0, 0, 1, 1]))
    >>> ds.num_classes
    2
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, name: str = "dataset"):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"Expected x [n, ...] and integer labels y [n]. Received: x.shape={x.shape}, y.shape={y.shape}"
            )
        if y.dtype.kind not in "iu":
            raise ValueError(f"Expected integer labels. Received: y.dtype={y.dtype}")
        self.x, self.y, self.name = x, y, name
        self.classes = np.unique(y)
        self.indices_by_class = [np.flatnonzero(y == c) for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def min_examples_per_class(self) -> int:
        return int(min(len(i) for i in self.indices_by_class))

    def __len__(self) -> int:
        return len(self.y)


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"Expected {name} >= {low}. Received: {name}={value!r}")
    return int(value)


class EpisodeSampler:
    """N-way K-shot episodes drawn from a labelled dataset.

    >>> sampler = EpisodeSampler(dataset, ways=5, shots=1, queries=15, seed=0)  # doctest: +SKIP
    >>> ep = sampler.episode(3)        # the same episode on every call and machine
    >>> batch = sampler.batch(step=0, meta_batch=32)
    """

    def __init__(self, dataset: ArrayDataset, ways: int, shots: int, queries: int, seed: int = 0):
        self.ways = _check_int("ways", ways, 2)
        self.shots = _check_int("shots", shots, 1)
        self.queries = _check_int("queries", queries, 1)
        self.seed = _check_int("seed", seed, 0)
        if ways > dataset.num_classes:
            raise ValueError(
                f"Expected ways <= {dataset.num_classes} (classes available in {dataset.name}). "
                f"Received: ways={ways}"
            )
        per_class = dataset.min_examples_per_class()
        if shots + queries > per_class:
            raise ValueError(
                f"Expected shots + queries <= {per_class} (examples of the smallest class in "
                f"{dataset.name}). Received: shots={shots}, queries={queries}"
            )
        self.dataset = dataset

    def episode(self, index: int) -> Episode:
        """Episode ``index``: a pure function of ``(seed, index)``."""
        index = _check_int("index", index, 0)
        rng = np.random.default_rng([self.seed, index])
        ds = self.dataset
        chosen = rng.choice(ds.num_classes, size=self.ways, replace=False)
        k, q = self.shots, self.queries
        support, query = [], []
        for c in chosen:
            pool = ds.indices_by_class[c]
            picked = pool[rng.choice(len(pool), size=k + q, replace=False)]
            support.append(picked[:k])
            query.append(picked[k:])
        s_idx, q_idx = np.concatenate(support), np.concatenate(query)
        labels = np.arange(self.ways)
        return Episode(ds.x[s_idx], np.repeat(labels, k), ds.x[q_idx], np.repeat(labels, q))

    def batch(self, step: int, meta_batch: int) -> TaskBatch:
        """Meta-batch ``step``: episodes ``step * meta_batch ... + meta_batch - 1``."""
        meta_batch = _check_int("meta_batch", meta_batch, 1)
        start = _check_int("step", step, 0) * meta_batch
        return TaskBatch.stack([self.episode(start + j) for j in range(meta_batch)])


class PairSampler:
    """Balanced batches of image pairs for Siamese training.

    Half the pairs share a class (target 1), half do not (target 0). Batch
    ``i`` is a pure function of ``(seed, i)``.

    >>> x1, x2, same = PairSampler(dataset, batch_size=32, seed=0).batch(0)  # doctest: +SKIP
    """

    def __init__(self, dataset: ArrayDataset, batch_size: int, seed: int = 0):
        self.batch_size = _check_int("batch_size", batch_size, 2)
        self.seed = _check_int("seed", seed, 0)
        if dataset.num_classes < 2:
            raise ValueError(f"Expected at least 2 classes for pairs. Received: {dataset.num_classes} class")
        if dataset.min_examples_per_class() < 2:
            raise ValueError(
                "Expected at least 2 examples per class for positive pairs. "
                f"Received: {dataset.min_examples_per_class()} in the smallest class"
            )
        self.dataset = dataset

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x1, x2, same)`` with ``same`` a float array of 1.0 / 0.0."""
        rng = np.random.default_rng([self.seed, _check_int("index", index, 0)])
        ds, n = self.dataset, self.batch_size
        n_pos = n // 2
        first, second = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        for j in range(n):
            c1 = rng.integers(ds.num_classes)
            if j < n_pos:
                a, b = rng.choice(ds.indices_by_class[c1], size=2, replace=False)
            else:
                c2 = (c1 + rng.integers(1, ds.num_classes)) % ds.num_classes
                a, b = rng.choice(ds.indices_by_class[c1]), rng.choice(ds.indices_by_class[c2])
            first[j], second[j] = a, b
        same = (np.arange(n) < n_pos).astype(ds.x.dtype if ds.x.dtype.kind == "f" else np.float32)
        return ds.x[first], ds.x[second], same
