"""TensorFlow implementations of :mod:`metabridge.ops`.

Arguments arrive already validated and normalised by ``metabridge.ops``
(explicit paddings, canonical layouts); see its docstrings for the meaning of
each op. NHWC images and HWIO kernels are TensorFlow's native layouts.
"""
from __future__ import annotations

import builtins

import numpy as np
import tensorflow as tf

from metabridge import config
from metabridge.backends.tensorflow.device import placement

TENSOR_TYPES = (tf.Tensor, tf.Variable)
_DTYPES = {"float32": tf.float32, "float64": tf.float64, "int64": tf.int64,
           "int32": tf.int32, "bool": tf.bool}


def is_tensor(x) -> bool:
    return isinstance(x, TENSOR_TYPES)


def asarray(x, dtype: str | None = None):
    if isinstance(x, TENSOR_TYPES):
        return x if dtype is None else tf.cast(x, _DTYPES[dtype])
    arr = np.asarray(x)
    if dtype is None:
        if arr.dtype.kind == "f":
            dtype = config.floatx()
        elif arr.dtype.kind in "iu":
            dtype = "int64"
        elif arr.dtype.kind == "b":
            dtype = "bool"
        else:
            raise TypeError(f"Expected a numeric array. Received: dtype={arr.dtype}")
    with placement():
        return tf.convert_to_tensor(arr.astype(_DTYPES[dtype].as_numpy_dtype, copy=False))


def to_numpy(x) -> np.ndarray:
    if isinstance(x, TENSOR_TYPES):
        return x.numpy()
    return np.asarray(x)


def cast(x, dtype: str):
    return tf.cast(x, _DTYPES[dtype])


def dtype_name(x) -> str:
    return x.dtype.name


def shape(x) -> tuple[int, ...]:
    return tuple(x.shape)


# ---- elementwise -------------------------------------------------------------
add = tf.add
subtract = tf.subtract
multiply = tf.multiply
divide = tf.divide
negative = tf.negative
exp = tf.exp
log = tf.math.log
log1p = tf.math.log1p
sqrt = tf.sqrt
abs = tf.abs
square = tf.square
tanh = tf.tanh
sigmoid = tf.sigmoid
relu = tf.nn.relu
maximum = tf.maximum
minimum = tf.minimum
equal = tf.equal


def power(x, p):
    return tf.pow(x, tf.cast(p, x.dtype) if not isinstance(p, (int, float)) else p)


def where(cond, a, b):
    return tf.where(cond, a, b)


def logical_and(a, b):
    return tf.logical_and(a, b)


def logical_not(a):
    return tf.logical_not(a)


def clip(x, lo, hi):
    return tf.clip_by_value(x, lo, hi)


def zeros_like(x):
    return tf.zeros_like(x)


def ones_like(x):
    return tf.ones_like(x)


def zeros(shape, dtype: str):
    with placement():
        return tf.zeros(shape, dtype=_DTYPES[dtype])


# ---- reductions ----------------------------------------------------------------
def _axis(axis):
    return list(axis) if isinstance(axis, (tuple, list)) else axis


