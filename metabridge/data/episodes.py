"""What samplers produce and read (numpy only): episodes, meta-batches, pair
batches, and labelled arrays. The samplers are in :mod:`metabridge.data.samplers`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

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

class PairBatch(NamedTuple):
    """A batch of image pairs for Siamese training: ``x1[i]`` and ``x2[i]``
    show the same class when ``same[i] == 1.0`` (it unpacks like a tuple).

    >>> x1, x2, same = PairSampler(ds, 32).batch(0)        # doctest: +SKIP
    """

    x1: np.ndarray
    x2: np.ndarray
    same: np.ndarray


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
