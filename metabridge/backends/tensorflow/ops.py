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


def conv2d(x, kernel, stride: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]]):
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        padding = "VALID"
    elif pads == (_tf_same_pads(x.shape[1], kernel.shape[0], stride[0]),
                  _tf_same_pads(x.shape[2], kernel.shape[1], stride[1])):
        padding = "SAME"  # same pads, but TF's fast path (explicit lists are slower)
    else:
        padding = [[0, 0], [top, bottom], [left, right], [0, 0]]
    return tf.nn.conv2d(x, kernel, strides=[1, stride[0], stride[1], 1], padding=padding)


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


def one_hot(labels, depth: int):
    return tf.one_hot(tf.cast(labels, tf.int64), depth, dtype=_DTYPES[config.floatx()])


def take_along_last(x, indices):
    """``x[..., indices[...]]`` for integer ``indices`` with one axis less."""
    return tf.gather(x, tf.cast(indices, tf.int64), batch_dims=len(indices.shape), axis=-1)


def gather(x, indices, axis=0):
    return tf.gather(x, tf.cast(indices, tf.int64), axis=axis)


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
