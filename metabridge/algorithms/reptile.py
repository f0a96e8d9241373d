"""Reptile (Nichol, Achiam & Schulman 2018).

For each task of a meta-batch, ``inner_steps`` steps of SGD (or of Adam with
``beta1 = 0``, as in the paper) on the task's support set; then
``params += epsilon * (mean adapted - params)``, with ``epsilon`` annealed
linearly from ``outer_stepsize`` to ``final_outer_stepsize`` over
``total_steps`` meta-steps. No second-order terms, no gradient of the outer step.

In the :class:`~metabridge.algorithms.Algorithm` protocol the update direction
is ``params - mean adapted`` and the outer optimizer is SGD whose step size
is ``epsilon`` at each update count, which is exactly the update above.
"""
from __future__ import annotations

import numpy as np

from metabridge import ops
from metabridge.algorithms.base import Algorithm
from metabridge.algorithms.common import (
    CompiledFunctions,
    batch_tensors,
    check_batch,
    metric_fn,
    resolve_loss,
    single_batch,
)
from metabridge.data.episodes import Episode, TaskBatch
from metabridge.nn.base import Model
from metabridge.optim import SGD, Adam
from metabridge.optim import _check_positive as _positive


class Reptile(Algorithm):
    """Reptile over any :class:`Model`.

    >>> from metabridge.nn import MLP
    >>> reptile = Reptile(MLP([1, 40, 40, 1]), inner_lr=0.02, inner_steps=5, loss="mse",
    ...                   outer_stepsize=0.1, total_steps=1000)
    >>> params = reptile.meta_step(params, batch, step=0)        # doctest: +SKIP
    """

    def __init__(self, model: Model, inner_lr: float, inner_steps: int = 5, loss="cross_entropy",
                 outer_stepsize: float = 0.1, final_outer_stepsize: float | None = None,
                 total_steps: int = 1, inner_optimizer: str = "sgd", transductive: bool = True,
                 compiled: bool = False):
        if not isinstance(model, Model):
            raise ValueError(f"Expected a metabridge.nn.Model. Received: model={type(model).__name__}")
        if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
            raise ValueError(f"Expected inner_steps >= 1. Received: inner_steps={inner_steps!r}")
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"Expected total_steps >= 1. Received: total_steps={total_steps!r}")
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"Expected inner_optimizer 'sgd' or 'adam'. Received: inner_optimizer={inner_optimizer!r}")
        self.model, self.inner_steps, self.total_steps = model, inner_steps, total_steps
        self.inner_lr = _positive("inner_lr", inner_lr)
        self.outer_stepsize = _positive("outer_stepsize", outer_stepsize)
        final = outer_stepsize if final_outer_stepsize is None else final_outer_stepsize
        self.final_outer_stepsize = _positive("final_outer_stepsize", final, allow_zero=True)
        if not isinstance(transductive, bool):
            raise ValueError(f"Expected transductive True or False. Received: transductive={transductive!r}")
        self.inner_optimizer, self.transductive = inner_optimizer, transductive
        self.compiled = bool(compiled)
        self._compiled = CompiledFunctions()
        self.loss_fn, self.loss_name = resolve_loss(loss)
        self.metric_name = metric_fn(self.loss_name)[1]

    def epsilon(self, step: int) -> float:
        """The outer step size at meta-step ``step`` (linear annealing)."""
        frac = min(max(step, 0) / self.total_steps, 1.0)
        return (1 - frac) * self.outer_stepsize + frac * self.final_outer_stepsize

    def outer_optimizer(self, lr=None) -> SGD:
        """SGD with step size :meth:`epsilon` of the update count (``lr`` is not used:
        Reptile anneals its own outer step size)."""
        return SGD(lr=self.epsilon)

    def inner_loss(self, params: dict, x, y):
        return self.loss_fn(self.model(params, x), y)

    def adapt(self, params: dict, support_x, support_y, steps: int | None = None) -> dict:
        """``steps`` optimiser steps on the support set (full batch), gradients stopped.

        With ``compiled=True`` the whole loop runs through the backend's compiler
        (one ``tf.function`` per step count and input shape on TensorFlow)."""
        steps = self.inner_steps if steps is None else steps
        params = {k: ops.asarray(v) for k, v in params.items()}
        support_x, support_y = ops.asarray(support_x), ops.asarray(support_y)
        if not self.compiled:
            return self._adapt(params, support_x, support_y, steps)
        fn = self._compiled.get(lambda: (lambda p, x, y: self._adapt(p, x, y, steps)), steps)
        return fn(params, support_x, support_y)

    def _adapt(self, params: dict, support_x, support_y, steps: int) -> dict:
        opt = SGD(self.inner_lr) if self.inner_optimizer == "sgd" else Adam(self.inner_lr, beta1=0.0)
        state = opt.init(params)
        grad_fn = ops.value_and_grad(self.inner_loss)
        for _ in range(steps):
            _, grads = grad_fn(params, support_x, support_y)
            params, state = opt.update(params, grads, state)
        return params

    def meta_value_and_grad(self, params: dict, batch: TaskBatch) -> tuple[float, dict]:
        """``(mean support loss before adaptation, params - mean adapted params)``:
        the direction :meth:`outer_optimizer` scales by ``epsilon``."""
        check_batch(batch, self.model, self.loss_name)
        params = {k: ops.asarray(v) for k, v in params.items()}
        sx, sy, _, _ = batch_tensors(batch)
        total, loss_sum = None, 0.0
        for t in range(batch.size):
            loss_sum += float(ops.to_numpy(self.inner_loss(params, sx[t], sy[t])))
            adapted = self.adapt(params, sx[t], sy[t])
            total = adapted if total is None else {k: total[k] + adapted[k] for k in total}
        return loss_sum / batch.size, {k: p - total[k] / batch.size for k, p in params.items()}

    def meta_step(self, params: dict, batch: TaskBatch, step: int) -> tuple[dict, float]:
        """``(new params, mean support loss before adaptation)`` after one Reptile step:
        ``params + epsilon(step) * (mean adapted - params)``."""
        loss, direction = self.meta_value_and_grad(params, batch)
        eps = self.epsilon(step)
        return {k: ops.asarray(p) - eps * direction[k] for k, p in params.items()}, loss

    def predict(self, params: dict, support_x, query_x):
        """Query predictions of adapted ``params``: one batch of all queries
        (transductive), or each query beside the support set (non-transductive)."""
        support_x, query_x = ops.asarray(support_x), ops.asarray(query_x)
        if self.transductive:
            return self.model(params, query_x)
        n_support = ops.shape(support_x)[0]
        rows = [self.model(params, ops.concat([support_x, query_x[j:j + 1]], 0))[n_support:]
                for j in range(ops.shape(query_x)[0])]
        return ops.concat(rows, 0)

    def predict_episode(self, params: dict, episode: Episode, steps: int | None = None):
        """Query predictions after ``steps`` (default ``inner_steps``) inner steps, as :meth:`predict` says."""
        check_batch(single_batch(episode), self.model, self.loss_name)
        sx, sy, qx = (ops.asarray(a) for a in (episode.support_x, episode.support_y, episode.query_x))
        return self.predict(self.adapt(params, sx, sy, steps), sx, qx)

    def evaluate(self, params: dict, batch: TaskBatch, steps: int | None = None) -> dict:
        """Query loss and metric after adapting with ``steps`` (default ``inner_steps``)
        steps, per task (numpy), predicted as :meth:`predict` says."""
        check_batch(batch, self.model, self.loss_name)
        metric, name = metric_fn(self.loss_name)
        sx, sy, qx, qy = batch_tensors(batch)
        losses, metrics = np.zeros(batch.size), np.zeros(batch.size)
        for t in range(batch.size):
            p = self.adapt(params, sx[t], sy[t], steps)
            pred = self.predict(p, sx[t], qx[t])
            losses[t] = float(ops.to_numpy(self.loss_fn(pred, qy[t])))
            if metric is not None:
                metrics[t] = float(ops.to_numpy(metric(pred, qy[t])))
        return {"loss": losses, **({name: metrics} if name else {})}
