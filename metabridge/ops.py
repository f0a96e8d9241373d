"""Backend-neutral operations. Each op's meaning is defined here, once.

Every function dispatches to the active backend (``metabridge.get_backend()``).
Where frameworks disagree (TensorFlow's asymmetric ``"same"`` padding, tie
handling in max, variance bias), the meaning written here is what both
backends compute. Layouts: images NHWC, conv kernels HWIO, dense kernels
``[in, out]``.

>>> import metabridge as mb
>>> from metabridge import ops
>>> x = ops.asarray([[1.0, -2.0]])          # doctest: +SKIP
>>> ops.to_numpy(ops.relu(x))               # doctest: +SKIP
array([[1., 0.]], dtype=float32)
"""
from __future__ import annotations

import builtins
from typing import Sequence, Union

import numpy as np

from metabridge.config import current_backend as _current
from metabridge.config import get_backend as _backend_name

Padding = Union[str, int, Sequence[Sequence[int]]]

_OPS_BY_NAME: dict = {}  # backend name -> its ops module, filled on first use


def _b():
    # Called once per op: a dict hit on the active backend's name (~0.2 us) instead
    # of the backend table's full load path (~1.7 us).
    ops = _OPS_BY_NAME.get(_backend_name())
    if ops is None:
        backend = _current()
        ops = _OPS_BY_NAME[backend.name] = backend.ops
    return ops


# ---- conversion -----------------------------------------------------------------
def asarray(x, dtype: str | None = None):
    """A tensor of the active backend. Floats take ``floatx()`` unless ``dtype``
    is given, integers become int64. Tensors pass through unchanged."""
    return _b().asarray(x, dtype)


def to_numpy(x) -> np.ndarray:
    """A numpy copy of ``x`` (detached from any graph)."""
    return _b().to_numpy(x)


def is_tensor(x) -> bool:
    """Whether ``x`` is a tensor of the active backend."""
    return _b().is_tensor(x)


def cast(x, dtype: str):
    """``x`` as ``dtype`` (``"float32"``, ``"float64"``, ``"int64"``, ``"int32"``, ``"bool"``)."""
    return _b().cast(x, dtype)


def dtype_name(x) -> str:
    """The dtype of tensor ``x`` by name: ``"float32"``, ``"float64"``, ``"int64"``, …"""
    return _b().dtype_name(x)


def shape(x) -> tuple[int, ...]:
    """The static shape of ``x`` as a tuple of ints."""
    return _b().shape(x)


def zeros(shape: Sequence[int], dtype: str | None = None):
    """A zero tensor (``floatx()`` unless ``dtype`` is given)."""
    from metabridge.config import floatx

    return _b().zeros(tuple(shape), dtype or floatx())


def zeros_like(x):
    """Zeros with the shape and dtype of ``x``."""
    return _b().zeros_like(x)


def ones_like(x):
    """Ones with the shape and dtype of ``x``."""
    return _b().ones_like(x)


# ---- elementwise ---------------------------------------------------------------
def add(a, b):
    """``a + b`` with broadcasting."""
    return _b().add(a, b)


def subtract(a, b):
    """``a - b`` with broadcasting."""
    return _b().subtract(a, b)


def multiply(a, b):
    """``a * b`` with broadcasting."""
    return _b().multiply(a, b)


def divide(a, b):
    """``a / b`` (true division) with broadcasting."""
    return _b().divide(a, b)


def negative(x):
    """``-x``."""
    return _b().negative(x)


def power(x, p):
    """``x ** p`` elementwise."""
    return _b().power(x, p)


def exp(x):
    """``e ** x``."""
    return _b().exp(x)


def log(x):
    """Natural logarithm."""
    return _b().log(x)


def log1p(x):
    """``log(1 + x)``, accurate for small ``x``."""
    return _b().log1p(x)


def sqrt(x):
    """Square root."""
    return _b().sqrt(x)


def abs(x):  # noqa: A001 - mirrors numpy's name
    """Absolute value; its gradient at 0 is 0 on both backends."""
    return _b().abs(x)


def square(x):
    """``x * x``."""
    return _b().square(x)


def maximum(a, b):
    """Elementwise maximum."""
    return _b().maximum(a, b)


def minimum(a, b):
    """Elementwise minimum."""
    return _b().minimum(a, b)


