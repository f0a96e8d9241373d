"""The model contract and the building blocks every model is written with.

A model is a pair of pure functions: ``init(seed) -> params`` (a flat, ordered
dict of numpy arrays with canonical names and layouts, identical on every
backend) and ``apply(params, x, state=None, training=True) -> (y, new_state)``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from metabridge import config, ops

Params = dict


def glorot_uniform(rng: np.random.Generator, shape: Sequence[int], fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot/Xavier uniform values in ``±sqrt(6 / (fan_in + fan_out))`` (Keras' default)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=tuple(shape))


def check_image_shape(input_shape, owner: str) -> tuple[int, int, int]:
    """``input_shape`` as ``(H, W, C)`` positive ints, or a clear error naming ``owner``."""
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(isinstance(s, int) and s > 0 for s in input_shape)):
        raise ValueError(
            f"Expected input_shape (height, width, channels) of positive ints for {owner}. "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(input_shape)


class Model:
    """Base class: subclasses define ``param_shapes`` and ``_forward``.

    ``input_shape`` excludes the batch axis; images are ``(H, W, C)``.
    """

    input_shape: tuple[int, ...] = ()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _init_value(self, rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
        kind = name.rsplit(".", 1)[-1]
        if kind in ("bias", "offset"):
            return np.zeros(shape)
        if kind == "scale":
            return np.ones(shape)
        if len(shape) == 4:  # conv kernel HWIO
            receptive = shape[0] * shape[1]
            return glorot_uniform(rng, shape, receptive * shape[2], receptive * shape[3])
        return glorot_uniform(rng, shape, shape[0], shape[-1])

    def init(self, seed: int) -> Params:
        """Initial parameters as numpy arrays in ``floatx()``, from ``seed`` alone.

        >>> from metabridge.nn import MLP
        >>> p = MLP([1, 40, 1]).init(seed=0)
        >>> list(p)
        ['dense1.kernel', 'dense1.bias', 'dense2.kernel', 'dense2.bias']
        """
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"Expected seed to be a non-negative int. Received: seed={seed!r}")
        rng = np.random.default_rng(int(seed))
        dtype = config.floatx()
        return {n: self._init_value(rng, n, s).astype(dtype) for n, s in self.param_shapes().items()}

    def init_state(self) -> dict:
        """Non-trained state (e.g. batch-norm running statistics); empty by default."""
        return {}

    def check_input(self, x) -> None:
        """Raise a clear error when ``x`` does not match ``input_shape``."""
        got = tuple(ops.shape(x))
        if tuple(got[1:]) != tuple(self.input_shape):
            raise ValueError(
                f"Expected input of shape (batch, {', '.join(map(str, self.input_shape))}) "
                f"for {type(self).__name__}. Received: x.shape={got}"
            )

    def apply(self, params: Params, x, *, state: dict | None = None, training: bool = True):
        """``(y, new_state)`` for input batch ``x`` (any tensor or numpy array)."""
        x = ops.asarray(x)
        self.check_input(x)
        params = {k: ops.asarray(v) for k, v in params.items()}
        if state is not None:
            state = {k: ops.asarray(v) for k, v in state.items()}
        return self._forward(params, x, state, training)

    def __call__(self, params: Params, x):
        """``apply`` on batch statistics, returning only ``y``."""
        return self.apply(params, x)[0]

    def _forward(self, params, x, state, training):
        raise NotImplementedError

    #: Whether :meth:`apply_tasks` is implemented (models whose layers are batched
    #: matrix products; convolutions have no per-example kernel op).
    task_batched = False

    def apply_tasks(self, params: Params, x):
        """Outputs ``[T, n, ...]`` of ``T`` parameter sets at once: every parameter
        has a leading task axis (``[T, *shape]``) and ``x`` is ``[T, n, ...]``;
        row ``t`` equals ``self(params_t, x[t])``. Algorithms use it to run a
        meta-batch as one computation (see ``MAML``); only models with
        ``task_batched = True`` implement it.

        >>> model = MLP([1, 40, 1]); p = model.init(0)                             # doctest: +SKIP
        >>> stacked = {k: ops.broadcast_to(ops.asarray(v), (4,) + v.shape) for k, v in p.items()}  # doctest: +SKIP
        >>> model.apply_tasks(stacked, x)          # x: [4, n, 1] -> [4, n, 1]      # doctest: +SKIP
        """
        raise NotImplementedError(f"{type(self).__name__} does not run several parameter sets at once")


def dense(params: Params, name: str, x):
    """``x @ params[name.kernel] + params[name.bias]`` (kernel is ``[in, out]``)."""
    return ops.matmul(x, params[f"{name}.kernel"]) + params[f"{name}.bias"]


def dense_tasks(params: Params, name: str, x):
    """:func:`dense` for ``T`` parameter sets: ``x`` ``[T, n, in]``, kernel
    ``[T, in, out]``, bias ``[T, out]`` give ``[T, n, out]`` (one batched matmul)."""
    bias = params[f"{name}.bias"]
    t, out = ops.shape(bias)
    return ops.matmul(x, params[f"{name}.kernel"]) + ops.reshape(bias, (t, 1, out))


def conv(params: Params, name: str, x, stride=1, padding="same"):
    """Conv2d (NHWC, HWIO kernel) plus bias."""
    return ops.conv2d(x, params[f"{name}.kernel"], stride=stride, padding=padding, bias=params[f"{name}.bias"])


def batch_norm(params: Params, name: str, x, state: dict | None, training: bool,
               momentum: float = 0.1, epsilon: float = 1e-5):
    """Batch norm over all but the channel axis.

    Training (or no running statistics in ``state``) normalises with the batch's
    statistics; the new running statistics are ``(1 - momentum) * old +
    momentum * batch`` (torch's convention; biased batch variance). Evaluation
    with ``training=False`` uses ``state``'s running statistics.
    Returns ``(y, updates)`` where ``updates`` holds new running statistics.
    """
    axes = tuple(range(len(ops.shape(x)) - 1))
    mean_key, var_key = f"{name}.running_mean", f"{name}.running_var"
    scale, offset = params[f"{name}.scale"], params[f"{name}.offset"]
    if not training and state is not None and mean_key in state:
        y = (x - state[mean_key]) / ops.sqrt(state[var_key] + epsilon) * scale + offset
        return y, {}
    y, m, v = ops.batch_norm(x, scale, offset, axes, epsilon)
    updates = {}
    if state is not None and mean_key in state:
        m, v = ops.stop_gradient(ops.reshape(m, (-1,))), ops.stop_gradient(ops.reshape(v, (-1,)))
        updates[mean_key] = state[mean_key] * (1 - momentum) + m * momentum
        updates[var_key] = state[var_key] * (1 - momentum) + v * momentum
    return y, updates
