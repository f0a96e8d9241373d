"""Task transforms (learn2learn style), as pure numpy functions of ``(seed, i)``.

A task transform is a function ``(episode, rng) -> episode`` that draws all
its randomness from the ``numpy.random.Generator`` it is given. Wrapping a
sampler in :class:`TransformedSampler` gives transform ``t`` of episode ``i``
the generator ``numpy.random.default_rng([seed, i, STREAM, t + 1])``, a stream
independent of the one the sampler draws the episode with
(``default_rng([seed, i])``). Episode ``i`` therefore stays a pure function of
``(seed, i)``: resuming, prefetching and sharding see the same tasks.

Transforms here:

* :func:`remap_labels` — a random permutation of the labels ``0..N-1``;
* :func:`rotate90` — rotations by multiples of 90°, one per class (all its support
  and query images turn together, as a new class) or one per task;
* :func:`flip` — horizontal and/or vertical flips per class, task or example;
* :func:`compose` — several transforms as one.

>>> base = EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)        # doctest: +SKIP
>>> s = TransformedSampler(base, [rotate90(per="class"), remap_labels])   # doctest: +SKIP
>>> s.episode(3)          # the same on every call, process and machine   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from metabridge.data.episodes import Episode, TaskBatch
from metabridge.data.episodes import _check_int as check_int

__all__ = ["TaskTransform", "TransformedSampler", "remap_labels", "rotate90", "flip", "compose", "STREAM",
           "transform_rng"]

TaskTransform = Callable[[Episode, np.random.Generator], Episode]
#: Tag that separates the transforms' random streams from the sampler's ``[seed, i]``.
STREAM = 0x7A5C


def transform_rng(seed: int, index: int, t: int) -> np.random.Generator:
    """The generator transform ``t`` of episode ``index`` gets: ``default_rng([seed, index, STREAM, t + 1])``.

    (A trailing word is nonzero on purpose: ``SeedSequence`` pads short entropy
    with zeros, so ``[s, i, 0, 0]`` would be the sampler's own ``[s, i]``.)
    """
    return np.random.default_rng([seed, index, STREAM, t + 1])


def _ways(ep: Episode) -> int:
    return int(max(np.max(ep.support_y), np.max(ep.query_y))) + 1


def remap_labels(episode: Episode, rng: np.random.Generator) -> Episode:
    """Relabel the classes by a random permutation (label ``c`` becomes ``perm[c]``).

    >>> remap_labels(ep, np.random.default_rng(0)).support_y                  # doctest: +SKIP
    array([3, 0, 4, 1, 2])
    """
    perm = rng.permutation(_ways(episode))
    return Episode(episode.support_x, perm[episode.support_y], episode.query_x, perm[episode.query_y])


def _per(per: str, allowed: Sequence[str]) -> str:
    if per not in allowed:
        raise ValueError(f"Expected per in {tuple(allowed)}. Received: per={per!r}")
    return per


def _apply_groups(x: np.ndarray, groups: np.ndarray, op: Callable[[np.ndarray, int], np.ndarray], values) -> np.ndarray:
    """``x`` with ``op(x[rows], values[g])`` for the rows of each group ``g`` (a new array)."""
    out = np.array(x, copy=True)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = op(x[rows], values[g])
    return out


def rotate90(per: str = "class", turns: Sequence[int] = (0, 1, 2, 3)) -> TaskTransform:
    """Rotate images ``[n, H, W, C]`` by ``k`` quarter turns counter-clockwise, ``k`` drawn
    from ``turns``: one ``k`` per class (``per="class"``, its support and query images
    together) or one per task (``per="task"``). Images must be square.

    >>> rot = rotate90(per="class")
    >>> rot(ep, np.random.default_rng(0))                                      # doctest: +SKIP
    """
    per = _per(per, ("class", "task"))
    turns = np.asarray(turns, dtype=np.int64)
    if turns.ndim != 1 or not turns.size:
        raise ValueError(f"Expected a non-empty list of quarter turns. Received: turns={turns.tolist()!r}")

    def transform(episode: Episode, rng: np.random.Generator) -> Episode:
        sx, qx = np.asarray(episode.support_x), np.asarray(episode.query_x)
        if sx.ndim < 3 or sx.shape[1] != sx.shape[2]:
            raise ValueError(f"Expected square images [n, S, S, ...] to rotate. Received: shape={sx.shape}")
        ways = _ways(episode)
        k = rng.choice(turns, size=ways if per == "class" else 1)
        if per == "task":
            k = np.repeat(k, ways)

        def op(images, quarter):
            return np.rot90(images, int(quarter), axes=(1, 2))

        return Episode(_apply_groups(sx, episode.support_y, op, k), episode.support_y,
                       _apply_groups(qx, episode.query_y, op, k), episode.query_y)

    transform.__name__ = f"rotate90(per={per!r})"
    return transform


def flip(horizontal: bool = True, vertical: bool = False, p: float = 0.5, per: str = "class") -> TaskTransform:
    """Flip images ``[n, H, W, C]`` left-right (``horizontal``) and/or up-down (``vertical``),
    each with probability ``p``, decided per class, per task or per example.

    >>> flip(horizontal=True, per="example")(ep, np.random.default_rng(0))   # doctest: +SKIP
    """
    per = _per(per, ("class", "task", "example"))
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"Expected 0 <= p <= 1. Received: p={p!r}")
    axes = [a for a, on in ((2, horizontal), (1, vertical)) if on]
    if not axes:
        raise ValueError("Expected horizontal or vertical to be True. Received: horizontal=False, vertical=False")

    def op(images, which):
        for a, on in zip(axes, which):
            if on:
                images = np.flip(images, axis=a)
        return images

    def transform(episode: Episode, rng: np.random.Generator) -> Episode:
        sx, qx = np.asarray(episode.support_x), np.asarray(episode.query_x)
        if per == "example":
            n_s, n_q = len(sx), len(qx)
            draws = rng.random((n_s + n_q, len(axes))) < p
            groups_s, groups_q = np.arange(n_s), n_s + np.arange(n_q)
        else:
            ways = _ways(episode)
            draws = rng.random((ways if per == "class" else 1, len(axes))) < p
            if per == "task":
                draws = np.repeat(draws, ways, axis=0)
            groups_s, groups_q = episode.support_y, episode.query_y
        return Episode(_apply_groups(sx, groups_s, op, draws), episode.support_y,
                       _apply_groups(qx, groups_q, op, draws), episode.query_y)

    transform.__name__ = f"flip(horizontal={horizontal}, vertical={vertical}, p={p}, per={per!r})"
    return transform


def compose(*transforms: TaskTransform) -> TaskTransform:
    """One transform applying ``transforms`` in order, each with its own child generator.

    >>> augment = compose(rotate90(), flip(), remap_labels)
    """
    def transform(episode: Episode, rng: np.random.Generator) -> Episode:
        for t, child in zip(transforms, rng.spawn(len(transforms))):
            episode = t(episode, child)
        return episode

    return transform


class TransformedSampler:
    """A sampler whose episode ``i`` is ``sampler.episode(i)`` passed through ``transforms``,
    transform ``t`` drawing from :func:`transform_rng` ``(sampler.seed, i, t)``.

    >>> s = TransformedSampler(EpisodeSampler(ds, 5, 1, 15, seed=0), [rotate90()])   # doctest: +SKIP
    >>> s.batch(step=0, meta_batch=4).support_x.shape                              # doctest: +SKIP
    (4, 5, 28, 28, 1)
    """

    def __init__(self, sampler, transforms: Sequence[TaskTransform]):
        if not hasattr(sampler, "episode") or not hasattr(sampler, "seed"):
            raise ValueError("Expected a sampler with episode(i) and seed. "
                             f"Received: {type(sampler).__name__}")
        transforms = list(transforms)
        bad = [t for t in transforms if not callable(t)]
        if bad:
            raise ValueError(f"Expected callables (episode, rng) -> episode. Received: {bad[0]!r}")
        self.sampler, self.transforms, self.seed = sampler, transforms, sampler.seed
        for name in ("ways", "shots", "queries", "dataset"):
            if hasattr(sampler, name):
                setattr(self, name, getattr(sampler, name))

    def episode(self, index: int) -> Episode:
        """Episode ``index``: a pure function of ``(seed, index)``."""
        index = check_int("index", index, 0)
        ep = self.sampler.episode(index)
        for t, transform in enumerate(self.transforms):
            ep = transform(ep, transform_rng(self.seed, index, t))
        return ep

    def batch(self, step: int, meta_batch: int) -> TaskBatch:
        """Meta-batch ``step``: episodes ``step * meta_batch ... + meta_batch - 1``, stacked."""
        meta_batch = check_int("meta_batch", meta_batch, 1)
        start = check_int("step", step, 0) * meta_batch
        return TaskBatch.stack([self.episode(start + j) for j in range(meta_batch)])
