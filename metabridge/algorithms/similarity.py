"""Similarity functions of models, for one-shot scoring with Lake's protocol.

They turn an embedding function or a trained :class:`~metabridge.algorithms.Siamese`
into the ``similarity_fn(queries, support) -> [n_queries, n_support]`` (numpy)
that :func:`metabridge.data.one_shot.score_lake_runs` and
:func:`~metabridge.data.one_shot.score_episodes` take.

>>> sim = embedding_similarity(lambda x: x.reshape(len(x), -1))   # raw pixels
>>> result = score_episodes(sampler, sim, num_episodes=600)       # doctest: +SKIP
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from metabridge import ops
from metabridge.data.one_shot import METRICS, pairwise_similarity


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, (np.ndarray, np.generic, list, tuple, float, int)):
        return np.asarray(x)
    return np.asarray(ops.to_numpy(x))  # a tensor of the active backend


def embedding_similarity(embed_fn: Callable, metric: str = "l2") -> Callable:
    """A ``similarity_fn`` from an embedding function ``embed_fn(images) -> [n, d]``
    (numpy or a tensor of the active backend): minus the L2 distance or the
    cosine similarity between embeddings.

    >>> sim = embedding_similarity(lambda x: x.reshape(len(x), -1))   # raw pixels
    """
    if metric not in METRICS:
        raise ValueError(f"Expected metric in {METRICS}. Received: metric={metric!r}")
    if not callable(embed_fn):
        raise ValueError(f"Expected a callable embed_fn. Received: {type(embed_fn).__name__}")

    def similarity(test_images, train_images):
        return pairwise_similarity(_to_numpy(embed_fn(test_images)), _to_numpy(embed_fn(train_images)), metric)

    return similarity


def siamese_similarity(siamese, params: dict) -> Callable:
    """A ``similarity_fn`` from a :class:`metabridge.algorithms.Siamese`: its
    :meth:`~Siamese.pair_scores` (the head's logit for ``bce`` and ``softmax``, minus the
    distance for ``contrastive``) between the embeddings of every test and
    training image, on the active backend. Predictions agree with
    :meth:`Siamese.one_shot_predictions`.
    """
    for name in ("embed", "pair_score_matrix"):
        if not callable(getattr(siamese, name, None)):
            raise ValueError(f"Expected a Siamese model with {name}(). Received: {type(siamese).__name__}")
    tensors = {k: ops.asarray(v) for k, v in params.items()}

    def similarity(test_images, train_images):
        eq = siamese.embed(tensors, ops.asarray(test_images))
        es = siamese.embed(tensors, ops.asarray(train_images))
        scores = siamese.pair_score_matrix(tensors, eq, es)
        return np.asarray(ops.to_numpy(scores))

    return similarity
