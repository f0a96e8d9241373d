"""Samplers: where episodes and pairs come from (numpy only).

Episode ``i`` of a sampler with seed ``s`` is a pure function of ``(s, i)``:
its generator is ``numpy.random.default_rng([s, i])``. Resuming, prefetching
and sharding therefore see the same episodes as one uninterrupted process.

- :class:`EpisodeSampler`: N-way K-shot episodes from an :class:`ArrayDataset`.
- :class:`FastEpisodeSampler`: the same contract, vectorised, with prefetching
  (and Omniglot's per-task rotations).
- :class:`WithinAlphabetEpisodeSampler`: episodes whose classes share one
  alphabet (Lake et al. 2015; Koch et al. 2015).
- :class:`PairSampler`: balanced same/different pairs for Siamese training.

>>> sampler = EpisodeSampler(dataset, ways=5, shots=1, queries=15, seed=0)  # doctest: +SKIP
>>> batch = sampler.batch(step=0, meta_batch=32)                            # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

from metabridge.data.augment import koch_affine
from metabridge.data.episodes import ArrayDataset, Episode, PairBatch, TaskBatch, _check_int
from metabridge.data.prefetch import Prefetcher


def rotate_groups(arr: np.ndarray, rots: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    """Rotate ``arr[m]`` by ``r * 90`` degrees where ``rots[m] == r`` (in place; returns ``arr``)."""
    for r in (1, 2, 3):
        mask = rots == r
        if mask.any():
            arr[mask] = np.rot90(arr[mask], r, axes=axes)
    return arr


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

    ``within_alphabet`` (Koch et al. draw pairs within and across alphabets):
    the fraction of different-class pairs whose second class comes from the
    first one's alphabet (``alphabet_ids``: one id per image, default the
    dataset's ``alphabet`` attribute); the others come from any other class.
    Such negatives are the hard ones one-shot episodes within an alphabet ask
    about. ``augment``: both images of every pair get Koch et al.'s affine
    distortion, :func:`metabridge.data.augment.koch_affine` with seed
    ``seed + 1000`` and the batch index (so draws never reuse the pairs' numbers).
    With the defaults (0.0, False) batches are those of earlier versions.

    ``all_pairs=True``: ``batch_size`` distinct classes, two distinct examples
    of each, ``x1[j]`` and ``x2[j]`` of class ``j`` (``same`` all 1): the caller
    pairs every ``x1[i]`` with every ``x2[j]``, the ``j != i`` pairs being the
    different ones (:class:`~metabridge.algorithms.Siamese` with
    ``pairs="all-in-batch"``). With ``within_alphabet > 0`` the classes come in
    groups of ``alphabet_group`` (default 8) from one alphabet each, so many
    different pairs share an alphabet.

    >>> x1, x2, same = PairSampler(dataset, batch_size=32, seed=0).batch(0)  # doctest: +SKIP
    >>> PairSampler(background, 128, seed=0, within_alphabet=0.5, augment=True)  # doctest: +SKIP
    """

    def __init__(self, dataset: ArrayDataset, batch_size: int, seed: int = 0, within_alphabet: float = 0.0,
                 augment: bool = False, alphabet_ids=None, all_pairs: bool = False, alphabet_group: int = 8):
        self.batch_size = _check_int("batch_size", batch_size, 2)
        self.seed = _check_int("seed", seed, 0)
        if dataset.num_classes < 2:
            raise ValueError(f"Expected at least 2 classes for pairs. Received: {dataset.num_classes} class")
        if dataset.min_examples_per_class() < 2:
            raise ValueError(
                "Expected at least 2 examples per class for positive pairs. "
                f"Received: {dataset.min_examples_per_class()} in the smallest class"
            )
        ok = (isinstance(within_alphabet, (int, float)) and not isinstance(within_alphabet, bool)
              and 0.0 <= within_alphabet <= 1.0)
        if not ok:
            raise ValueError(f"Expected 0 <= within_alphabet <= 1. Received: within_alphabet={within_alphabet!r}")
        if not isinstance(augment, bool):
            raise ValueError(f"Expected augment true or false. Received: augment={augment!r}")
        self.alphabet_group = _check_int("alphabet_group", alphabet_group, 1)
        if not isinstance(all_pairs, bool):
            raise ValueError(f"Expected all_pairs true or false. Received: all_pairs={all_pairs!r}")
        if all_pairs and self.batch_size > dataset.num_classes:
            raise ValueError(f"Expected batch_size <= {dataset.num_classes} (classes) with all_pairs. "
                             f"Received: batch_size={batch_size}")
        self.within_alphabet, self.augment, self.all_pairs = float(within_alphabet), augment, all_pairs
        self.dataset = dataset
        self._same_alphabet = None
        if self.within_alphabet > 0:
            if alphabet_ids is None:
                alphabet_ids = getattr(dataset, "alphabet", None)
            if alphabet_ids is None:
                raise ValueError("Expected alphabet_ids (or a dataset with an alphabet attribute) for "
                                 f"within_alphabet > 0. Received: none, within_alphabet={within_alphabet}")
            alphas = _ids("alphabet_ids", alphabet_ids, len(dataset.y))
            class_alpha = np.array([alphas[ix[0]] for ix in dataset.indices_by_class])
            # per class: the other classes of its alphabet (empty for an alphabet of one class)
            self._same_alphabet = [np.flatnonzero((class_alpha == class_alpha[c]) & (np.arange(len(class_alpha)) != c))
                                   for c in range(len(class_alpha))]
            self._alphabet_classes = [np.flatnonzero(class_alpha == a) for a in np.unique(class_alpha)]

    def _distinct_classes(self, rng: np.random.Generator) -> np.ndarray:
        k, n = self.dataset.num_classes, self.batch_size
        if self._same_alphabet is None:
            return rng.choice(k, size=n, replace=False)
        out: list = []
        order = rng.permutation(len(self._alphabet_classes))
        for a in order:  # groups of up to alphabet_group classes of one alphabet
            members = self._alphabet_classes[a]
            take = min(self.alphabet_group, len(members), n - len(out))
            out.extend(rng.choice(members, size=take, replace=False).tolist())
            if len(out) == n:
                break
        if len(out) < n:  # fewer alphabets than groups: fill with other classes
            rest = np.setdiff1d(np.arange(k), out)
            out.extend(rng.choice(rest, size=n - len(out), replace=False).tolist())
        return np.asarray(out, dtype=np.int64)

    def _other_class(self, rng: np.random.Generator, c1) -> int:
        k = self.dataset.num_classes
        if self._same_alphabet is not None and rng.random() < self.within_alphabet:
            pool = self._same_alphabet[c1]
            if len(pool):
                return int(pool[rng.integers(len(pool))])
        return int((c1 + rng.integers(1, k)) % k)

    def batch(self, index: int) -> PairBatch:
        """``(x1, x2, same)`` with ``same`` a float array of 1.0 / 0.0."""
        index = _check_int("index", index, 0)
        rng = np.random.default_rng([self.seed, index])
        ds, n = self.dataset, self.batch_size
        n_pos = n if self.all_pairs else n // 2
        first, second = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        if self.all_pairs:
            for j, c in enumerate(self._distinct_classes(rng)):
                first[j], second[j] = rng.choice(ds.indices_by_class[c], size=2, replace=False)
        for j in range(0 if self.all_pairs else n):
            c1 = rng.integers(ds.num_classes)
            if j < n_pos:
                a, b = rng.choice(ds.indices_by_class[c1], size=2, replace=False)
            else:
                c2 = self._other_class(rng, c1)
                a, b = rng.choice(ds.indices_by_class[c1]), rng.choice(ds.indices_by_class[c2])
            first[j], second[j] = a, b
        same = (np.arange(n) < n_pos).astype(ds.x.dtype if ds.x.dtype.kind == "f" else np.float32)
        x1, x2 = ds.x[first], ds.x[second]
        if self.augment:
            both = koch_affine(np.concatenate([x1, x2]), seed=self.seed + 1000, index=index)
            x1, x2 = both[:n], both[n:]
        return PairBatch(x1, x2, same)


