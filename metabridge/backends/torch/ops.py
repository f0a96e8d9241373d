"""PyTorch implementations of :mod:`metabridge.ops`.

Arguments arrive already validated and normalised by ``metabridge.ops``
(explicit paddings, canonical layouts); see its docstrings for the meaning of
each op. Images are NHWC and conv kernels HWIO, converted here to torch's
NCHW / OIHW around each call; activations stay in NHWC memory, which torch
reads as ``channels_last`` (see ``_nchw``).
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
    # torch.tensor copies: a tensor sharing the caller's numpy memory would let an in-place op
    # (e.g. x.mul_(2) in a wrapped module) change the caller's array. ascontiguousarray
    # would turn a 0-d array into shape (1,).
    arr = np.ascontiguousarray(arr) if arr.ndim else arr
    return torch.tensor(arr, dtype=_DTYPES[dtype], device=native_device())


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


def logical_and(a, b):
    return torch.logical_and(a, b)


def logical_not(a):
    return torch.logical_not(a)


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


def _nchw(x):
    """NHWC ``x`` as an NCHW-shaped view of the same (``channels_last``) memory.

    No copy: convolution, batch norm and pooling run on ``channels_last``
    memory and return it, so the NHWC view of their output is contiguous again.
    On this project's CPU a second-order Conv4 MAML step was 1.2x the
    hand-written ``F.conv2d`` loop with activations copied to NCHW memory and
    1.0x without: torch's max-pool is 8x faster on ``channels_last`` memory,
    and the hand-written loop runs on it too (mkldnn returns ``channels_last``
    for the first, one-channel layer, and the format then propagates).
    """
    return x.permute(0, 3, 1, 2)


def conv2d(x, kernel, stride: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]], bias=None):
    (top, bottom), (left, right) = pads
    xc = _nchw(x)
    if top == bottom and left == right:
        padding = (top, left)
    else:
        xc = F.pad(xc, (left, right, top, bottom))
        padding = (0, 0)
    y = F.conv2d(xc, kernel.permute(3, 2, 0, 1).contiguous(), bias, stride=stride, padding=padding)
    return y.permute(0, 2, 3, 1)


def max_pool2d(x, size: tuple[int, int], stride: tuple[int, int], pads):
    (top, bottom), (left, right) = pads
    xc = _nchw(x)
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


def softplus(x):
    """``F.softplus`` (one kernel, double backward) with its ``threshold`` set where
    ``log1p(exp(-x))`` drops below the dtype's rounding (``-log(eps) + 2``: 17.9 in
    float32, 38.0 in float64), so above it returning ``x`` (gradient 1) is the
    canonical value and gradient ``sigmoid(x)`` to rounding. torch's default
    threshold of 20 would be off by up to 2e-9, visible in float64."""
    return F.softplus(x, beta=1.0, threshold=_SOFTPLUS_THRESHOLD.get(x.dtype, 20.0))


_SOFTPLUS_THRESHOLD = {t: float(2.0 - np.log(torch.finfo(t).eps)) for t in (torch.float32, torch.float64)}


class _BatchStats(torch.autograd.Function):
    """``(mean, biased var)`` of ``x`` over all but the last axis, handed over from
    the batch-norm kernel (no extra pass over ``x``), with the exact gradient:
    ``d mean = g_m / n``, ``d var = 2 g_v (x - mean) / n``. The backward is
    written in differentiable ops, mean recomputed from ``x``, so it has a
    correct second derivative too. It runs only if a statistic is used."""

    @staticmethod
    def forward(ctx, x, mean, var):
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)
        return mean.clone(), var.clone()

    @staticmethod
    def backward(ctx, g_mean, g_var):
        (x,) = ctx.saved_tensors
        dims = tuple(range(x.ndim - 1))
        n = x.numel() // x.shape[-1]
        gx = None
        if g_mean is not None:
            gx = (g_mean / n).expand_as(x)
        if g_var is not None:
            gv = (2.0 / n) * g_var * (x - x.mean(dim=dims, keepdim=True))
            gx = gv if gx is None else gx + gv
        return gx, None, None


def batch_norm(x, scale, offset, axes: tuple[int, ...], epsilon: float):
    """torch's fused kernel (``torch.native_batch_norm``, what ``F.batch_norm(training=True)``
    runs; exact double backward) when ``axes`` are all but the last (channel) axis,
    else the composite formula.

    The kernel normalises with the biased batch variance and ``sqrt(var + eps)``,
    the canonical meaning. The returned mean is the kernel's; the returned
    variance is recovered from the kernel's ``1 / sqrt(var + eps)`` as
    ``invstd**-2 - eps`` (exact to rounding of ``var + eps``, clamped at 0); both
    are differentiable through :class:`_BatchStats`, at no cost when unused.
    """
    nd = x.ndim
    c = x.shape[-1]
    if (tuple(axes) == tuple(range(nd - 1)) and nd >= 2 and x.numel() > c
            and scale.numel() == c and offset.numel() == c):
        perm = (0, nd - 1) + tuple(range(1, nd - 1))  # channels to axis 1
        inv = (0,) + tuple(range(2, nd)) + (1,)
        xc = x.permute(perm)
        y, mean, invstd = torch.native_batch_norm(xc, scale.reshape(c), offset.reshape(c), None, None,
                                                  True, 0.0, epsilon)
        var = torch.clamp_min(invstd.detach().double().pow(-2) - epsilon, 0.0).to(x.dtype)
        keep = (1,) * (nd - 1) + (c,)
        m, v = _BatchStats.apply(x, mean.detach().reshape(keep), var.reshape(keep))
        return y.permute(inv), m, v
    dims = tuple(axes)
    m = x.mean(dim=dims, keepdim=True)
    centered = x - m
    v = torch.square(centered).mean(dim=dims, keepdim=True)
    return centered / torch.sqrt(v + epsilon) * scale + offset, m, v


def cross_entropy(logits, labels, reduction: str):
    """``F.cross_entropy`` on integer labels (log-softmax + NLL, torch's fused
    kernels with double backward): ``logsumexp(z) - z[label]`` per row."""
    c = logits.shape[-1]
    per = F.cross_entropy(logits.reshape(-1, c), labels.long().reshape(-1),
                          reduction="none" if reduction == "none" else reduction)
    return per.reshape(labels.shape) if reduction == "none" else per


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


def broadcast_to(x, shape):
    return x.expand(shape)


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