def where(cond, a, b):
    """``a`` where ``cond`` else ``b``."""
    return _b().where(cond, a, b)


def clip(x, lo: float, hi: float):
    """``x`` limited to ``[lo, hi]``."""
    return _b().clip(x, lo, hi)


def equal(a, b):
    """Elementwise ``a == b`` (bool)."""
    return _b().equal(a, b)


# ---- activations -------------------------------------------------------------------
def logical_and(a, b):
    """Elementwise ``a and b`` of bool tensors."""
    return _b().logical_and(a, b)


def logical_not(a):
    """Elementwise ``not a`` of a bool tensor."""
    return _b().logical_not(a)


def relu(x):
    """``max(x, 0)``; gradient 0 at ``x == 0``."""
    return _b().relu(x)


def sigmoid(x):
    """``1 / (1 + exp(-x))``."""
    return _b().sigmoid(x)


def tanh(x):
    """Hyperbolic tangent."""
    return _b().tanh(x)


def softplus(x):
    """``log(1 + exp(x))``, stable for any ``x``, with gradient ``sigmoid(x)``
    everywhere (including ``x == 0``, where a ``relu + log1p(exp(-|x|))``
    formulation would give 0).

    Fused kernels: torch ``F.softplus`` with its threshold moved to where the
    difference is below rounding; TensorFlow ``tf.math.softplus`` (see the
    backends' docstrings)."""
    return _b().softplus(asarray(x))


def softmax(x, axis: int = -1):
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably."""
    return _b().softmax(x, axis)


def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x)`` along ``axis``, computed stably."""
    return _b().log_softmax(x, axis)


# ---- reductions ------------------------------------------------------------------
def sum(x, axis=None, keepdims: bool = False):  # noqa: A001
    """Sum over ``axis`` (an int, a tuple, or ``None`` for all)."""
    return _b().sum(x, axis, keepdims)


def mean(x, axis=None, keepdims: bool = False):
    """Arithmetic mean over ``axis``."""
    return _b().mean(x, axis, keepdims)


def max(x, axis=None, keepdims: bool = False):  # noqa: A001
    """Maximum over ``axis``. The gradient is shared equally among tied maxima
    (TensorFlow's rule, which torch's ``amax`` also follows)."""
    return _b().max(x, axis, keepdims)


def min(x, axis=None, keepdims: bool = False):  # noqa: A001
    """Minimum over ``axis``; ties share the gradient equally."""
    return _b().min(x, axis, keepdims)


def var(x, axis=None, keepdims: bool = False):
    """Biased variance ``mean((x - mean(x))**2)`` (divides by n, not n - 1)."""
    m = mean(x, axis, keepdims=True)
    return mean(square(subtract(x, m)), axis, keepdims)


def logsumexp(x, axis=-1, keepdims: bool = False):
    """``log(sum(exp(x)))`` along ``axis`` (an int, a tuple, or ``None`` for all), computed stably."""
    return _b().logsumexp(x, axis, keepdims)


def argmax(x, axis: int = -1):
    """Index of the maximum along ``axis`` (int64; first index among ties)."""
    return _b().argmax(x, axis)


# ---- shapes and indexing ----------------------------------------------------------
def reshape(x, shape: Sequence[int]):
    """``x`` with a new shape (one entry may be -1)."""
    return _b().reshape(x, tuple(int(s) for s in shape))


def transpose(x, perm: Sequence[int]):
    """Permute the axes of ``x``: output axis ``i`` is input axis ``perm[i]``."""
    return _b().transpose(x, tuple(perm))


def broadcast_to(x, shape: Sequence[int]):
    """``x`` repeated to ``shape`` by numpy's broadcasting rules (its gradient
    sums over the repeated axes).

    >>> broadcast_to(asarray([1.0, 2.0]), (3, 2)).shape     # doctest: +SKIP
    (3, 2)
    """
    x = asarray(x)
    have, target = tuple(_b().shape(x)), tuple(int(s) for s in shape)
    try:
        ok = np.broadcast_shapes(have, target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"Expected a shape that x broadcasts to. Received: x.shape={have}, shape={target}")
    return _b().broadcast_to(x, target)


def concat(xs: Sequence, axis: int = 0):
    """Join tensors along an existing axis."""
    return _b().concat(xs, axis)


