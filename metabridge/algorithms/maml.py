"""MAML (Finn, Abbeel & Levine 2017), second- and first-order.

The inner loop builds new parameter dicts (``params - lr * grad``); nothing is
modified in place, so the outer gradient flows through every inner step. The
inner loop runs exactly ``inner_steps`` times, whatever ``inner_lr`` is.
"""
from __future__ import annotations

import math

import numpy as np

from metabridge import ops
from metabridge.algorithms.base import Algorithm
from metabridge.algorithms.common import (
    LOSSES,
    CompiledFunctions,
    batch_tensors,
    check_batch,
    check_episodes,
    inner_gradients,
    mean_over_episodes,
    metric_fn,
    resolve_loss,
    single_batch,
)
from metabridge.algorithms.learner import Learner
from metabridge.data.episodes import Episode, TaskBatch
from metabridge.nn.base import Model


class MAML(Algorithm):
    """Model-agnostic meta-learning over any :class:`metabridge.nn.Model`.

    >>> from metabridge.nn import MLP
    >>> maml = MAML(MLP([1, 40, 40, 1]), inner_lr=0.01, inner_steps=1, loss="mse")
    >>> params = maml.model.init(seed=0)
    >>> loss, grads = maml.meta_value_and_grad(params, batch)   # doctest: +SKIP

    ``first_order=True`` is FOMAML: the inner gradients are stopped, so the
    meta-gradient is the query gradient at the adapted parameters.
    ``compiled=True`` runs the meta-gradient through the backend's compiler
    (``tf.function`` on TensorFlow); results match eager mode.
    """

    def __init__(self, model: Model, inner_lr: float, inner_steps: int = 1, first_order: bool = False,
                 loss="cross_entropy", compiled: bool = False):
        if not isinstance(model, Model):
            raise ValueError(f"Expected a metabridge.nn.Model. Received: model={type(model).__name__}")
        if not isinstance(inner_lr, (int, float)) or not math.isfinite(inner_lr) or inner_lr <= 0:
            raise ValueError(f"Expected inner_lr > 0. Received: inner_lr={inner_lr!r}")
        if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
            raise ValueError(f"Expected inner_steps >= 1. Received: inner_steps={inner_steps!r}")
        self.model, self.inner_lr, self.inner_steps = model, float(inner_lr), inner_steps
        self.first_order, self.compiled = bool(first_order), bool(compiled)
        self.loss_fn, self.loss_name = resolve_loss(loss)
        self.metric_name = metric_fn(self.loss_name)[1]
        self._compiled = CompiledFunctions()

    # ---- inner loop ------------------------------------------------------------------
    def inner_loss(self, params: dict, x, y, ways: int | None = None):
        """The task loss of ``params`` on ``(x, y)`` (with ``ways``: on the first ``ways`` outputs)."""
        return self.loss_fn(_first(self.model(params, x), ways), y)

    def inner_keys(self, params: dict) -> list[str]:
        """The parameters the inner loop adapts (all of them for MAML)."""
        return list(params)

    def inner_update(self, params: dict, grads: dict) -> dict:
        """One inner step on the adapted parameters: ``p - inner_lr * grad``."""
        return {k: params[k] - self.inner_lr * g for k, g in grads.items()}

    def clone(self, params: dict) -> Learner:
        """A :class:`~metabridge.algorithms.Learner` over ``params`` (learn2learn's
        ``maml.clone()``): ``learner.adapt(loss_fn)`` takes one inner step of this
        algorithm, ``learner(x)`` runs the model with the adapted parameters.

        >>> learner = maml.clone(params)                                # doctest: +SKIP
        >>> learner.adapt(lambda l: ops.cross_entropy(l(sx), sy))       # doctest: +SKIP
        >>> loss = ops.cross_entropy(learner(qx), qy)                   # doctest: +SKIP
        """
        return Learner(self, params)

    def adapt(self, params: dict, support_x, support_y, steps: int | None = None,
              create_graph: bool | None = None, ways: int | None = None) -> dict:
        """Parameters after ``steps`` (default ``inner_steps``) SGD steps on the support set.

        Inside an outer :func:`metabridge.ops.value_and_grad` the result stays
        differentiable with respect to ``params`` (second order unless
        ``first_order``; ``create_graph=False`` forces first order, as
        evaluation does).
        """
        steps = self.inner_steps if steps is None else steps
        create_graph = (not self.first_order) if create_graph is None else create_graph
        params = {k: ops.asarray(v) for k, v in params.items()}
        support_x, support_y = ops.asarray(support_x), ops.asarray(support_y)
        keys = self.inner_keys(params)
        for _ in range(steps):
            frozen = params

            def loss_of_adapted(sub, x, y):
                return self.inner_loss({**frozen, **sub}, x, y, ways)

            grads = inner_gradients(loss_of_adapted, {k: params[k] for k in keys}, (support_x, support_y),
                                    create_graph)
            params = {**params, **self.inner_update(params, grads)}
        return params

    def task_loss(self, params: dict, support_x, support_y, query_x, query_y, ways: int | None = None):
        """Query loss after adapting on the support set (what the outer loop minimises);
        ``ways``: the episode uses only the first ``ways`` outputs of the head."""
        adapted = self.adapt(params, support_x, support_y, ways=ways)
        return self.inner_loss(adapted, query_x, query_y, ways)

    # ---- outer loop ---------------------------------------------------------------------
    def tasks_batched(self) -> bool:
        """Whether a meta-batch runs as one batched computation instead of a loop
        over tasks: the model implements ``apply_tasks`` (an :class:`~metabridge.nn.MLP`),
        the loss is a built-in mean (``"mse"``, ``"cross_entropy"``) and the task
        loss is MAML's own (ANIL keeps the loop). Same numbers as the loop to
        rounding; memory holds every task's graph at once, which for such models
        is small."""
        return (getattr(self.model, "task_batched", False) and self.loss_name in LOSSES
                and type(self).task_loss is MAML.task_loss and type(self).inner_loss is MAML.inner_loss)

    def batched_task_loss(self, params: dict, support_x, support_y, query_x, query_y):
        """The mean over tasks of :meth:`task_loss`, all tasks at once.

        Every parameter gets a task axis (``broadcast_to``), so the gradient of
        the summed support loss with respect to copy ``t`` is task ``t``'s own
        inner gradient; the outer gradient sums back over the copies.

        >>> maml.batched_task_loss(params, sx, sy, qx, qy)   # sx: [tasks, shots, ...]   # doctest: +SKIP
        """
        n = ops.shape(support_x)[0]
        tasks = {k: ops.broadcast_to(v, (n,) + tuple(ops.shape(v))) for k, v in params.items()}
        tasks = self._adapt_tasks(tasks, support_x, support_y, self.inner_steps, not self.first_order)
        return self.loss_fn(self.model.apply_tasks(tasks, query_x), query_y)

    def _adapt_tasks(self, tasks: dict, support_x, support_y, steps: int, create_graph: bool) -> dict:
        """``steps`` inner steps on parameters with a task axis (see :meth:`batched_task_loss`)."""
        n = ops.shape(support_x)[0]
        keys = self.inner_keys(tasks)
        for _ in range(steps):
            frozen = tasks

            def summed_loss(sub, x, y):  # the built-in losses are means: n * mean = sum of task means
                return self.loss_fn(self.model.apply_tasks({**frozen, **sub}, x), y) * float(n)

            grads = inner_gradients(summed_loss, {k: tasks[k] for k in keys}, (support_x, support_y), create_graph)
            tasks = {**tasks, **self.inner_update(tasks, grads)}
        return tasks

    def _meta_value_and_grad(self, params, support_x, support_y, query_x, query_y):
        if self.tasks_batched():
            return ops.value_and_grad(self.batched_task_loss)(params, support_x, support_y, query_x, query_y)
        n = ops.shape(support_x)[0]
        task_grad = ops.value_and_grad(self.task_loss)

        def one_task(sx, sy, qx, qy):
            return task_grad(params, sx, sy, qx, qy)

        loss_sum, grad_sum = ops.sum_over_tasks(one_task, (support_x, support_y, query_x, query_y), n)
        return loss_sum / n, {k: g / n for k, g in grad_sum.items()}

    def meta_value_and_grad(self, params: dict, batch: TaskBatch | list):
        """``(mean query loss, meta-gradient)`` over a meta-batch.

        Models with ``apply_tasks`` (MLPs) run the whole meta-batch as one batched
        computation (:meth:`tasks_batched`); otherwise per-task meta-gradients are
        accumulated one task at a time (memory for one task's graph; one traced
        loop body on the compiled path). ``batch``
        may also be a list of :class:`~metabridge.data.Episode` with different
        ways and shots (``VariableEpisodeSampler``): an episode of ``w`` ways uses
        the first ``w`` outputs of a head sized for the largest (eager).
        """
        if isinstance(batch, (list, tuple)):
            return self._episodes_value_and_grad(params, batch)
        fn, args = self.meta_gradient_function(batch)
        params = {k: ops.asarray(v) for k, v in params.items()}
        if not self.compiled:
            return fn(params, *args)
        return self._compiled.get(lambda: fn)(params, *args)

    def meta_gradient_function(self, batch):
        """``(self._meta_value_and_grad, batch tensors)`` for a checked :class:`TaskBatch`
        (see :meth:`Algorithm.meta_gradient_function`); ``None`` for a list of
        episodes of different sizes, which run eagerly one by one."""
        if isinstance(batch, (list, tuple)):
            return None
        check_batch(batch, self.model, self.loss_name)
        return self._meta_value_and_grad, batch_tensors(batch)

    def _episode_ways(self, episodes) -> list[int]:
        check_episodes(episodes)
        outputs = getattr(self.model, "out_features", None) or getattr(self.model, "sizes", [None])[-1]
        ways = [int(np.max(np.asarray(ep.support_y))) + 1 for ep in episodes]
        if outputs is not None and max(ways) > outputs:
            raise ValueError(f"Expected episodes of at most {outputs} ways (the model's outputs). "
                             f"Received: an episode of {max(ways)} ways")
        return ways

    def _episodes_value_and_grad(self, params: dict, episodes: list):
        return mean_over_episodes(self.task_loss, params, list(episodes), self._episode_ways(episodes))

    # ---- evaluation -----------------------------------------------------------------------
    def predict_episode(self, params: dict, episode: Episode, steps: int | None = None):
        """The model's query outputs after ``steps`` (default ``inner_steps``) first-order inner steps."""
        check_batch(single_batch(episode), self.model, self.loss_name)
        sx, sy, qx = (ops.asarray(a) for a in (episode.support_x, episode.support_y, episode.query_x))
        adapted = self.adapt(params, sx, sy, steps=steps, create_graph=False)
        return self.model(adapted, qx)

    def evaluate(self, params: dict, batch: TaskBatch, steps: int | None = None) -> dict:
        """Query loss and metric after 0..``steps`` inner steps, per task.

        Returns numpy arrays ``{"loss": [tasks, steps + 1], "<metric>": ...}``
        where the metric is accuracy (cross-entropy) or MSE.
        """
        steps = self.inner_steps if steps is None else steps
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"Expected steps >= 0. Received: steps={steps!r}")
        if isinstance(batch, (list, tuple)):  # episodes of different sizes, each on its first `ways` outputs
            ways = self._episode_ways(batch)
            outs = [self._evaluate(params, single_batch(ep), steps, w) for ep, w in zip(batch, ways)]
            return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        check_batch(batch, self.model, self.loss_name)
        if self.tasks_batched():
            return self._evaluate_batched(params, batch, steps)
        return self._evaluate(params, batch, steps, None)

    def _evaluate_batched(self, params: dict, batch: TaskBatch, steps: int) -> dict:
        """:meth:`evaluate` with all tasks as one batched computation (MLPs; the
        same numbers as the task loop to rounding, tests/test_speed_paths.py)."""
        sx, sy, qx, qy = batch_tensors(batch)
        n = batch.size
        base = {k: ops.asarray(v) for k, v in params.items()}
        tasks = {k: ops.broadcast_to(v, (n,) + tuple(ops.shape(v))) for k, v in base.items()}
        losses, metrics = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
        for s in range(steps + 1):
            loss, metric = _per_task(ops.stop_gradient(self.model.apply_tasks(tasks, qx)), qy, self.loss_name)
            losses[:, s], metrics[:, s] = ops.to_numpy(loss), ops.to_numpy(metric)
            if s < steps:
                tasks = self._adapt_tasks(tasks, sx, sy, 1, create_graph=False)
        return {"loss": losses, metric_fn(self.loss_name)[1]: metrics}

    def _evaluate(self, params: dict, batch: TaskBatch, steps: int, ways: int | None) -> dict:
        metric, metric_name = metric_fn(self.loss_name)
        base = {k: ops.asarray(v) for k, v in params.items()}
        sx, sy, qx, qy = batch_tensors(batch)
        losses, metrics = np.zeros((batch.size, steps + 1)), np.zeros((batch.size, steps + 1))
        for t in range(batch.size):
            p = base
            for s in range(steps + 1):
                pred = _first(self.model(p, qx[t]), ways)
                losses[t, s] = float(ops.to_numpy(self.loss_fn(pred, qy[t])))
                if metric is not None:
                    metrics[t, s] = float(ops.to_numpy(metric(pred, qy[t])))
                if s < steps:
                    p = self.adapt(p, sx[t], sy[t], steps=1, create_graph=False, ways=ways)
        out = {"loss": losses}
        if metric_name:
            out[metric_name] = metrics
        return out


def _per_task(pred, y, loss_name: str):
    """``(loss, metric)`` of each task of a batched prediction ``[tasks, n, ...]``,
    for the built-in losses (MSE: the metric is the loss; cross-entropy: accuracy)."""
    tasks, n = ops.shape(pred)[0], ops.shape(pred)[1]
    if loss_name == "mse":
        loss = ops.mean(ops.reshape(ops.square(pred - ops.asarray(y)), (tasks, -1)), 1)
        return loss, loss
    labels = ops.reshape(ops.asarray(y), (tasks * n,))
    per = ops.cross_entropy(ops.reshape(pred, (tasks * n, -1)), labels, reduction="none")
    hits = ops.cast(ops.equal(ops.argmax(pred, -1), ops.cast(ops.asarray(y), "int64")), ops.dtype_name(pred))
    return ops.mean(ops.reshape(per, (tasks, n)), 1), ops.mean(hits, 1)


def _first(outputs, ways: int | None):
    """The first ``ways`` outputs (columns) of a head, or all of them when ``ways`` is None."""
    return outputs if ways is None else outputs[:, :ways]