def sum(x, axis=None, keepdims=False):
    return tf.reduce_sum(x, axis=_axis(axis), keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return tf.reduce_mean(x, axis=_axis(axis), keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    return tf.reduce_max(x, axis=_axis(axis), keepdims=keepdims)


def min(x, axis=None, keepdims=False):
    return tf.reduce_min(x, axis=_axis(axis), keepdims=keepdims)


def logsumexp(x, axis=-1, keepdims=False):
    return tf.reduce_logsumexp(x, axis=_axis(axis), keepdims=keepdims)


def argmax(x, axis=-1):
    return tf.argmax(x, axis=axis, output_type=tf.int64)


# ---- linear algebra and nn --------------------------------------------------------
matmul = tf.matmul


def _tf_same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    total = builtins.max((-(-n // s) - 1) * s + k - n, 0)
    return (total // 2, total - total // 2)


def conv2d(x, kernel, stride: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]], bias=None):
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        padding = "VALID"
    elif pads == (_tf_same_pads(x.shape[1], kernel.shape[0], stride[0]),
                  _tf_same_pads(x.shape[2], kernel.shape[1], stride[1])):
        padding = "SAME"  # same pads, but TF's fast path (explicit lists are slower)
    else:
        padding = [[0, 0], [top, bottom], [left, right], [0, 0]]
    y = tf.nn.conv2d(x, kernel, strides=[1, stride[0], stride[1], 1], padding=padding)
    return y if bias is None else tf.nn.bias_add(y, bias)


def max_pool2d(x, size: tuple[int, int], stride: tuple[int, int], pads):
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        padding = "VALID"
    elif pads == (_tf_same_pads(x.shape[1], size[0], stride[0]), _tf_same_pads(x.shape[2], size[1], stride[1])):
        padding = "SAME"  # TF's SAME pooling ignores padded cells, i.e. -inf padding
    else:
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=float("-inf"))
        padding = "VALID"
    return tf.nn.max_pool2d(x, list(size), list(stride), padding)


def pad(x, pads, value=0.0):
    return tf.pad(x, [list(p) for p in pads], constant_values=value)


def softmax(x, axis=-1):
    return tf.nn.softmax(x, axis=axis)


def log_softmax(x, axis=-1):
    return tf.nn.log_softmax(x, axis=axis)


def softplus(x):
    """``tf.math.softplus``: one kernel; above ``x > -log(eps) + 2`` it returns ``x``,
    where ``log1p(exp(-x))`` is below the dtype's rounding, so the canonical
    value and gradient ``sigmoid(x)`` to rounding (second order via SoftplusGrad)."""
    return tf.math.softplus(x)


_FUSED_BN_DTYPES = (tf.float32,)


def batch_norm(x, scale, offset, axes: tuple[int, ...], epsilon: float):
    """TensorFlow's fused batch norm (``FusedBatchNormV3``, ``is_training=True``)
    when ``axes`` are all but the last (channel) axis and ``x`` is float32; else
    the composite formula.

    Called as the raw op on purpose: ``tf.compat.v1.nn.fused_batch_norm`` raises
    ``epsilon`` to at least 1.001e-5 (a cuDNN limit), which would change the
    op's meaning; on a GPU an ``epsilon`` below 1e-5 therefore takes the
    composite path. The kernel has no float64 version (composite there). Its
    normalisation uses the biased variance and ``sqrt(var + eps)`` like the
    canonical op, but the variance it *returns* is Bessel-corrected and neither
    returned statistic carries a gradient: the returned mean is the kernel's,
    the variance is rescaled by ``(n - 1) / n`` to the biased one, and both get
    their exact gradient from ``_batch_stats`` (no extra pass over ``x`` unless
    they are differentiated). Double backward: TensorFlow's
    ``FusedBatchNormGradV3`` gradient (checked against float64 finite
    differences by ``benchmarks/fused_kernels_check.py``).
    """
    nd = len(x.shape)
    dims = list(axes)
    c = x.shape[-1]
    fused = (dims == list(range(nd - 1)) and nd >= 2 and x.dtype in _FUSED_BN_DTYPES
             and (epsilon >= 1e-5 or config.get_device() == "cpu")
             and tuple(scale.shape) == (c,) and tuple(offset.shape) == (c,))
    if not fused:
        m = tf.reduce_mean(x, axis=dims, keepdims=True)
        v = tf.reduce_mean(tf.math.squared_difference(x, m), axis=dims, keepdims=True)
        return (x - m) / tf.sqrt(v + epsilon) * scale + offset, m, v
    x4 = x if nd == 4 else tf.reshape(x, [-1, 1, 1, c])
    empty = tf.constant([], x.dtype)
    y, mean, var, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x4, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    n = 1
    for d in x.shape[:-1]:
        n *= int(d)
    keep = [1] * (nd - 1) + [c]
    # The kernel returns the Bessel-corrected variance; the canonical one is biased.
    m, v = _batch_stats(x, tf.reshape(tf.stop_gradient(mean), keep),
                        tf.reshape(tf.stop_gradient(var) * ((n - 1) / n), keep))
    return (y if nd == 4 else tf.reshape(y, tf.shape(x))), m, v


def _batch_stats(x, mean, var):
    """``(mean, var)`` handed over from the kernel (no extra pass over ``x``), with
    the exact gradient ``g_m / n + 2 g_v (x - mean(x)) / n``, written in
    differentiable ops (mean recomputed from ``x``) so second order is right too."""

    @tf.custom_gradient
    def stats(x):
        def grad(g_mean, g_var):
            dims = list(range(len(x.shape) - 1))
            n = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
            centred = x - tf.reduce_mean(x, axis=dims, keepdims=True)
            return g_mean / n + (2.0 / n) * g_var * centred

        return (tf.identity(mean), tf.identity(var)), grad

    return stats(x)


def cross_entropy(logits, labels, reduction: str):
    """``tf.nn.sparse_softmax_cross_entropy_with_logits`` (one fused kernel, float32
    and float64; its registered gradient is differentiable again, so second
    order is exact): ``logsumexp(z) - z[label]`` per row."""
    per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int64), logits=logits)
    if reduction == "mean":
        return tf.reduce_mean(per)
    if reduction == "sum":
        return tf.reduce_sum(per)
    return per


def one_hot(labels, depth: int):
    return tf.one_hot(tf.cast(labels, tf.int64), depth, dtype=_DTYPES[config.floatx()])


def take_along_last(x, indices):
    """``x[..., indices[...]]`` for integer ``indices`` with one axis less."""
    return tf.gather(x, tf.cast(indices, tf.int64), batch_dims=len(indices.shape), axis=-1)


def gather(x, indices, axis=0):
    return tf.gather(x, tf.cast(indices, tf.int64), axis=axis)


def broadcast_to(x, shape):
    return tf.broadcast_to(x, shape)


def concat(xs, axis=0):
    return tf.concat(list(xs), axis=axis)


def stack(xs, axis=0):
    return tf.stack(list(xs), axis=axis)


def reshape(x, shape):
    return tf.reshape(x, shape)


def transpose(x, perm):
    return tf.transpose(x, perm)


def stop_gradient(x):
    return tf.stop_gradient(x)