def stack(xs: Sequence, axis: int = 0):
    """Join tensors along a new axis."""
    return _b().stack(xs, axis)


def gather(x, indices, axis: int = 0):
    """``numpy.take(x, indices, axis)`` for in-range integer ``indices``."""
    return _b().gather(x, asarray(indices), axis)


def take_along_last(x, indices):
    """``out[...] = x[..., indices[...]]``: pick one entry of the last axis."""
    return _b().take_along_last(x, asarray(indices))


def one_hot(labels, depth: int):
    """``[..., depth]`` float one-hot rows (``floatx()``) for integer labels."""
    return _b().one_hot(asarray(labels), depth)


def pad(x, pads: Sequence[Sequence[int]], value: float = 0.0):
    """Constant padding; ``pads`` is one ``(before, after)`` pair per axis."""
    return _b().pad(x, tuple(tuple(p) for p in pads), value)


def stop_gradient(x):
    """``x`` with no gradient flowing back through it."""
    return _b().stop_gradient(x)


def flatten(x):
    """``[N, ...] -> [N, prod(...)]``."""
    s = shape(x)
    return reshape(x, (s[0], int(np.prod(s[1:]))))


def matmul(a, b):
    """Matrix product (batched over leading axes)."""
    return _b().matmul(a, b)


# ---- convolution and pooling ---------------------------------------------------------
def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and v > 0:
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) and i > 0 for i in v):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"Expected {name} to be a positive int or a pair of them. Received: {name}={v!r}")


