"""ANIL (Raghu, Raghu, Bengio & Vinyals 2020): almost no inner loop.

Only the head adapts; the body's features of a task are computed once and the
inner loop runs on the head alone. The outer loop still trains everything.
"""
from __future__ import annotations

from metabridge import ops
from metabridge.algorithms.common import inner_gradients
from metabridge.algorithms.maml import MAML, _first
from metabridge.nn.base import Model


class ANIL(MAML):
    """MAML with a frozen body in the inner loop. The model must have a head:
    ``model.head_prefix`` names its parameters (``"head."`` for
    :class:`~metabridge.nn.Conv4` with ``out_features``; the last dense layer
    of an :class:`~metabridge.nn.MLP`), and ``model.features`` /
    ``model.head`` split its forward pass.

    >>> from metabridge.nn import Conv4
    >>> anil = ANIL(Conv4(out_features=5), inner_lr=0.4)
    """

    def __init__(self, model: Model, inner_lr: float, inner_steps: int = 1, first_order: bool = False,
                 loss="cross_entropy", compiled: bool = False):
        if getattr(model, "head_prefix", None) is None:
            raise ValueError(f"Expected a model with a head for ANIL (e.g. Conv4(out_features=N) or an MLP). "
                             f"Received: {type(model).__name__} without one")
        super().__init__(model, inner_lr, inner_steps, first_order, loss, compiled)

    def inner_keys(self, params: dict) -> list[str]:
        return [k for k in params if k.startswith(self.model.head_prefix)]

    def task_loss(self, params: dict, support_x, support_y, query_x, query_y, ways: int | None = None):
        """Query loss after adapting the head on the support features (computed once);
        ``ways``: the episode uses only the head's first ``ways`` outputs."""
        feats_s = self.model.features(params, ops.asarray(support_x))
        feats_q = self.model.features(params, ops.asarray(query_x))
        support_y = ops.asarray(support_y)
        head = {k: params[k] for k in self.inner_keys(params)}
        for _ in range(self.inner_steps):
            grads = inner_gradients(lambda h, f, y: self.loss_fn(_first(self.model.head(h, f), ways), y), head,
                                    (feats_s, support_y), not self.first_order)
            head = self.inner_update(head, grads)
        return self.loss_fn(_first(self.model.head(head, feats_q), ways), ops.asarray(query_y))
