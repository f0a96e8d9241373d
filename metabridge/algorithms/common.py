"""Pieces shared by the algorithms: losses by name and batch checks at the boundary."""
from __future__ import annotations

from typing import Callable

import numpy as np

from metabridge import ops
from metabridge.data.episodes import TaskBatch

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
