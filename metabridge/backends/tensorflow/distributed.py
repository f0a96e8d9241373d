"""Data-parallel collectives for the TensorFlow backend: ``tf.distribute``.

Mirrors ``backends/torch/distributed.py``. The group is a
``tf.distribute.MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``
(which ``metabridge train --workers N`` writes for a loopback cluster);
``strategy.reduce`` (a ``CollectiveReduceV2`` op, compiled once per shape) does
the reduction. TensorFlow requires the
strategy to exist before the runtime runs any op, so the training loop
connects before it builds the model. A lost peer shows up as TensorFlow's
own "unhealthy task" error (heartbeats) or the collective timeout.
"""
from __future__ import annotations

import tensorflow as tf

_STRATEGY = None


class Collective:
    """One worker's handle on the multi-worker strategy.

    >>> group = Collective(rank=0, world=2, timeout_s=300)     # doctest: +SKIP
    >>> group.all_reduce_sum([tf.ones(3)])                    # doctest: +SKIP
    [<tf.Tensor: shape=(3,), dtype=float32, numpy=array([2., 2., 2.], dtype=float32)>]
    """

    def __init__(self, rank: int, world: int, timeout_s: float):
        global _STRATEGY
        if _STRATEGY is None:  # one per process: TensorFlow configures its collectives once, at start-up
            options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
            _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        self.strategy = _STRATEGY
        self.rank = int(self.strategy.cluster_resolver.task_id)
        self.world = int(self.strategy.num_replicas_in_sync)
        if (self.rank, self.world) != (rank, world):
            raise RuntimeError(f"Expected TF_CONFIG to make this worker {rank} of {world}. "
                               f"Received: worker {self.rank} of {self.world} replicas")
        self.engine = f"tf.distribute.{type(self.strategy).__name__}"
        # strategy.reduce inside a tf.function: the eager path costs ~10 ms a call (TensorFlow warns so)
        self._reduce = tf.function(lambda v: self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, self.strategy.run(tf.identity, args=(v,)), axis=None),
            reduce_retracing=True)

    def all_reduce_sum(self, tensors: list) -> list:
        """Element-wise sums over all workers of ``tensors`` (one dtype)."""
        flat = tf.concat([tf.reshape(tf.convert_to_tensor(t), [-1]) for t in tensors], 0)
        return _unflat(self._reduce(flat), tensors)

    def broadcast(self, tensors: list, root: int = 0) -> list:
        """Worker ``root``'s ``tensors`` on every worker: a sum in which every
        other worker contributes zeros (exact: ``x + 0 == x``)."""
        if self.rank != root:
            tensors = [tf.zeros_like(t) for t in tensors]
        return self.all_reduce_sum(tensors)

    def close(self) -> None:
        """Nothing to release: the strategy lives as long as the process (the next
        training in this process joins the same group)."""


def _unflat(flat, like: list) -> list:
    out, at = [], 0
    for t in like:
        shape = tf.convert_to_tensor(t).shape
        n = int(shape.num_elements())
        out.append(tf.reshape(flat[at:at + n], shape))
        at += n
    return out
