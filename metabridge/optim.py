"""Optimizers written once with :mod:`metabridge.ops`, so both backends update
identically (Keras' and torch's Adam place epsilon differently; here it is
defined once).

An optimizer is functional: ``state = opt.init(params)`` and
``params, state = opt.update(params, grads, state)``. No tensor is modified in
place. ``state`` is a flat dict (``"step"`` plus one tensor per slot and
parameter), which is what checkpoints save.

>>> opt = Adam(lr=1e-3)
>>> state = opt.init(params)                              # doctest: +SKIP
>>> params, state = opt.update(params, grads, state)      # doctest: +SKIP
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from metabridge import ops


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Expected {name} {bound}. Received: {name}={value!r}")
    return float(value)


class StepDecay:
    """A step-decay learning-rate schedule, a pure function of the update count:
    ``lr(t) = base * factor ** (t // every)`` (Snell et al. halve every 2000 episodes).

    >>> StepDecay(1e-3, every=2000, factor=0.5)(4000)
    0.00025
    """

    def __init__(self, base: float, every: int, factor: float = 0.5):
        self.base = _check_positive("lr", base)
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"Expected lr_decay_every >= 1. Received: lr_decay_every={every!r}")
        if not (isinstance(factor, (int, float)) and 0 < factor <= 1):
            raise ValueError(f"Expected 0 < lr_decay <= 1. Received: lr_decay={factor!r}")
        self.every, self.factor = every, float(factor)

    def __call__(self, step: int) -> float:
        return self.base * self.factor ** (step // self.every)


def _lr(lr, name: str = "lr"):
    """A positive float, or a schedule (callable of the number of updates done)."""
    return lr if callable(lr) else _check_positive(name, lr)


def _lr_at(lr, step: int) -> float:
    return lr(step) if callable(lr) else lr


def _check_same_keys(params: dict, grads: dict) -> None:
    if set(params) != set(grads):
        missing = sorted(set(params) ^ set(grads))
        raise ValueError(f"Expected grads with the keys of params. Received: differing keys {missing}")


class SGD:
    """SGD with optional (heavy-ball) momentum, torch's convention:
    ``buf = momentum * buf + grad``; ``param -= lr * buf``.

    >>> opt = SGD(lr=0.1, momentum=0.9)
    """

    def __init__(self, lr: float | Callable[[int], float], momentum: float = 0.0):
        self.lr = _lr(lr)
        self.momentum = _check_positive("momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"Expected momentum < 1. Received: momentum={momentum!r}")

    def init(self, params: dict) -> dict:
        state = {"step": 0}
        if self.momentum:
            state.update({f"momentum.{k}": ops.zeros_like(ops.asarray(v)) for k, v in params.items()})
        return state

    def scalars(self, step: int) -> dict:
        """The step-dependent numbers of update ``step`` (0-based)."""
        return {"lr": _lr_at(self.lr, step)}

    def apply(self, params: dict, grads: dict, slots: dict, scalars: dict) -> tuple[dict, dict]:
        """One update with ``scalars`` given: ``(new params, new slots)``; tensors only, so it compiles."""
        new_params, new_slots = {}, {}
        for k, p in params.items():
            p, step = ops.asarray(p), ops.asarray(grads[k])
            if self.momentum:
                step = slots[f"momentum.{k}"] * self.momentum + step
                new_slots[f"momentum.{k}"] = step
            new_params[k] = p - scalars["lr"] * step
        return new_params, new_slots

    def update(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
        return update_via_apply(self, params, grads, state)


class Adam:
    """Adam (Kingma & Ba) with torch's epsilon placement:
    ``param -= lr * m_hat / (sqrt(v_hat) + eps)`` with bias-corrected moments.

    >>> opt = Adam(lr=1e-3)
    """

    def __init__(self, lr: float | Callable[[int], float] = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr = _lr(lr)
        self.eps = _check_positive("eps", eps)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not (isinstance(b, (int, float)) and 0 <= b < 1):
                raise ValueError(f"Expected 0 <= {name} < 1. Received: {name}={b!r}")
        self.beta1, self.beta2 = float(beta1), float(beta2)

    def init(self, params: dict) -> dict:
        state = {"step": 0}
        for k, v in params.items():
            z = ops.zeros_like(ops.asarray(v))
            state[f"m.{k}"], state[f"v.{k}"] = z, z
        return state

    def scalars(self, step: int) -> dict:
        """The step-dependent numbers of update ``step`` (0-based): rate and bias corrections."""
        t = step + 1
        return {"lr": _lr_at(self.lr, step), "c1": 1.0 - self.beta1 ** t, "c2": 1.0 - self.beta2 ** t}

    def apply(self, params: dict, grads: dict, slots: dict, scalars: dict) -> tuple[dict, dict]:
        """One update with ``scalars`` given: ``(new params, new slots)``; tensors only, so it compiles."""
        new_params, new_slots = {}, {}
        lr, c1, c2 = scalars["lr"], scalars["c1"], scalars["c2"]
        for k, p in params.items():
            p, g = ops.asarray(p), ops.asarray(grads[k])
            m = slots[f"m.{k}"] * self.beta1 + g * (1.0 - self.beta1)
            v = slots[f"v.{k}"] * self.beta2 + ops.square(g) * (1.0 - self.beta2)
            new_slots[f"m.{k}"], new_slots[f"v.{k}"] = m, v
            new_params[k] = p - lr * (m / c1) / (ops.sqrt(v / c2) + self.eps)
        return new_params, new_slots

    def update(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
        return update_via_apply(self, params, grads, state)


def check_decay(name: str, value) -> float:
    """``value`` as a float when ``0 < value < 1``; else the error that names ``name``."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value < 1.0):
        raise ValueError(f"Expected 0 < {name} < 1. Received: {name}={value!r}")
    return float(value)


class ParameterAverage:
    """``opt`` that also keeps an exponential moving average of the parameters
    (Polyak averaging), for evaluation: slot ``avg.<name>`` holds

        avg_t = sum_s (1 - decay) decay^(t-s) params_s / (1 - decay^t)

    over the parameters after updates ``s = 1..t``, i.e. the moving average
    started at zero and divided by its weight (Adam's bias correction), so
    ``avg_1`` is the first update's parameters. It is kept as
    ``avg += w_t (params - avg)`` with ``w_t = (1 - decay) / (1 - decay^t)``, one
    scalar per step, so it compiles with the update. Training uses the raw
    parameters; :meth:`averaged` (or :func:`averaged_params`) reads the average.

    >>> opt = ParameterAverage(Adam(3e-3), decay=0.998)
    >>> state = opt.init(params)                                            # doctest: +SKIP
    >>> params, state = opt.update(params, grads, state)                    # doctest: +SKIP
    >>> evaluated = opt.averaged(params, state)                             # doctest: +SKIP
    """

    prefix = "avg."

    def __init__(self, opt, decay: float):
        if not hasattr(opt, "apply"):
            raise ValueError(f"Expected an optimizer with scalars() and apply() to average. "
                             f"Received: {type(opt).__name__}")
        self.opt, self.decay = opt, check_decay("decay", decay)

    def init(self, params: dict) -> dict:
        state = self.opt.init(params)
        state.update({self.prefix + k: ops.asarray(v) for k, v in params.items()})
        return state

    def scalars(self, step: int) -> dict:
        t = step + 1
        return {**self.opt.scalars(step), "avg_weight": (1.0 - self.decay) / (1.0 - self.decay ** t)}

    def apply(self, params: dict, grads: dict, slots: dict, scalars: dict) -> tuple[dict, dict]:
        inner = {k: v for k, v in slots.items() if not k.startswith(self.prefix)}
        new_params, new_slots = self.opt.apply(params, grads, inner, {k: v for k, v in scalars.items()
                                                                      if k != "avg_weight"})
        w = scalars["avg_weight"]
        for k, p in new_params.items():
            avg = slots[self.prefix + k]
            new_slots[self.prefix + k] = avg + w * (p - avg)
        return new_params, new_slots

    def update(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
        return update_via_apply(self, params, grads, state)

    def averaged(self, params: dict, state: dict) -> dict:
        """The averaged parameters (``params`` before the first update)."""
        return averaged_params(params, state)


def averaged_params(params: dict, slots: dict) -> dict:
    """The :class:`ParameterAverage` average held in an optimizer state or a
    checkpoint's slots, or ``params`` themselves when there is none.

    >>> evaluated = averaged_params(params, state)                          # doctest: +SKIP
    """
    prefix = ParameterAverage.prefix
    if not any(k.startswith(prefix) for k in slots):
        return params
    missing = [k for k in params if prefix + k not in slots]
    if missing:
        raise ValueError(f"Expected an average of every parameter. Received: none for {missing[:3]}")
    return {k: slots[prefix + k] for k in params}


def _slots(state: dict) -> dict:
    """An optimizer state's tensors (everything but the update count ``"step"``)."""
    return {k: v for k, v in state.items() if k != "step"}


def update_via_apply(opt, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
    """``opt.update`` for an optimizer written as ``scalars(step)`` + ``apply(...)`` (eager).

    >>> params, state = update_via_apply(Adam(1e-3), params, grads, state)   # doctest: +SKIP
    """
    _check_same_keys(params, grads)
    new_params, new_slots = opt.apply(params, grads, _slots(state), opt.scalars(state["step"]))
    return new_params, {"step": state["step"] + 1, **new_slots}


def finite_probe(tensors):
    """A scalar tensor that is 0 when every tensor in ``tensors`` is finite and NaN
    otherwise: ``sum(t * 0)`` cannot overflow. One host sync reads it."""
    probe = None
    for t in tensors:
        term = ops.sum(t * 0.0)
        probe = term if probe is None else probe + term
    return probe


class CompiledUpdate:
    """``opt.update`` and a check that the new parameters and slots are finite,
    as one compiled function where the backend compiles (``tf.function`` on
    TensorFlow, where each eager op costs tens of microseconds: an eager Adam
    step and check over a small MLP took 11 ms, as long as its meta-gradient).
    The step-dependent numbers (``opt.scalars``) enter as scalar tensors of the
    parameters' dtype, which is how eager mode rounds Python floats too, so the
    result equals ``opt.update``. Eagerly (torch) it is ``opt.update`` plus the check.
    ``whole_step``: the training step (:meth:`fused`, :meth:`fused_steps`) is
    compiled whole (``ops.compile_function(..., whole_step=True)``: torch.compile
    on torch, the traced graph called directly on TensorFlow).

    >>> step = CompiledUpdate(Adam(1e-3))
    >>> params, state, finite = step(params, grads, state)     # doctest: +SKIP
    """

    def __init__(self, opt, compiled: bool = True, whole_step: bool = False):
        self.opt, self.compiled, self.whole_step = opt, compiled, whole_step
        apply = self._apply
        self._fn = ops.compile_function(apply) if compiled else apply
        # A backend without a compiler hands the function back: it then takes Python floats.
        self._tensor_scalars = self._fn is not apply
        self._fused: dict = {}

    def _apply(self, params: dict, grads: dict, slots: dict, scalars: dict):
        new_params, new_slots = self.opt.apply(params, grads, slots, scalars)
        return new_params, new_slots, finite_probe([*new_params.values(), *new_slots.values()])

    def _scalars(self, params: dict, step: int, tensors: bool = False) -> dict:
        scalars = self.opt.scalars(step)
        if not (tensors or self._tensor_scalars):
            return scalars
        return _as_tensors(scalars, params)

    def __call__(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict, bool]:
        """``(new params, new state, all finite)``."""
        _check_same_keys(params, grads)
        step = state["step"]
        new_params, new_slots, probe = self._fn(params, grads, _slots(state), self._scalars(params, step))
        finite = math.isfinite(float(ops.to_numpy(probe)))
        return new_params, {"step": step + 1, **new_slots}, finite

    def fused(self, grad_fn, args: tuple, params: dict, state: dict):
        """``grad_fn(params, *args) -> (loss, grads)`` and the update as one compiled
        function: ``(loss, new params, new state, all finite)``. One call into the
        compiled graph a training step instead of two (sinusoid MAML on TensorFlow:
        7.5 -> 5.2 ms a step). With ``whole_step`` torch compiles it too
        (``torch.compile``: sinusoid MAML 5.4 -> 1.4 ms a call, after a compile of
        about 25 s). Otherwise, eagerly, it is the two calls.

        >>> loss, params, state, finite = step.fused(maml._meta_value_and_grad, tensors, params, state)  # doctest: +SKIP
        """
        whole = self.compiled and self.whole_step
        if not whole and not (self.compiled and self._tensor_scalars):
            loss, grads = grad_fn(params, *args)
            return (loss, *self(params, grads, state))
        key = grad_fn  # a bound method: equal, and hashing the same, on every access
        if key not in self._fused:
            def train_step(params, slots, scalars, *args):
                loss, grads = grad_fn(params, *args)
                return (loss, *self._apply(params, grads, slots, scalars))

            self._fused[key] = ops.compile_function(train_step, whole_step=whole)
        step = state["step"]
        # Tensor scalars: a compiler would otherwise bake each step's Python floats in and recompile.
        loss, new_params, new_slots, probe = self._fused[key](params, _slots(state),
                                                              self._scalars(params, step, tensors=True), *args)
        finite = math.isfinite(float(ops.to_numpy(probe)))
        return loss, new_params, {"step": step + 1, **new_slots}, finite

    def fused_steps(self, grad_fn, args_seq: tuple, params: dict, state: dict):
        """``k`` training steps as one compiled call, ``args_seq`` holding each
        step's ``grad_fn`` arguments stacked on a leading axis of length ``k``.
        The steps run in order in a loop inside the compiled function, which
        stops at the first step whose loss, parameters or slots are not finite
        and keeps the state from before it. One call a ``k`` steps instead of one
        a step: on TensorFlow a call costs about 0.5 ms of Python besides the
        graph (the training loop uses this there; on torch the loop is Python).

        Returns ``(losses, checks, done, new params, new state)``: numpy arrays of
        the ``k`` steps' losses and checks (0 where all was finite, NaN where not;
        entries after a stop are 0 and mean nothing), and ``done``, the number of
        steps applied (``k`` unless step ``done`` was not finite). On torch the
        loop is Python, which ``torch.compile`` cannot capture whole: there a
        ``whole_step`` update runs it eagerly after a warning (the training loop
        does not use it on torch).

        >>> losses, checks, done, params, state = step.fused_steps(grad_fn, stacked, params, state)  # doctest: +SKIP
        """
        k = int(ops.shape(args_seq[0])[0])
        key = ("steps", grad_fn)
        if key not in self._fused:
            fn = self._steps_function(grad_fn)
            self._fused[key] = ops.compile_function(fn, whole_step=self.whole_step) if self.compiled else fn
        first = state["step"]
        rows = [self.opt.scalars(first + j) for j in range(k)]
        scalars = _as_tensors({name: [r[name] for r in rows] for name in rows[0]}, params)
        done, new_params, new_slots, losses, checks = self._fused[key](params, _slots(state), scalars, *args_seq)
        done = int(ops.to_numpy(done))
        return (np.asarray(ops.to_numpy(losses)), np.asarray(ops.to_numpy(checks)), done, new_params,
                {"step": first + done, **new_slots})

    def _steps_function(self, grad_fn):
        def train_steps(params, slots, scalars, *args_seq):
            k = ops.shape(args_seq[0])[0]
            dtype = ops.dtype_name(next(iter(params.values())))
            index = ops.asarray(np.arange(k), dtype="int64")

            def running(i, ok, params, slots, losses, checks):
                return ops.logical_and(ok, i < k)

            def one_step(i, ok, params, slots, losses, checks):
                args = [ops.gather(a, i) for a in args_seq]
                loss, grads = grad_fn(params, *args)
                new_params, new_slots, probe = self._apply(params, grads, slots,
                                                           {n: ops.gather(v, i) for n, v in scalars.items()})
                check = loss * 0.0 + probe  # 0 when the loss and the new state are finite, else NaN
                ok = ops.equal(check, 0.0)
                at = ops.equal(index, i)
                keep = lambda new, old: {n: ops.where(ok, new[n], old[n]) for n in old}  # noqa: E731
                return (i + 1, ok, keep(new_params, params), keep(new_slots, slots),
                        ops.where(at, loss, losses), ops.where(at, check, checks))

            start = (ops.asarray(np.int64(0)), ops.asarray(np.bool_(True)), params, slots,
                     ops.zeros((k,), dtype), ops.zeros((k,), dtype))
            i, ok, params, slots, losses, checks = ops.while_loop(running, one_step, start)
            done = i - ops.cast(ops.logical_not(ok), "int64")
            return done, params, slots, losses, checks

        return train_steps


def _as_tensors(values: dict, params: dict) -> dict:
    """Python numbers (or lists of them) as tensors of the parameters' dtype,
    rounded as eager mode rounds Python floats."""
    dtype = ops.dtype_name(ops.asarray(next(iter(params.values()))))
    return {k: ops.asarray(np.asarray(v, dtype=dtype)) for k, v in values.items()}


def make_optimizer(name: str, lr: float) -> SGD | Adam:
    """``"adam"`` or ``"sgd"`` by name (as the command line takes them)."""
    if name == "adam":
        return Adam(lr=lr)
    if name == "sgd":
        return SGD(lr=lr)
    raise ValueError(f"Expected optimizer 'adam' or 'sgd'. Received: optimizer={name!r}")
