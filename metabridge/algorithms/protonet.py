"""Prototypical Networks (Snell, Swersky & Zemel 2017).

A class's prototype is the mean embedding of its support examples; a query's
logits are minus its squared Euclidean distances to the prototypes (or, with
``distance="cosine"``, its cosine similarities scaled by ``temperature``).
"""
from __future__ import annotations

import numpy as np

from metabridge import ops
from metabridge.algorithms.base import Algorithm
from metabridge.algorithms.common import (
    CompiledFunctions,
    batch_tensors,
    check_episodes,
    l2_normalize,
    mean_over_episodes,
    single_batch,
)
from metabridge.data.episodes import Episode, TaskBatch
from metabridge.nn.base import Model

PROTO_DISTANCES = ("euclidean", "cosine")


class ProtoNet(Algorithm):
    """Prototypical networks over any embedding :class:`Model`.

    >>> from metabridge.nn import Conv4
    >>> proto = ProtoNet(Conv4(None, input_shape=(28, 28, 1)))
    >>> params = proto.model.init(seed=0)
    >>> loss, grads = proto.meta_value_and_grad(params, batch)   # doctest: +SKIP
    """

    adapts = False  # no inner loop: the support set only makes prototypes
    any_ways = True  # test episodes may have other ways than training ones

    def __init__(self, model: Model, distance: str = "euclidean", temperature: float = 10.0,
                 compiled: bool = False):
        if not isinstance(model, Model):
            raise ValueError(f"Expected a metabridge.nn.Model. Received: model={type(model).__name__}")
        if distance not in PROTO_DISTANCES:
            raise ValueError(f"Expected distance in {PROTO_DISTANCES}. Received: distance={distance!r}")
        if not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"Expected temperature > 0. Received: temperature={temperature!r}")
        self.model, self.distance, self.temperature = model, distance, float(temperature)
        self.compiled = bool(compiled)
        self._compiled = CompiledFunctions()

    def logits(self, params: dict, support_x, support_y, query_x, ways: int):
        """``[queries, ways]`` logits of one episode (support labels in ``0..ways-1``)."""
        es, eq = self.model(params, support_x), self.model(params, query_x)
        onehot = ops.one_hot(support_y, ways)                                 # [S, W]
        counts = ops.sum(onehot, 0)                                           # [W]
        protos = ops.matmul(ops.transpose(onehot, (1, 0)), es) / ops.reshape(counts, (-1, 1))
        if self.distance == "cosine":
            qn, pn = l2_normalize(eq), l2_normalize(protos)
            return self.temperature * ops.matmul(qn, ops.transpose(pn, (1, 0)))
        sq = (ops.sum(ops.square(eq), -1, keepdims=True) - 2.0 * ops.matmul(eq, ops.transpose(protos, (1, 0)))
              + ops.reshape(ops.sum(ops.square(protos), -1), (1, -1)))
        return -sq

    def task_loss(self, params: dict, support_x, support_y, query_x, query_y, ways: int):
        """Cross-entropy of the query logits of one episode."""
        return ops.cross_entropy(self.logits(params, support_x, support_y, query_x, ways), query_y)

    def _ways(self, batch: TaskBatch) -> int:
        if not isinstance(batch, TaskBatch):
            raise ValueError(f"Expected a metabridge.data.TaskBatch. Received: {type(batch).__name__}")
        labels = batch.support_y
        if isinstance(labels, np.ndarray):
            ways = int(labels.max()) + 1
            if labels.min() < 0 or any(not np.any(labels[t] == c) for t in range(len(labels)) for c in range(ways)):
                raise ValueError("Expected every class 0..ways-1 in each task's support set. "
                                 f"Received: support_y with labels {sorted(set(labels.ravel().tolist()))}")
            return ways
        return int(ops.shape(ops.one_hot(labels, 1))[1])  # pragma: no cover - tensors carry no class count

    def _meta_value_and_grad(self, params, sx, sy, qx, qy, ways: int):
        n = ops.shape(sx)[0]
        task_grad = ops.value_and_grad(self.task_loss)

        def one_task(a, b, c, d):
            return task_grad(params, a, b, c, d, ways)

        loss_sum, grad_sum = ops.sum_over_tasks(one_task, (sx, sy, qx, qy), n)
        return loss_sum / n, {k: g / n for k, g in grad_sum.items()}

    def meta_value_and_grad(self, params: dict, batch: TaskBatch | list):
        """``(mean query loss, gradient)`` over a meta-batch of episodes
        (through the backend's compiler with ``compiled=True``). ``batch`` may
        also be a list of :class:`~metabridge.data.Episode` of different ways and
        shots (``VariableEpisodeSampler``), each taken at its own size."""
        if isinstance(batch, (list, tuple)):
            return self._episodes_value_and_grad(params, batch)
        ways = self._ways(batch)
        params = {k: ops.asarray(v) for k, v in params.items()}
        args = batch_tensors(batch)
        if not self.compiled:
            return self._meta_value_and_grad(params, *args, ways)
        fn = self._compiled.get(lambda: (lambda p, a, b, c, d: self._meta_value_and_grad(p, a, b, c, d, ways)), ways)
        return fn(params, *args)

    def _episodes_value_and_grad(self, params: dict, episodes: list):
        """Mean loss and gradient over episodes of different sizes (one at a time, eager)."""
        episodes = check_episodes(episodes)
        ways = [self._ways(single_batch(ep)) for ep in episodes]
        return mean_over_episodes(self.task_loss, params, episodes, ways)

    def _no_steps(self, steps) -> None:
        if steps is not None:
            raise ValueError(f"Expected no inner steps for {type(self).__name__} (it does not adapt). "
                             f"Received: steps={steps!r}")

    def predict_episode(self, params: dict, episode: Episode, steps: int | None = None):
        """``[queries, ways]`` logits of one episode (ways from its support labels)."""
        self._no_steps(steps)
        ways = self._ways(single_batch(episode))
        sx, sy, qx = (ops.asarray(a) for a in (episode.support_x, episode.support_y, episode.query_x))
        return self.logits({k: ops.asarray(v) for k, v in params.items()}, sx, sy, qx, ways)

    def evaluate(self, params: dict, batch: TaskBatch | list, steps: int | None = None) -> dict:
        """Per-task query loss and accuracy (numpy arrays ``[tasks]``); ``batch`` may
        be a list of episodes of different sizes."""
        self._no_steps(steps)
        if isinstance(batch, (list, tuple)):
            out = [self.evaluate(params, single_batch(ep)) for ep in batch]
            return {k: np.concatenate([o[k] for o in out]) for k in ("loss", "accuracy")}
        ways = self._ways(batch)
        sx, sy, qx, qy = batch_tensors(batch)
        losses, accs = np.zeros(batch.size), np.zeros(batch.size)
        for t in range(batch.size):
            z = self.logits(params, sx[t], sy[t], qx[t], ways)
            losses[t] = float(ops.to_numpy(ops.cross_entropy(z, qy[t])))
            accs[t] = float(ops.to_numpy(ops.accuracy(z, qy[t])))
        return {"loss": losses, "accuracy": accs}
