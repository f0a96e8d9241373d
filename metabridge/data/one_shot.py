"""One-shot scoring with Lake et al.'s protocol (numpy only).

Each query goes to its best-scoring support image (first on ties); the error
of a run or episode is the percentage of queries sent to another class.
:func:`score_lake_runs` scores Lake's 20 runs (read by
:func:`metabridge.data.lake_runs.load_lake_runs`), :func:`score_episodes` any
sampler's episodes. Similarity functions for models are in
:mod:`metabridge.algorithms.similarity`; :func:`pairwise_similarity` is the
raw-vector one (e.g. pixel nearest neighbour).

>>> result = score_lake_runs(runs, lambda q, s: pairwise_similarity(q, s))   # doctest: +SKIP
>>> result["mean_error"]                                                     # doctest: +SKIP
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from metabridge.data.episodes import _check_int
from metabridge.data.lake_runs import LakeRun
from metabridge.utils.stats import mean_ci95

METRICS = ("l2", "cosine")


def nearest(similarity_fn: Callable, queries, support, where: str) -> np.ndarray:
    """Index of the best-scoring support item for each query (first on ties),
    ``similarity_fn(queries, support) -> [n_queries, n_support]`` checked for shape and finiteness."""
    scores = np.asarray(similarity_fn(queries, support)).astype(np.float64, copy=False)
    expected = (len(queries), len(support))
    if scores.shape != expected:
        raise ValueError(
            f"Expected similarity_fn(test_images, train_images) of shape [n_test, n_train] = {expected} "
            f"in {where}. Received: shape {scores.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"Expected finite similarity scores in {where}. Received: NaN or inf")
    return np.argmax(scores, axis=1)


def summarize(errors, predictions, names) -> dict:
    """The result dict of the scoring functions: errors per run or episode, their mean and 95% interval."""
    errors = np.asarray(errors, dtype=np.float64)
    mean, ci = mean_ci95(errors)
    return {"per_run_error": errors, "mean_error": mean, "accuracy": 100.0 - mean, "ci95": ci,
            "predictions": predictions, "runs": list(names)}


def score_lake_runs(runs: Sequence[LakeRun], similarity_fn: Callable) -> dict:
    """Lake's protocol: error per run and mean error over runs, in percent.

    ``similarity_fn(test_images, train_images)`` returns scores
    ``[n_test, n_train]``, higher meaning more alike (for a cost, pass its
    negative). Each test image goes to its best-scoring training image (the
    first on ties).

    Returns a dict: ``per_run_error`` (percent, one per run), ``mean_error``
    (percent), ``accuracy`` (``100 - mean_error``), ``ci95`` (half-width of the
    95% interval of the mean error, see :func:`metabridge.utils.stats.mean_ci95`),
    ``predictions`` (each run's chosen training indices) and ``runs`` (names).
    """
    runs = list(runs)
    if not runs or not all(isinstance(r, LakeRun) for r in runs):
        raise ValueError(f"Expected a non-empty list of LakeRun from load_lake_runs. Received: {runs!r:.80}")
    errors, predictions = [], []
    for run in runs:
        pred = nearest(similarity_fn, run.test_images, run.train_images, run.name)
        errors.append(100.0 * float(np.mean(pred != run.answers)))
        predictions.append(pred)
    return summarize(errors, predictions, [r.name for r in runs])


def pairwise_similarity(a: np.ndarray, b: np.ndarray, metric: str = "l2") -> np.ndarray:
    """Similarity ``[len(a), len(b)]`` of two sets of vectors: minus the
    Euclidean distance (``"l2"``) or the cosine similarity (``"cosine"``)."""
    if metric not in METRICS:
        raise ValueError(f"Expected metric in {METRICS}. Received: metric={metric!r}")
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"Expected vectors of one size. Received: {a.shape[1]} and {b.shape[1]}")
    if metric == "l2":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return -np.sqrt(np.maximum(sq, 0.0))
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a @ b.T) / np.maximum(na * nb.T, 1e-12)


def score_episodes(sampler, similarity_fn: Callable, num_episodes: int, start: int = 0) -> dict:
    """Lake's protocol on sampled episodes: each query goes to its best-scoring
    support image (``similarity_fn(query_x, support_x) -> [n_query, n_support]``,
    higher = more alike, first on ties); error per episode in percent.

    Works with any sampler that has ``episode(i)``. Returns the same dict as
    :func:`score_lake_runs`, with
    ``per_run_error`` holding one error per episode and ``runs`` the episode
    indices.
    """
    num_episodes = _check_int("num_episodes", num_episodes, 1)
    start = _check_int("start", start, 0)
    errors, predictions, names = [], [], []
    for i in range(start, start + num_episodes):
        ep = sampler.episode(i)
        chosen = nearest(similarity_fn, ep.query_x, ep.support_x, f"episode {i}")
        pred = np.asarray(ep.support_y)[chosen]
        errors.append(100.0 * float(np.mean(pred != np.asarray(ep.query_y))))
        predictions.append(pred)
        names.append(i)
    return summarize(errors, predictions, names)