class FastEpisodeSampler(EpisodeSampler):
    """:class:`EpisodeSampler` with vectorised draws, one gather per meta-batch, and prefetching.

    Episode ``i`` uses ``numpy.random.default_rng([seed, i])``: ``ways`` classes
    by ``rng.choice(..., replace=False)``, then for each class ``shots + queries``
    distinct examples from one ``rng.random((ways, max_class_size))`` array
    (argsort of random keys: a uniform random subset in random order), then,
    with ``rotate_per_task``, one ``rng.integers(4)`` per class: every image of
    that class in the episode is rotated by that many quarter turns.
    ``rotate_per_task=None`` takes ``dataset.rotate_per_task`` (``False`` when absent).

    >>> s = FastEpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)   # doctest: +SKIP
    >>> s.batch(7, 32)                      # == TaskBatch.stack([s.episode(224 + j) for j in range(32)])
    >>> for b in s.prefetch(range(7, 100), 32): ...                       # same batches, built ahead
    """

    def __init__(self, dataset: ArrayDataset, ways: int, shots: int, queries: int, seed: int = 0,
                 rotate_per_task: bool | None = None):
        super().__init__(dataset, ways, shots, queries, seed)
        if rotate_per_task is None:
            rotate_per_task = bool(getattr(dataset, "rotate_per_task", False))
        self.rotate_per_task = bool(rotate_per_task)
        shape = tuple(dataset.x.shape)
        if self.rotate_per_task and (len(shape) < 3 or shape[1] != shape[2]):
            raise ValueError("Expected square images [n, S, S, ...] to rotate per task. "
                             f"Received: x.shape={shape}")
        sizes = np.array([len(i) for i in dataset.indices_by_class])
        width = int(sizes.max())
        self._pool = np.zeros((len(sizes), width), dtype=np.int64)
        self._invalid = np.arange(width)[None, :] >= sizes[:, None]
        for c, idx in enumerate(dataset.indices_by_class):
            self._pool[c, :len(idx)] = idx
        self._ragged = bool(self._invalid.any())
        self._labels_s = np.repeat(np.arange(self.ways), self.shots)
        self._labels_q = np.repeat(np.arange(self.ways), self.queries)

    def _draw(self, index: int):
        """``(picked [ways, shots + queries], quarter turns [ways] or None)`` of episode ``index``."""
        rng = np.random.default_rng([self.seed, index])
        classes = rng.choice(len(self._pool), size=self.ways, replace=False)
        keys = rng.random((self.ways, self._pool.shape[1]))
        if self._ragged:
            keys[self._invalid[classes]] = 2.0  # padding sorts last
        order = np.argsort(keys, axis=1)[:, :self.shots + self.queries]
        picked = self._pool[classes[:, None], order]
        turns = rng.integers(0, 4, size=self.ways) if self.rotate_per_task else None
        return picked, turns

    def _build(self, indices) -> tuple:
        draws = [self._draw(i) for i in indices]
        picked = np.stack([d[0] for d in draws])  # [B, ways, k + q]
        b, k = len(draws), self.shots
        x = self.dataset.x
        sx = x[picked[:, :, :k].reshape(-1)]
        qx = x[picked[:, :, k:].reshape(-1)]
        img = sx.shape[1:]
        sx = sx.reshape((b, self.ways, k) + img)
        qx = qx.reshape((b, self.ways, self.queries) + img)
        if self.rotate_per_task:
            turns = np.stack([d[1] for d in draws])  # [B, ways]
            rotate_groups(sx, turns, axes=(2, 3))
            rotate_groups(qx, turns, axes=(2, 3))
        sx = sx.reshape((b, self.ways * k) + img)
        qx = qx.reshape((b, self.ways * self.queries) + img)
        sy = np.broadcast_to(self._labels_s, (b, len(self._labels_s))).copy()
        qy = np.broadcast_to(self._labels_q, (b, len(self._labels_q))).copy()
        return sx, sy, qx, qy

    def episode(self, index: int) -> Episode:
        """Episode ``index``: a pure function of ``(seed, index)``."""
        index = _check_int("index", index, 0)
        sx, sy, qx, qy = self._build([index])
        return Episode(sx[0], sy[0], qx[0], qy[0])

    def batch(self, step: int, meta_batch: int) -> TaskBatch:
        """Meta-batch ``step``: episodes ``step * meta_batch ... + meta_batch - 1``."""
        meta_batch = _check_int("meta_batch", meta_batch, 1)
        start = _check_int("step", step, 0) * meta_batch
        return TaskBatch(*self._build(range(start, start + meta_batch)))

    def prefetch(self, steps, meta_batch: int, buffer: int = 2) -> "Prefetcher":
        """Iterate ``batch(step, meta_batch)`` for ``step`` in ``steps`` (an int ``n`` means
        ``range(n)``; any iterable of steps, even endless, works), built ``buffer`` batches
        ahead on a background thread. Use it as a context manager or ``close()`` it to
        stop early; an exception in the thread is raised in the consumer."""
        meta_batch = _check_int("meta_batch", meta_batch, 1)
        _check_int("buffer", buffer, 1)
        if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
            steps = range(_check_int("steps", steps, 0))
        return Prefetcher(lambda step: self.batch(step, meta_batch), steps, buffer)