def resolve_padding(padding: Padding, in_hw: tuple[int, int], kernel_hw: tuple[int, int],
                    stride: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit ``((top, bottom), (left, right))`` pads for a padding spec.

    ``"valid"``: none. ``"same"``: output size ``ceil(in / stride)``, total pad
    ``max((out - 1) * stride + k - in, 0)`` split with the smaller half before
    (TensorFlow's rule, so stride-2 ``"same"`` pads more at the bottom/right).
    An int pads every side by it; a pair of pairs is taken as is.

    >>> resolve_padding("same", (28, 28), (3, 3), (2, 2))
    ((0, 1), (0, 1))
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            pads = []
            for n, k, s in zip(in_hw, kernel_hw, stride):
                out = -(-n // s)
                total = builtins.max((out - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return (pads[0], pads[1])
    elif isinstance(padding, int) and padding >= 0:
        return ((padding, padding), (padding, padding))
    elif (isinstance(padding, (tuple, list)) and len(padding) == 2
          and all(isinstance(p, (tuple, list)) and len(p) == 2
                  and all(isinstance(i, int) and i >= 0 for i in p) for p in padding)):
        return ((int(padding[0][0]), int(padding[0][1])), (int(padding[1][0]), int(padding[1][1])))
    raise ValueError(
        "Expected padding to be 'same', 'valid', a non-negative int or "
        f"((top, bottom), (left, right)). Received: padding={padding!r}"
    )


def conv2d(x, kernel, stride=1, padding: Padding = "same", bias=None):
    """2-D cross-correlation. ``x``: NHWC, ``kernel``: HWIO ``[kh, kw, in, out]``.

    Padding per :func:`resolve_padding` (TensorFlow's ``"same"`` rule on both
    backends). ``bias`` (``[out]``, optional) is added to every output
    position, inside the convolution kernel on torch, ``bias_add`` on TensorFlow.

    >>> y = conv2d(x, kernel, stride=2, padding="same", bias=b)   # doctest: +SKIP
    """
    xs, ks = shape(x), shape(kernel)
    if len(xs) != 4 or len(ks) != 4:
        raise ValueError(f"Expected x NHWC and kernel HWIO (4-D). Received: x.shape={xs}, kernel.shape={ks}")
    if xs[3] != ks[2]:
        raise ValueError(
            f"Expected x channels == kernel in-channels ({ks[2]}). Received: x.shape={xs}"
        )
    st = _pair(stride, "stride")
    pads = resolve_padding(padding, xs[1:3], ks[0:2], st)
    for n, (lo, hi), k, axis in zip(xs[1:3], pads, ks[0:2], ("height", "width")):
        if n + lo + hi < k:
            raise ValueError(
                f"Expected padded input {axis} >= kernel size {k}. Received: {axis}={n} with pads {(lo, hi)}"
            )
    if bias is not None and tuple(shape(bias)) != (ks[3],):
        raise ValueError(f"Expected bias of shape ({ks[3]},) (the kernel's out-channels). "
                         f"Received: bias.shape={tuple(shape(bias))}")
    return _b().conv2d(x, kernel, st, pads, bias)


def _pool_geometry(x, size, stride, padding):
    """Checked ``(pool size, stride, explicit pads)`` of a pooling call."""
    xs = shape(x)
    if len(xs) != 4:
        raise ValueError(f"Expected x NHWC (4-D). Received: x.shape={xs}")
    k = _pair(size, "pool_size")
    st = k if stride is None else _pair(stride, "stride")
    pads = resolve_padding(padding, xs[1:3], k, st)
    for n, (lo, hi), kk in zip(xs[1:3], pads, k):
        if n + lo + hi < kk:
            raise ValueError(f"Expected input at least pool_size {k}. Received: x.shape={xs}")
    return k, st, pads


def max_pool2d(x, size=2, stride=None, padding: Padding = "valid"):
    """Max pooling over NHWC windows (``stride`` defaults to ``size``).

    Padding per :func:`resolve_padding`; padded cells are ``-inf``; ``"valid"``
    drops incomplete windows at the end. Tied maxima: the whole gradient goes
    to the first maximum of the window in row-major order. That is both
    frameworks' native rule (checked by the tests), so the native kernels are
    used: the earlier formulation that split ties equally (like :func:`max`)
    cost MAML 25-55% of its step time.
    """
    k, st, pads = _pool_geometry(x, size, stride, padding)
    return _b().max_pool2d(x, k, st, pads)


def avg_pool2d(x, size=2, stride=None, padding: Padding = "valid"):
    """Average pooling over NHWC windows; padded cells count as zeros."""
    k, st, pads = _pool_geometry(x, size, stride, padding)
    if any(p != (0, 0) for p in pads):
        x = pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, h, w, c = shape(x)
    oh, ow = (h - k[0]) // st[0] + 1, (w - k[1]) // st[1] + 1
    if st == k:
        # Non-overlapping windows: crop, fold each window into its own axes, average.
        x = x[:, : oh * k[0], : ow * k[1], :]
        return mean(reshape(x, (n, oh, k[0], ow, k[1], c)), (2, 4))
    windows = [
        x[:, i: i + st[0] * (oh - 1) + 1: st[0], j: j + st[1] * (ow - 1) + 1: st[1], :]
        for i in range(k[0]) for j in range(k[1])
    ]
    return mean(stack(windows, axis=0), 0)


def batch_norm(x, scale, offset, axes: Sequence[int] = (0, 1, 2), epsilon: float = 1e-5):
    """Batch normalisation with the batch's own statistics.

    ``(x - mean) / sqrt(var + epsilon) * scale + offset`` with mean and biased
    variance over ``axes``. Returns ``(y, mean, var)`` (kept dims) so callers
    may keep running statistics; all three are differentiable.

    Over all axes but the last (channels), the backends call their fused
    kernels: torch ``native_batch_norm`` (what ``F.batch_norm(training=True)``
    runs; the returned variance is recovered from its ``1/sqrt(var + eps)``,
    clamped at 0); TensorFlow
    ``FusedBatchNormV3`` in float32 only (no float64 kernel: composite there,
    and the raw op, since the Python wrapper raises ``epsilon`` to 1.001e-5).
    Other axes, and float64 on TensorFlow, use the composite formula.
    """
    x = asarray(x)
    nd = len(shape(x))
    try:
        axes = tuple(sorted(int(a) % nd for a in axes))
    except (TypeError, ZeroDivisionError):
        raise ValueError(f"Expected axes to be a sequence of ints. Received: axes={axes!r}") from None
    return _b().batch_norm(x, asarray(scale), asarray(offset), axes, float(epsilon))


# ---- losses -----------------------------------------------------------------------------
def cross_entropy(logits, labels, reduction: str = "mean"):
    """Softmax cross-entropy on integer ``labels``: ``logsumexp(z) - z[label]``.

    ``reduction``: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Fused kernels with exact double backward: torch ``F.cross_entropy``,
    TensorFlow ``tf.nn.sparse_softmax_cross_entropy_with_logits``.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"Expected reduction in ('mean', 'sum', 'none'). Received: reduction={reduction!r}")
    return _b().cross_entropy(asarray(logits), asarray(labels), reduction)


def mse(pred, target, reduction: str = "mean"):
    """Mean squared error ``mean((pred - target)**2)`` over all elements."""
    return _reduce(square(asarray(pred) - asarray(target)), reduction)


def bce_with_logits(logits, targets, reduction: str = "mean"):
    """Binary cross-entropy on logits ``z`` with targets ``y`` in [0, 1]:
    ``softplus(z) - z*y`` (stable for any ``z``; gradient ``sigmoid(z) - y``)."""
    logits = asarray(logits)
    per = softplus(logits) - logits * asarray(targets)
    return _reduce(per, reduction)


def accuracy(logits, labels):
    """Fraction of rows whose argmax equals the label (a float scalar tensor)."""
    from metabridge.config import floatx

    return mean(cast(equal(argmax(logits, -1), cast(labels, "int64")), floatx()))


def _reduce(per, reduction):
    if reduction == "mean":
        return mean(per)
    if reduction == "sum":
        return sum(per)
    if reduction == "none":
        return per
    raise ValueError(f"Expected reduction in ('mean', 'sum', 'none'). Received: reduction={reduction!r}")


# ---- autodiff and compilation -------------------------------------------------------
def value_and_grad(fn, create_graph: bool = False, has_aux: bool = False):
    """``fn(params, *args) -> scalar`` into ``g(params, *args) -> (value, grads)``.

    ``grads`` is a dict with the keys of ``params``. Calls nest: an inner call
    with ``create_graph=True`` inside an outer one gives true second-order
    gradients; ``create_graph=False`` returns gradients that carry no graph.
    """
    return _current().autodiff.value_and_grad(fn, create_graph=create_graph, has_aux=has_aux)


def grad_of_loss_tensor(loss, params: dict, create_graph: bool = False) -> dict:
    """Gradients of an already computed scalar ``loss`` with respect to ``params``
    (a dict of the tensors it was computed from), keyed like ``params``.

    PyTorch only (``torch.autograd.grad``): the loss must have a graph back to
    ``params``, as it does when computed inside :func:`value_and_grad`.
    ``create_graph=True`` keeps the gradients differentiable (second order).
    TensorFlow cannot differentiate a finished tensor and raises ``ValueError``;
    write the loss as a function and use :func:`value_and_grad` there.

    >>> def outer(p):                                           # doctest: +SKIP
    ...     loss = ops.sum(ops.square(p["w"]))
    ...     g = ops.grad_of_loss_tensor(loss, p, create_graph=True)["w"]
    ...     return ops.sum(g)
    >>> ops.value_and_grad(outer)({"w": ops.asarray([1.0, 2.0])})[1]["w"]   # 2 everywhere
    """
    return _current().autodiff.grad_of_loss_tensor(loss, params, create_graph=create_graph)


def compile_function(fn, whole_step: bool = False):
    """The backend's compiled version of ``fn``: ``tf.function`` on TensorFlow;
    on torch eager, or ``torch.compile`` with ``torch.func`` gradients for a
    ``whole_step`` (a training step run thousands of times: compiling takes
    tens of seconds).

    >>> step = compile_function(train_step)   # doctest: +SKIP
    """
    return _current().autodiff.compile_function(fn, whole_step=whole_step)


def while_loop(cond, body, loop_vars: tuple) -> tuple:
    """``while cond(*v): v = body(*v)`` over a tuple of pytrees of tensors:
    ``tf.while_loop`` inside a TensorFlow graph (shapes must stay the same),
    a Python loop otherwise.

    >>> ops.while_loop(lambda i: i < 3, lambda i: (i + 1,), (ops.asarray(0),))   # doctest: +SKIP
    """
    return _current().autodiff.while_loop(cond, body, tuple(loop_vars))


def sum_over_tasks(task_fn, arrays: tuple, n: int):
    """``sum(task_fn(*[a[i] for a in arrays]) for i in range(n))`` over pytrees,
    as a loop the compiled path traces once (a ``tf.while_loop`` on TensorFlow)."""
    return _current().autodiff.sum_over_tasks(task_fn, tuple(arrays), n)

