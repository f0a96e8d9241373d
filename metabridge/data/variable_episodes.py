"""Variable-way, variable-shot episodes (Meta-Dataset style; Triantafillou et al., 2020).

Episode ``i`` of a :class:`VariableEpisodeSampler` with seed ``s`` uses
``numpy.random.default_rng([s, i])`` for, in this order: the number of ways
(uniform in ``[min_ways, max_ways]``), the classes (``rng.choice`` without
replacement), the shots of every class (uniform in ``[min_shots, max_shots]``,
one draw per class, or one per episode with ``vary_shots_per_class=False``),
then per class a random order of its examples (``rng.permutation``) whose first
``shots`` are support and next ``queries`` are query. A class with fewer than
``shots + queries`` examples gives ``len - queries`` shots (so every class
keeps ``queries`` query examples, as Meta-Dataset keeps the query set balanced).

Episodes differ in size, so :meth:`VariableEpisodeSampler.batch` returns a list
of :class:`Episode` rather than a stacked ``TaskBatch``. Support and query are
class-major with labels ``0..ways-1``; ``np.bincount(ep.support_y)`` gives the
shots of each class.

>>> s = VariableEpisodeSampler(ds, min_ways=5, max_ways=20, min_shots=1, max_shots=10,
...                            queries=5, seed=0)                      # doctest: +SKIP
>>> [len(np.unique(e.support_y)) for e in s.batch(0, 4)]            # doctest: +SKIP
[17, 6, 12, 9]
"""
from __future__ import annotations

import numpy as np

from metabridge.data.episodes import ArrayDataset, Episode
from metabridge.data.episodes import _check_int as check_int

__all__ = ["VariableEpisodeSampler"]


class VariableEpisodeSampler:
    """Episodes with a random number of ways and of shots per class (see the module doc)."""

    def __init__(self, dataset: ArrayDataset, min_ways: int, max_ways: int, min_shots: int, max_shots: int,
                 queries: int, seed: int = 0, vary_shots_per_class: bool = True):
        self.min_ways = check_int("min_ways", min_ways, 2)
        self.max_ways = check_int("max_ways", max_ways, self.min_ways)
        self.min_shots = check_int("min_shots", min_shots, 1)
        self.max_shots = check_int("max_shots", max_shots, self.min_shots)
        self.queries = check_int("queries", queries, 1)
        self.seed = check_int("seed", seed, 0)
        self.vary_shots_per_class = bool(vary_shots_per_class)
        if self.max_ways > dataset.num_classes:
            raise ValueError(f"Expected max_ways <= {dataset.num_classes} (classes available in {dataset.name}). "
                             f"Received: max_ways={max_ways}")
        per_class = dataset.min_examples_per_class()
        if self.min_shots + self.queries > per_class:
            raise ValueError(f"Expected min_shots + queries <= {per_class} (examples of the smallest class in "
                             f"{dataset.name}). Received: min_shots={min_shots}, queries={queries}")
        self.dataset = dataset

    def episode(self, index: int) -> Episode:
        """Episode ``index``: a pure function of ``(seed, index)``."""
        index = check_int("index", index, 0)
        rng = np.random.default_rng([self.seed, index])
        ds, q = self.dataset, self.queries
        ways = int(rng.integers(self.min_ways, self.max_ways + 1))
        chosen = rng.choice(ds.num_classes, size=ways, replace=False)
        if self.vary_shots_per_class:
            shots = rng.integers(self.min_shots, self.max_shots + 1, size=ways)
        else:
            shots = np.full(ways, rng.integers(self.min_shots, self.max_shots + 1))
        support, query, counts = [], [], []
        for c, k in zip(chosen, shots):
            pool = ds.indices_by_class[c]
            k = int(min(k, len(pool) - q))
            picked = pool[rng.permutation(len(pool))[:k + q]]
            support.append(picked[:k])
            query.append(picked[k:])
            counts.append(k)
        labels = np.arange(ways)
        return Episode(ds.x[np.concatenate(support)], np.repeat(labels, counts),
                       ds.x[np.concatenate(query)], np.repeat(labels, q))

    def batch(self, step: int, meta_batch: int) -> list[Episode]:
        """Episodes ``step * meta_batch ... + meta_batch - 1`` as a list (their sizes differ)."""
        meta_batch = check_int("meta_batch", meta_batch, 1)
        start = check_int("step", step, 0) * meta_batch
        return [self.episode(start + j) for j in range(meta_batch)]
