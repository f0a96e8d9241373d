"""PyTorch implementations of :mod:`metabridge.ops`.

Arguments arrive already validated and normalised by ``metabridge.ops``
(explicit paddings, canonical layouts); see its docstrings for the meaning of
each op. Images are NHWC and conv kernels HWIO, converted here to torch's
NCHW / OIHW around each call.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from metabridge import config
from metabridge.backends.torch.device import native_device

TENSOR_TYPES = (torch.Tensor,)
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64,
           "int32": torch.int32, "bool": torch.bool}


def is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def asarray(x, dtype: str | None = None):
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(_DTYPES[dtype])
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
    return torch.as_tensor(np.ascontiguousarray(arr), dtype=_DTYPES[dtype], device=native_device())


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def cast(x, dtype: str):
    return x.to(_DTYPES[dtype])


def dtype_name(x) -> str:
    return str(x.dtype).replace("torch.", "")


def shape(x) -> tuple[int, ...]:
    return tuple(x.shape)


# ---- elementwise -------------------------------------------------------------
add = torch.add
subtract = torch.subtract
multiply = torch.multiply
divide = torch.divide
negative = torch.negative
exp = torch.exp
log = torch.log
log1p = torch.log1p
sqrt = torch.sqrt
abs = torch.abs
square = torch.square
tanh = torch.tanh
sigmoid = torch.sigmoid
relu = torch.relu
maximum = torch.maximum
minimum = torch.minimum
equal = torch.eq


def power(x, p):
    return torch.pow(x, p)


def where(cond, a, b):
    return torch.where(cond, a, b)


def clip(x, lo, hi):
    return torch.clamp(x, lo, hi)


def zeros_like(x):
    return torch.zeros_like(x)


def ones_like(x):
    return torch.ones_like(x)


def zeros(shape, dtype: str):
    return torch.zeros(shape, dtype=_DTYPES[dtype], device=native_device())


# ---- reductions ----------------------------------------------------------------
def _dims(axis):
    return None if axis is None else (tuple(axis) if isinstance(axis, (tuple, list)) else axis)


def sum(x, axis=None, keepdims=False):
    if axis is None:
        return x.sum() if not keepdims else x.sum(dim=tuple(range(x.ndim)), keepdim=True)
    return x.sum(dim=_dims(axis), keepdim=keepdims)


def mean(x, axis=None, keepdims=False):
    if axis is None:
        return x.mean() if not keepdims else x.mean(dim=tuple(range(x.ndim)), keepdim=True)
    return x.mean(dim=_dims(axis), keepdim=keepdims)


def max(x, axis=None, keepdims=False):
    # amax spreads the gradient evenly over ties, as TensorFlow's reduce_max does.
    if axis is None:
        axis = tuple(range(x.ndim))
    return torch.amax(x, dim=_dims(axis), keepdim=keepdims)


def min(x, axis=None, keepdims=False):
    if axis is None:
        axis = tuple(range(x.ndim))
    return torch.amin(x, dim=_dims(axis), keepdim=keepdims)


def logsumexp(x, axis=-1, keepdims=False):
    if axis is None:
        axis = tuple(range(x.ndim))
    return torch.logsumexp(x, dim=_dims(axis), keepdim=keepdims)


def argmax(x, axis=-1):
    return torch.argmax(x, dim=axis)


# ---- linear algebra and nn --------------------------------------------------------
matmul = torch.matmul


def conv2d(x, kernel, stride: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]]):
    (top, bottom), (left, right) = pads
    xc = x.permute(0, 3, 1, 2)  # NHWC -> NCHW (a channels_last view, no copy)
    if top == bottom and left == right:
        padding = (top, left)
    else:
        xc = F.pad(xc, (left, right, top, bottom))
        padding = (0, 0)
    y = F.conv2d(xc, kernel.permute(3, 2, 0, 1), stride=stride, padding=padding)
    return y.permute(0, 2, 3, 1)


def max_pool2d(x, size: tuple[int, int], stride: tuple[int, int], pads):
    (top, bottom), (left, right) = pads
    xc = x.permute(0, 3, 1, 2)
    if top == bottom and left == right and 2 * top <= size[0] and 2 * left <= size[1]:
        padding = (top, left)  # torch pads implicitly with -inf
    else:
        xc = F.pad(xc, (left, right, top, bottom), value=float("-inf"))
        padding = (0, 0)
    return F.max_pool2d(xc, size, stride, padding=padding).permute(0, 2, 3, 1)


def pad(x, pads, value=0.0):
    flat = []
    for before, after in reversed(pads):
        flat.extend([before, after])
    return F.pad(x, tuple(flat), value=value)


def softmax(x, axis=-1):
    return torch.softmax(x, dim=axis)


def log_softmax(x, axis=-1):
    return torch.log_softmax(x, dim=axis)


def one_hot(labels, depth: int):
    return F.one_hot(labels.long(), depth).to(_DTYPES[config.floatx()])


def take_along_last(x, indices):
    """``x[..., indices[...]]`` for integer ``indices`` with one axis less."""
    return torch.gather(x, -1, indices.long().unsqueeze(-1)).squeeze(-1)


def gather(x, indices, axis=0):
    axis = axis % x.ndim
    return torch.index_select(x, axis, indices.long().reshape(-1)).reshape(
        tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1:])
    )


def concat(xs, axis=0):
    return torch.cat(list(xs), dim=axis)


def stack(xs, axis=0):
    return torch.stack(list(xs), dim=axis)


def reshape(x, shape):
    return torch.reshape(x, tuple(shape))


def transpose(x, perm):
    return x.permute(*perm)


def stop_gradient(x):
    return x.detach()
