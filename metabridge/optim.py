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

    def update(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
        _check_same_keys(params, grads)
        new_params, new_state = {}, {"step": state["step"] + 1}
        for k, p in params.items():
            p, step = ops.asarray(p), ops.asarray(grads[k])
            if self.momentum:
                step = state[f"momentum.{k}"] * self.momentum + step
                new_state[f"momentum.{k}"] = step
            new_params[k] = p - _lr_at(self.lr, state["step"]) * step
        return new_params, new_state


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

    def update(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
        _check_same_keys(params, grads)
        t = state["step"] + 1
        c1, c2 = 1.0 - self.beta1 ** t, 1.0 - self.beta2 ** t
        new_params, new_state = {}, {"step": t}
        lr = _lr_at(self.lr, state["step"])
        for k, p in params.items():
            p, g = ops.asarray(p), ops.asarray(grads[k])
            m = state[f"m.{k}"] * self.beta1 + g * (1.0 - self.beta1)
            v = state[f"v.{k}"] * self.beta2 + ops.square(g) * (1.0 - self.beta2)
            new_state[f"m.{k}"], new_state[f"v.{k}"] = m, v
            new_params[k] = p - lr * (m / c1) / (ops.sqrt(v / c2) + self.eps)
        return new_params, new_state


def make_optimizer(name: str, lr: float) -> SGD | Adam:
    """``"adam"`` or ``"sgd"`` by name (as the command line takes them)."""
    if name == "adam":
        return Adam(lr=lr)
    if name == "sgd":
        return SGD(lr=lr)
    raise ValueError(f"Expected optimizer 'adam' or 'sgd'. Received: optimizer={name!r}")
