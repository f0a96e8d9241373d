"""Within-alphabet N-way one-shot episodes (Lake et al. 2015; Koch et al. 2015).

Lake's 20 runs and Koch et al.'s evaluation draw every task from a single
alphabet, which is harder than mixing alphabets (characters of one alphabet
look alike), and take the support and query images from different drawers.
:class:`WithinAlphabetEpisodeSampler` draws such episodes from any alphabets,
e.g. Omniglot's 20 evaluation alphabets, and :func:`score_episodes` scores a
similarity function on them with the same protocol as
:func:`metabridge.data.lake_runs.score_lake_runs`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from metabridge.data.episodes import Episode, TaskBatch, _check_int


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


def score_episodes(sampler, similarity_fn: Callable, num_episodes: int, start: int = 0) -> dict:
    """Lake's protocol on sampled episodes: each query goes to its best-scoring
    support image (``similarity_fn(query_x, support_x) -> [n_query, n_support]``,
    higher = more alike, first on ties); error per episode in percent.

    Works with any sampler that has ``episode(i)``. Returns the same dict as
    :func:`~metabridge.data.lake_runs.score_lake_runs`, with
    ``per_run_error`` holding one error per episode and ``runs`` the episode
    indices.
    """
    from metabridge.data.lake_runs import _nearest, _summary

    num_episodes = _check_int("num_episodes", num_episodes, 1)
    start = _check_int("start", start, 0)
    errors, predictions, names = [], [], []
    for i in range(start, start + num_episodes):
        ep = sampler.episode(i)
        nearest = _nearest(similarity_fn, ep.query_x, ep.support_x, f"episode {i}")
        pred = np.asarray(ep.support_y)[nearest]
        errors.append(100.0 * float(np.mean(pred != np.asarray(ep.query_y))))
        predictions.append(pred)
        names.append(i)
    return _summary(errors, predictions, names)