def _ids(name: str, values, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(
            f"Expected {name} of shape [{n}] (one per image). Received: {name}.shape={arr.shape}"
        )
    return arr


class WithinAlphabetEpisodeSampler:
    """N-way K-shot episodes whose classes all come from one alphabet.

    Episode ``i`` (a pure function of ``(seed, i)``) picks, with
    ``numpy.random.default_rng([seed, i])``, an alphabet among those with at
    least ``ways`` characters (and ``shots + queries`` drawers common to its
    characters), then ``ways`` of its characters, then ``shots + queries``
    drawers: the first ``shots`` draw every character's support images and
    the other ``queries`` its query images, so support and query drawers are
    disjoint, as in Koch et al.'s evaluation. Labels are ``0..ways-1`` in
    the order the characters were drawn; episodes are
    :class:`~metabridge.data.Episode` and batches
    :class:`~metabridge.data.TaskBatch`, as for
    :class:`~metabridge.data.EpisodeSampler`.

    Characters are told apart by ``(alphabet, character)``, so per-alphabet
    names such as ``"character01"`` are fine. ``drawer_ids`` default to each
    image's position among its character's images (Omniglot's files
    ``IIII_DD.png`` sorted by name put drawer ``DD`` at position ``DD - 1``).

    >>> sampler = WithinAlphabetEpisodeSampler(x, character_ids, alphabet_ids,
    ...                                        ways=20, seed=0)        # doctest: +SKIP
    >>> ep = sampler.episode(0)   # 20 characters of one alphabet  # doctest: +SKIP
    """

    def __init__(self, images, character_ids, alphabet_ids, ways: int, shots: int = 1,
                 queries: int = 1, seed: int = 0, drawer_ids=None):
        self.ways = _check_int("ways", ways, 2)
        self.shots = _check_int("shots", shots, 1)
        self.queries = _check_int("queries", queries, 1)
        self.seed = _check_int("seed", seed, 0)
        x = np.asarray(images) if not hasattr(images, "shape") else images
        if len(getattr(x, "shape", ())) < 2 or x.shape[0] == 0:
            raise ValueError(
                f"Expected images [n, ...] with n >= 1. Received: shape={getattr(x, 'shape', None)}"
            )
        n = int(x.shape[0])
        chars = _ids("character_ids", character_ids, n)
        alphas = _ids("alphabet_ids", alphabet_ids, n)
        alpha_values, alpha_of = np.unique(alphas, return_inverse=True)
        _, char_of = np.unique(chars, return_inverse=True)
        # a class is an (alphabet, character) pair, so per-alphabet names such as
        # "character01" are told apart
        keys, class_of, counts = np.unique(alpha_of.astype(np.int64) * (int(char_of.max()) + 1) + char_of,
                                           return_inverse=True, return_counts=True)
        groups = np.split(np.argsort(class_of, kind="stable"), np.cumsum(counts)[:-1])
        if drawer_ids is None:
            drawers = np.empty(n, dtype=np.int64)
            for members in groups:
                drawers[members] = np.arange(len(members))
        else:
            drawers = _ids("drawer_ids", drawer_ids, n)

        need = self.shots + self.queries
        # per class: its alphabet and {drawer: image index}
        self._char_alpha = np.array([alpha_of[m[0]] for m in groups], dtype=np.int64)
        self._by_drawer: list[dict] = []
        for members in groups:
            table = {}
            for i in members:
                d = drawers[i].item()
                if d in table:
                    raise ValueError(
                        f"Expected one image per (character, drawer). Received: alphabet "
                        f"{alphas[i]!r}, character {chars[i]!r}, drawer {d!r} twice"
                    )
                table[d] = int(i)
            self._by_drawer.append(table)

        largest = int(np.bincount(self._char_alpha).max())
        if self.ways > largest:
            raise ValueError(
                f"Expected ways <= {largest} (characters in the largest alphabet). Received: ways={ways}"
            )
        # eligible alphabets: enough characters and enough drawers shared by all of them
        self._alphabets, self._chars_of, self._drawers_of = [], [], []
        most_drawers = 0
        for a in range(len(alpha_values)):
            members = np.flatnonzero(self._char_alpha == a)
            if len(members) < self.ways:
                continue
            common = set.intersection(*(set(self._by_drawer[c]) for c in members))
            most_drawers = max(most_drawers, len(common))
            if len(common) >= need:
                self._alphabets.append(a)
                self._chars_of.append(members)
                self._drawers_of.append(np.array(sorted(common), dtype=object))
        if not self._alphabets:
            raise ValueError(
                f"Expected shots + queries <= {most_drawers} (drawers common to every character of an "
                f"alphabet with >= {self.ways} characters). Received: shots={shots}, queries={queries}"
            )
        self.images = x
        self.alphabet_names = [alpha_values[a] for a in self._alphabets]

    @classmethod
    def from_dataset(cls, dataset, ways: int, shots: int = 1, queries: int = 1,
                     seed: int = 0) -> "WithinAlphabetEpisodeSampler":
        """From a dataset with per-image ``x``, ``y`` (character), ``alphabet``
        and, when present, ``drawer`` attributes, such as
        :class:`metabridge.data.omniglot.Omniglot` (e.g. its evaluation subset).
        """
        missing = [a for a in ("x", "y", "alphabet") if not hasattr(dataset, a)]
        if missing:
            raise ValueError(
                f"Expected a dataset with x, y and alphabet attributes. Received: "
                f"{type(dataset).__name__} without {', '.join(missing)}"
            )
        return cls(dataset.x, dataset.y, dataset.alphabet, ways, shots, queries, seed,
                   drawer_ids=getattr(dataset, "drawer", None))

    @property
    def num_alphabets(self) -> int:
        """How many alphabets episodes can come from."""
        return len(self._alphabets)

    def episode_indices(self, index: int) -> tuple:
        """``(alphabet, support indices, query indices)`` of episode ``index``
        (indices into ``images``, class-major)."""
        index = _check_int("index", index, 0)
        rng = np.random.default_rng([self.seed, index])
        j = int(rng.integers(len(self._alphabets)))
        chars = self._chars_of[j][rng.choice(len(self._chars_of[j]), size=self.ways, replace=False)]
        pool = self._drawers_of[j]
        picked = pool[rng.choice(len(pool), size=self.shots + self.queries, replace=False)]
        s_draw, q_draw = picked[:self.shots], picked[self.shots:]
        support = np.array([self._by_drawer[c][d] for c in chars for d in s_draw], dtype=np.int64)
        query = np.array([self._by_drawer[c][d] for c in chars for d in q_draw], dtype=np.int64)
        return self.alphabet_names[j], support, query

    def episode(self, index: int) -> Episode:
        """Episode ``index``: a pure function of ``(seed, index)``."""
        _, s_idx, q_idx = self.episode_indices(index)
        labels = np.arange(self.ways)
        return Episode(self.images[s_idx], np.repeat(labels, self.shots),
                       self.images[q_idx], np.repeat(labels, self.queries))

    def batch(self, step: int, meta_batch: int) -> TaskBatch:
        """Meta-batch ``step``: episodes ``step * meta_batch ... + meta_batch - 1``."""
        meta_batch = _check_int("meta_batch", meta_batch, 1)
        start = _check_int("step", step, 0) * meta_batch
        return TaskBatch.stack([self.episode(start + j) for j in range(meta_batch)])
