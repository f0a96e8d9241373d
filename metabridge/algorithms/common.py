"""Pieces shared by the algorithms: losses by name, batch checks at the boundary,
the compiled-function cache, the inner step's gradients and L2 normalisation."""
from __future__ import annotations

from typing import Callable

import numpy as np

from metabridge import ops
from metabridge.data.episodes import Episode, TaskBatch

LOSSES: dict[str, Callable] = {"cross_entropy": ops.cross_entropy, "mse": ops.mse}


def resolve_loss(loss) -> tuple[Callable, str]:
    """``(loss_fn(pred, target), name)`` for ``"cross_entropy"``, ``"mse"`` or a callable."""
    if callable(loss):
        return loss, getattr(loss, "__name__", "custom")
    if loss in LOSSES:
        return LOSSES[loss], loss
    raise ValueError(f"Expected loss in {tuple(LOSSES)} or a callable. Received: loss={loss!r}")


def check_batch(batch, model, loss_name: str) -> None:
    """Clear errors for a malformed meta-batch (checked on numpy inputs only:
    tensors are assumed to come from a checked pipeline, and checking them
    would force a device sync)."""
    if not isinstance(batch, TaskBatch):
        raise ValueError(f"Expected a metabridge.data.TaskBatch. Received: {type(batch).__name__}")
    expected = tuple(model.input_shape)
    for name in ("support_x", "query_x"):
        shape = tuple(getattr(batch, name).shape)
        if shape[2:] != expected:
            raise ValueError(
                f"Expected {name} of shape (tasks, examples, {', '.join(map(str, expected))}) "
                f"for {type(model).__name__}. Received: {name}.shape={shape}"
            )
    if loss_name != "cross_entropy":
        return
    classes = getattr(model, "out_features", None) or (model.sizes[-1] if hasattr(model, "sizes") else None)
    for name in ("support_y", "query_y"):
        labels = getattr(batch, name)
        if not isinstance(labels, np.ndarray):
            continue
        if labels.dtype.kind not in "iu":
            raise ValueError(f"Expected integer class labels in {name}. Received: {name}.dtype={labels.dtype}")
        if labels.size and (labels.min() < 0 or (classes is not None and labels.max() >= classes)):
            bound = f"0..{classes - 1}" if classes is not None else ">= 0"
            raise ValueError(
                f"Expected {name} labels in {bound} (the model's outputs). "
                f"Received: {name} with labels from {labels.min()} to {labels.max()}"
            )


def batch_tensors(batch: TaskBatch) -> tuple:
    """The four fields of ``batch`` as tensors of the active backend."""
    return tuple(ops.asarray(a) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))


def metric_fn(loss_name: str):
    """The evaluation metric that goes with a loss: accuracy or MSE (or none)."""
    if loss_name == "cross_entropy":
        return ops.accuracy, "accuracy"
    if loss_name == "mse":
        return ops.mse, "mse"
    return None, None


class CompiledFunctions:
    """The backend-compiled versions of a function, one per backend, float
    precision and extra key (shapes or step counts the trace depends on).

    >>> compiled = CompiledFunctions()
    >>> fn = compiled.get(lambda: my_function, ways)      # doctest: +SKIP
    """

    def __init__(self):
        self._fns: dict[tuple, object] = {}

    def get(self, make, *key):
        """The compiled ``make()`` for the active backend, floatx and ``key`` (built on first use)."""
        from metabridge.config import floatx, get_backend

        full = (get_backend(), floatx(), *key)
        if full not in self._fns:
            self._fns[full] = ops.compile_function(make())
        return self._fns[full]


def inner_gradients(loss_of_sub, sub: dict, args: tuple, create_graph: bool) -> dict:
    """Gradients of ``loss_of_sub(sub, *args)`` with respect to the parameters
    ``sub`` for one inner step: differentiable (second order) with
    ``create_graph``, stopped otherwise.

    >>> grads = inner_gradients(lambda p, x, y: loss(p, x, y), head, (x, y), True)   # doctest: +SKIP
    """
    _, grads = ops.value_and_grad(loss_of_sub, create_graph=create_graph)(sub, *args)
    return stop_unless(grads, create_graph)


def stop_unless(grads: dict, create_graph: bool) -> dict:
    """``grads`` unchanged when second order is asked for, else with gradients stopped."""
    return grads if create_graph else {k: ops.stop_gradient(g) for k, g in grads.items()}


def l2_norm(x, eps: float = 1e-12, keepdims: bool = True):
    """``sqrt(sum(x², -1) + eps)``: the L2 norm along the last axis, differentiable at 0."""
    return ops.sqrt(ops.sum(ops.square(x), -1, keepdims=keepdims) + eps)


def l2_normalize(x, eps: float = 1e-12):
    """``x`` divided by :func:`l2_norm` along the last axis (cosine similarity's rows)."""
    return x / l2_norm(x, eps)


def single_batch(episode: Episode) -> TaskBatch:
    """A meta-batch holding one episode (for algorithms that evaluate batches)."""
    return TaskBatch.stack([episode])


def check_episodes(episodes) -> list:
    """A non-empty list of :class:`~metabridge.data.Episode` (variable-size batches), or a clear error."""
    if not episodes or not all(isinstance(ep, Episode) for ep in episodes):
        raise ValueError("Expected a TaskBatch or a non-empty list of metabridge.data.Episode. "
                         f"Received: a {type(episodes).__name__} of {[type(ep).__name__ for ep in episodes][:3]}")
    return list(episodes)


def mean_over_episodes(task_loss, params: dict, episodes: list, ways: list[int]):
    """``(mean loss, mean gradient)`` of ``task_loss(params, sx, sy, qx, qy, ways)`` over
    episodes of different sizes, one at a time (eager).

    >>> loss, grads = mean_over_episodes(alg.task_loss, params, episodes, [5, 3])   # doctest: +SKIP
    """
    params = {k: ops.asarray(v) for k, v in params.items()}
    task_grad = ops.value_and_grad(task_loss)
    loss_sum, grad_sum = None, None
    for ep, w in zip(episodes, ways):
        loss, grads = task_grad(params, *(ops.asarray(a) for a in (ep.support_x, ep.support_y, ep.query_x,
                                                                   ep.query_y)), w)
        loss_sum = loss if loss_sum is None else loss_sum + loss
        grad_sum = grads if grad_sum is None else {k: grad_sum[k] + g for k, g in grads.items()}
    return loss_sum / len(episodes), {k: g / len(episodes) for k, g in grad_sum.items()}
