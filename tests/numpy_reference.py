"""Independent numpy references for the ops (documented meaning, written from
scratch) and input makers shared by the tests."""
from __future__ import annotations

import numpy as np


# ---- inputs -------------------------------------------------------------------------------
def N(rng, *shape, scale=1.0):
    """Standard normal (times ``scale``)."""
    return scale * rng.standard_normal(shape)


def P(rng, *shape):
    """Positive, away from 0 (domain of log, sqrt, divisors)."""
    return rng.uniform(0.5, 2.0, shape)


def AWAY(rng, *shape):
    """Either sign, |x| >= 0.2: keeps finite differences off the kinks at 0."""
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def LABELS(rng, depth, *shape):
    return rng.integers(0, depth, shape)


def _avoid(x, points, gap=0.05):
    """``x`` moved at least ``gap`` away from each of ``points`` (kinks of clip)."""
    x = x.copy()
    for p in points:
        close = np.abs(x - p) < gap
        x[close] = p + np.where(x[close] >= p, gap, -gap)
    return x


# ---- numpy references -----------------------------------------------------------------------
def np_logsumexp(x, axis=-1, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def np_softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    return x - np_logsumexp(x, axis, keepdims=True)


def np_sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


def np_reduce(per, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction](per)


def np_cross_entropy(logits, labels, reduction="mean"):
    picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return np_reduce(np_logsumexp(logits, -1) - picked, reduction)


def np_mse(pred, target, reduction="mean"):
    return np_reduce((pred - target) ** 2, reduction)


def np_bce_with_logits(z, y, reduction="mean"):
    # -y log(sigmoid(z)) - (1 - y) log(1 - sigmoid(z)) == softplus(z) - z y
    return np_reduce(np.logaddexp(0.0, z) - z * y, reduction)


def np_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def np_pads(padding, in_hw, kernel_hw, stride):
    """TensorFlow's padding rule, written from its documentation: ``"same"`` gives
    ``ceil(n / s)`` outputs and puts the smaller half of the total pad before."""
    if isinstance(padding, str) and padding.lower() == "valid":
        return ((0, 0), (0, 0))
    if isinstance(padding, str) and padding.lower() == "same":
        pads = []
        for n, k, s in zip(in_hw, kernel_hw, stride):
            out = int(np.ceil(n / s))
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) for p in padding)


def np_conv2d(x, k, stride=1, padding="same"):
    """Plain cross-correlation, NHWC x HWIO, one output position at a time."""
    sh, sw = np_pair(stride)
    kh, kw = k.shape[:2]
    (t, b), (l, r) = np_pads(padding, x.shape[1:3], (kh, kw), (sh, sw))
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, k.shape[3]))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, i * sh: i * sh + kh, j * sw: j * sw + kw, :]
            out[:, i, j, :] = np.tensordot(window, k, axes=3)
    return out


def _np_pool_windows(x, size, stride, padding, pad_value):
    kh, kw = np_pair(size)
    sh, sw = (kh, kw) if stride is None else np_pair(stride)
    (t, b), (l, r) = np_pads(padding, x.shape[1:3], (kh, kw), (sh, sw))
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=pad_value)
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    for i in range(oh):
        for j in range(ow):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            yield i, j, rows, cols, xp, (oh, ow), (t, l)


def np_pool(x, size, stride, padding, kind):
    pad_value = -np.inf if kind == "max" else 0.0
    reduce = np.max if kind == "max" else np.mean
    out = None
    for i, j, rows, cols, xp, (oh, ow), _ in _np_pool_windows(x, size, stride, padding, pad_value):
        if out is None:
            out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
        out[:, i, j, :] = reduce(xp[:, rows, cols, :], axis=(1, 2))
    return out


def np_max_pool_tie_grad(x, w, size, stride, padding):
    """d sum(max_pool(x) * w) / dx where each window's weight goes to its first
    maximum in row-major order (the documented tie rule of ops.max_pool2d)."""
    grad_p, offset = None, None
    for i, j, rows, cols, xp, _, offset in _np_pool_windows(x, size, stride, padding, -np.inf):
        if grad_p is None:
            grad_p = np.zeros_like(xp)
        window = xp[:, rows, cols, :]
        n, kh, kw, c = window.shape
        first = window.reshape(n, kh * kw, c).argmax(axis=1)  # numpy: first occurrence
        share = np.zeros((n, kh * kw, c))
        np.put_along_axis(share, first[:, None, :], 1.0, axis=1)
        grad_p[:, rows, cols, :] += share.reshape(window.shape) * w[:, i:i + 1, j:j + 1, :]
    t, l = offset
    return grad_p[:, t:t + x.shape[1], l:l + x.shape[2], :]


def np_batch_norm(x, scale, offset, axes=(0, 1, 2), epsilon=1e-5):
    m = np.mean(x, axis=axes, keepdims=True)
    v = np.var(x, axis=axes, keepdims=True)  # ddof=0: biased
    return (x - m) / np.sqrt(v + epsilon) * scale + offset, m, v
