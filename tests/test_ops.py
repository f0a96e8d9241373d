"""Every op in ``metabridge.ops`` against numpy, on every installed backend.

DESIGN.md §4, "Parity is a feature". Each table entry is a :class:`Case`: the op
written with ``metabridge.ops``, an independent numpy reference of its documented
meaning, and its inputs. The same tables drive

* values against the reference, in float32 and float64;
* gradients (``ops.value_and_grad``) against central finite differences of the
  numpy reference in float64;

and a smaller table of :class:`Composite` functions drives Hessian-vector products
(nested ``value_and_grad``) and torch-vs-TensorFlow parity. Gradients are compared
relative to the size of the whole gradient (``rel_diff``), never element by element.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np
import pytest
from conftest import rel_diff
from numpy_reference import (  # noqa: F401
    N,
    P,
    AWAY,
    LABELS,
    _avoid,
    np_logsumexp,
    np_softmax,
    np_log_softmax,
    np_sigmoid,
    np_cross_entropy,
    np_mse,
    np_bce_with_logits,
    np_pair,
    np_pads,
    np_conv2d,
    np_pool,
    np_max_pool_tie_grad,
    np_batch_norm,
)

import metabridge as mb
from metabridge import ops

# Tolerances (relative to the largest magnitude of the whole array; see rel_diff).
VALUE_TOL = {"float32": 1e-5, "float64": 1e-12}
GRAD_TOL = 1e-6        # autodiff vs central finite differences, float64
HVP_TOL = 1e-6         # nested autodiff vs finite differences of the gradient, float64
PARITY_TOL = 1e-12     # torch vs tensorflow, float64
FD_EPS = 1e-6          # finite-difference step on the numpy reference
HVP_EPS = 1e-5         # finite-difference step on the gradient


# ---- the tables ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    op: Callable                  # (*tensors) -> tensor or tuple, written with metabridge.ops
    ref: Callable                 # (*float64 arrays) -> array or tuple, numpy only
    make: Callable                # rng -> tuple of numpy inputs
    differentiable: bool = True   # gradients w.r.t. every float input
    known_bugs: tuple = ()        # ((backend, test, reason), ...): strict xfail there;
                                  # test is "values" or "grads"

    def __str__(self):
        return self.name


ELEMENTWISE = [
    Case("add-broadcast", ops.add, np.add, lambda r: (N(r, 3, 4), N(r, 4))),
    Case("add-broadcast-both", ops.add, np.add, lambda r: (N(r, 2, 1, 4), N(r, 3, 1))),
    Case("subtract", ops.subtract, np.subtract, lambda r: (N(r, 3, 4), N(r, 3, 1))),
    Case("multiply", ops.multiply, np.multiply, lambda r: (N(r, 2, 1, 4), N(r, 3, 1))),
    Case("divide", ops.divide, np.divide, lambda r: (N(r, 3, 4), AWAY(r, 3, 4))),
    Case("negative", ops.negative, np.negative, lambda r: (N(r, 3, 4),)),
    Case("power-3", lambda x: ops.power(x, 3), lambda x: x ** 3, lambda r: (N(r, 3, 4),)),
    Case("power-2-negative-base", lambda x: ops.power(x, 2), lambda x: x * x, lambda r: (N(r, 3, 4),)),
    Case("power-0.5", lambda x: ops.power(x, 0.5), np.sqrt, lambda r: (P(r, 3, 4),)),
    Case("power-1.5", lambda x: ops.power(x, 1.5), lambda x: x * np.sqrt(x), lambda r: (P(r, 3, 4),)),
    Case("exp", ops.exp, np.exp, lambda r: (N(r, 3, 4),)),
    Case("log", ops.log, np.log, lambda r: (P(r, 3, 4),)),
    Case("log1p", ops.log1p, np.log1p, lambda r: (r.uniform(-0.5, 2.0, (3, 4)),)),
    Case("log1p-tiny", ops.log1p, np.log1p, lambda r: (N(r, 3, 4, scale=1e-10),)),
    Case("sqrt", ops.sqrt, np.sqrt, lambda r: (P(r, 3, 4),)),
    Case("abs", ops.abs, np.abs, lambda r: (AWAY(r, 3, 4),)),
    Case("square", ops.square, np.square, lambda r: (N(r, 3, 4),)),
    Case("maximum", ops.maximum, np.maximum, lambda r: (N(r, 3, 4), N(r, 3, 4))),
    Case("maximum-broadcast", ops.maximum, np.maximum, lambda r: (N(r, 3, 4), N(r, 4))),
    Case("minimum", ops.minimum, np.minimum, lambda r: (N(r, 3, 4), N(r, 3, 4))),
    Case("where", ops.where, np.where, lambda r: (r.random((3, 4)) < 0.5, N(r, 3, 4), N(r, 3, 4))),
    Case("where-broadcast", ops.where, np.where, lambda r: (r.random((3, 4)) < 0.5, N(r, 3, 4), N(r, 4))),
    Case("clip", lambda x: ops.clip(x, -0.5, 1.0), lambda x: np.clip(x, -0.5, 1.0),
         lambda r: (_avoid(N(r, 4, 5), (-0.5, 1.0)),)),
    Case("equal", ops.equal, np.equal,
         lambda r: (r.integers(0, 3, (3, 4)).astype(float), r.integers(0, 3, (3, 4)).astype(float)),
         differentiable=False),
]

ACTIVATIONS = [
    Case("relu", ops.relu, lambda x: np.maximum(x, 0.0), lambda r: (AWAY(r, 3, 4),)),
    Case("sigmoid", ops.sigmoid, np_sigmoid, lambda r: (N(r, 3, 4, scale=3.0),)),
    Case("tanh", ops.tanh, np.tanh, lambda r: (N(r, 3, 4, scale=2.0),)),
    Case("softmax-last", ops.softmax, np_softmax, lambda r: (N(r, 2, 3, 4),)),
    Case("softmax-axis0", lambda x: ops.softmax(x, 0), lambda x: np_softmax(x, 0), lambda r: (N(r, 3, 4),)),
    Case("softmax-axis1", lambda x: ops.softmax(x, 1), lambda x: np_softmax(x, 1),
         lambda r: (N(r, 2, 3, 4),)),
    Case("log_softmax-last", ops.log_softmax, np_log_softmax, lambda r: (N(r, 2, 3, 4),)),
    Case("log_softmax-axis0", lambda x: ops.log_softmax(x, 0), lambda x: np_log_softmax(x, 0),
         lambda r: (N(r, 3, 4),)),
    Case("softmax-large", ops.softmax, np_softmax, lambda r: (N(r, 3, 5, scale=1000.0),),
         differentiable=False),
    Case("log_softmax-large", ops.log_softmax, np_log_softmax, lambda r: (N(r, 3, 5, scale=1000.0),),
         differentiable=False),
]


def _reduction_cases():
    table = {"sum": (ops.sum, np.sum), "mean": (ops.mean, np.mean), "max": (ops.max, np.max),
             "min": (ops.min, np.min), "var": (ops.var, np.var)}
    cases = []
    for (name, (op, ref)), axis, keepdims in itertools.product(
            table.items(), [None, 0, -1, (0, 2), (1, 2)], [False, True]):
        cases.append(Case(
            f"{name}-axis={axis}-keepdims={keepdims}",
            lambda x, op=op, axis=axis, keepdims=keepdims: op(x, axis, keepdims),
            lambda x, ref=ref, axis=axis, keepdims=keepdims: ref(x, axis=axis, keepdims=keepdims),
            lambda r: (N(r, 2, 3, 4),)))
    for axis, keepdims in itertools.product([-1, 0, 1, (0, 2)], [False, True]):
        cases.append(Case(
            f"logsumexp-axis={axis}-keepdims={keepdims}",
            lambda x, axis=axis, keepdims=keepdims: ops.logsumexp(x, axis, keepdims),
            lambda x, axis=axis, keepdims=keepdims: np_logsumexp(x, axis, keepdims),
            lambda r: (N(r, 2, 3, 4),)))
    cases.append(Case("logsumexp-large", ops.logsumexp, np_logsumexp,
                      lambda r: (N(r, 3, 5, scale=1000.0),), differentiable=False))
    tied = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 1.0, 2.0], [0.0, -1.0, 5.0, 5.0]])
    ties = lambda r: (tied,)  # noqa: E731
    for axis in (-1, 0, 1):
        cases.append(Case(f"argmax-axis={axis}-ties", lambda x, axis=axis: ops.argmax(x, axis),
                          lambda x, axis=axis: np.argmax(x, axis=axis), ties, differentiable=False))
    cases.append(Case("argmax-3d", lambda x: ops.argmax(x, 1), lambda x: np.argmax(x, axis=1),
                      lambda r: (N(r, 2, 3, 4),), differentiable=False))
    return cases


SHAPES = [
    Case("reshape", lambda x: ops.reshape(x, (4, -1)), lambda x: x.reshape(4, -1),
         lambda r: (N(r, 2, 3, 4),)),
    Case("transpose", lambda x: ops.transpose(x, (2, 0, 1)), lambda x: np.transpose(x, (2, 0, 1)),
         lambda r: (N(r, 2, 3, 4),)),
    Case("concat-axis0", lambda a, b: ops.concat([a, b], 0), lambda a, b: np.concatenate([a, b], 0),
         lambda r: (N(r, 2, 3), N(r, 1, 3))),
    Case("concat-last", lambda a, b, c: ops.concat([a, b, c], -1),
         lambda a, b, c: np.concatenate([a, b, c], -1),
         lambda r: (N(r, 2, 3), N(r, 2, 1), N(r, 2, 2))),
    Case("stack-axis0", lambda a, b: ops.stack([a, b], 0), lambda a, b: np.stack([a, b], 0),
         lambda r: (N(r, 2, 3), N(r, 2, 3))),
    Case("stack-last", lambda a, b, c: ops.stack([a, b, c], -1), lambda a, b, c: np.stack([a, b, c], -1),
         lambda r: (N(r, 2, 3), N(r, 2, 3), N(r, 2, 3))),
    Case("gather-axis0-list", lambda x: ops.gather(x, [2, 0, 2]), lambda x: np.take(x, [2, 0, 2], 0),
         lambda r: (N(r, 3, 4),)),
    Case("gather-axis1-2d-indices", lambda x, i: ops.gather(x, i, 1), lambda x, i: np.take(x, i, 1),
         lambda r: (N(r, 2, 4, 3), np.array([[0, 3], [2, 2]]))),
    Case("gather-axis-2", lambda x, i: ops.gather(x, i, -2), lambda x, i: np.take(x, i, -2),
         lambda r: (N(r, 2, 4, 3), np.array([3, 0, 1]))),
    Case("gather-axis-1", lambda x, i: ops.gather(x, i, -1), lambda x, i: np.take(x, i, -1),
         lambda r: (N(r, 3, 4), np.array([1, 0]))),
    Case("take_along_last-2d", ops.take_along_last,
         lambda x, i: np.take_along_axis(x, i[..., None], -1)[..., 0],
         lambda r: (N(r, 4, 5), LABELS(r, 5, 4))),
    Case("take_along_last-3d", ops.take_along_last,
         lambda x, i: np.take_along_axis(x, i[..., None], -1)[..., 0],
         lambda r: (N(r, 2, 3, 5), LABELS(r, 5, 2, 3))),
    Case("one_hot", lambda i: ops.one_hot(i, 4), lambda i: np.eye(4)[i],
         lambda r: (np.array([0, 3, 1, 1, 2]),), differentiable=False),
    Case("one_hot-2d", lambda i: ops.one_hot(i, 3), lambda i: np.eye(3)[i],
         lambda r: (LABELS(r, 3, 2, 4),), differentiable=False),
    Case("pad-2d-value", lambda x: ops.pad(x, ((1, 0), (0, 2)), 1.5),
         lambda x: np.pad(x, ((1, 0), (0, 2)), constant_values=1.5), lambda r: (N(r, 2, 3),)),
    Case("pad-nhwc", lambda x: ops.pad(x, ((0, 0), (2, 1), (0, 1), (0, 0))),
         lambda x: np.pad(x, ((0, 0), (2, 1), (0, 1), (0, 0))), lambda r: (N(r, 2, 3, 3, 2),)),
    Case("flatten", ops.flatten, lambda x: x.reshape(x.shape[0], -1), lambda r: (N(r, 2, 3, 2, 2),)),
    Case("matmul", ops.matmul, np.matmul, lambda r: (N(r, 3, 4), N(r, 4, 5))),
    Case("matmul-batched", ops.matmul, np.matmul, lambda r: (N(r, 2, 3, 4), N(r, 2, 4, 5))),
    Case("matmul-broadcast", ops.matmul, np.matmul, lambda r: (N(r, 2, 3, 4), N(r, 4, 2))),
    Case("broadcast_to-new-leading-axis", lambda x: ops.broadcast_to(x, (3, 2, 4)),
         lambda x: np.broadcast_to(x, (3, 2, 4)), lambda r: (N(r, 2, 4),)),
    Case("broadcast_to-size-1-axes", lambda x: ops.broadcast_to(x, (2, 3, 4)),
         lambda x: np.broadcast_to(x, (2, 3, 4)), lambda r: (N(r, 3, 1),)),
]

CONV_SPECS = [  # (x shape NHWC, kernel shape HWIO, stride, padding)
    ((2, 5, 5, 2), (3, 3, 2, 3), 1, "same"),               # symmetric (1, 1)
    ((1, 5, 6, 2), (2, 2, 2, 2), 1, "same"),               # even kernel: (0, 1)
    ((2, 6, 6, 2), (3, 3, 2, 3), 2, "same"),               # stride 2: (0, 1), more at bottom/right
    ((1, 5, 5, 2), (3, 3, 2, 2), 2, "same"),               # stride 2: (1, 1)
    ((1, 7, 7, 1), (4, 4, 1, 2), 2, "same"),               # (1, 2)
    ((1, 7, 7, 1), (2, 2, 1, 1), 3, "SAME"),               # stride > kernel, upper-case spelling
    ((1, 6, 5, 2), (3, 2, 2, 2), (2, 1), "same"),          # rectangular stride and kernel
    ((2, 5, 5, 2), (3, 3, 2, 3), 1, "valid"),
    ((1, 7, 6, 2), (3, 3, 2, 2), 2, "valid"),
    ((1, 4, 4, 1), (4, 4, 1, 1), 1, "valid"),              # kernel == input
    ((1, 5, 5, 2), (3, 3, 2, 2), 2, 1),                    # int padding
    ((1, 5, 5, 2), (3, 3, 2, 2), 1, ((0, 2), (1, 0))),     # explicit, asymmetric
    ((1, 6, 7, 2), (3, 3, 2, 2), (1, 2), ((2, 1), (0, 1))),  # explicit with rectangular stride
]

CONV = [
    Case(f"conv2d-x{xs}-k{ks}-s{st}-p{pd}",
         lambda x, k, st=st, pd=pd: ops.conv2d(x, k, st, pd),
         lambda x, k, st=st, pd=pd: np_conv2d(x, k, st, pd),
         lambda r, xs=xs, ks=ks: (N(r, *xs), N(r, *ks)))
    for xs, ks, st, pd in CONV_SPECS
] + [
    Case(f"conv2d-bias-x{xs}-k{ks}-s{st}-p{pd}",
         lambda x, k, b, st=st, pd=pd: ops.conv2d(x, k, st, pd, bias=b),
         lambda x, k, b, st=st, pd=pd: np_conv2d(x, k, st, pd) + b,
         lambda r, xs=xs, ks=ks: (N(r, *xs), N(r, *ks), N(r, ks[3])))
    for xs, ks, st, pd in (CONV_SPECS[0], CONV_SPECS[2], CONV_SPECS[11])
]

POOL_SPECS = [  # (x shape, size, stride, padding)
    ((2, 4, 4, 2), 2, None, "valid"),       # non-overlapping
    ((1, 5, 5, 2), 2, None, "valid"),       # incomplete windows dropped
    ((1, 5, 5, 2), 2, None, "same"),        # non-overlapping, padded (0, 1)
    ((1, 7, 7, 2), 3, 2, "valid"),          # overlapping
    ((1, 6, 6, 2), 3, 2, "same"),           # overlapping, padded (0, 1)
    ((1, 7, 5, 1), (3, 2), (2, 1), "same"),  # rectangular
    ((1, 7, 7, 1), 2, 3, "valid"),          # stride > size
    ((1, 4, 4, 1), 3, 1, 1),                # int padding
]

POOLS = [
    Case(f"{kind}_pool2d-x{xs}-k{size}-s{st}-p{pd}",
         lambda x, op=op, size=size, st=st, pd=pd: op(x, size, st, pd),
         lambda x, kind=kind, size=size, st=st, pd=pd: np_pool(x, size, st, pd, kind),
         lambda r, xs=xs: (N(r, *xs),))
    for kind, op in (("max", ops.max_pool2d), ("avg", ops.avg_pool2d))
    for xs, size, st, pd in POOL_SPECS
]

NORM = [
    Case("batch_norm", ops.batch_norm, np_batch_norm,
         lambda r: (N(r, 4, 3, 3, 2, scale=2.0) + 1.0, P(r, 2), N(r, 2))),
    Case("batch_norm-epsilon-matters",
         lambda x, s, o: ops.batch_norm(x, s, o, epsilon=1e-3),
         lambda x, s, o: np_batch_norm(x, s, o, epsilon=1e-3),
         lambda r: (N(r, 3, 2, 2, 3, scale=0.03), P(r, 3), N(r, 3))),
    Case("batch_norm-dense-axes0",
         lambda x, s, o: ops.batch_norm(x, s, o, axes=(0,)),
         lambda x, s, o: np_batch_norm(x, s, o, axes=(0,)),
         lambda r: (N(r, 6, 3), P(r, 3), N(r, 3))),
]


def _loss_cases():
    cases = []
    for red in ("mean", "sum", "none"):
        cases += [
            Case(f"cross_entropy-{red}", lambda z, y, red=red: ops.cross_entropy(z, y, red),
                 lambda z, y, red=red: np_cross_entropy(z, y, red), lambda r: (N(r, 5, 4), LABELS(r, 4, 5))),
            Case(f"mse-{red}", lambda p, t, red=red: ops.mse(p, t, red),
                 lambda p, t, red=red: np_mse(p, t, red), lambda r: (N(r, 4, 3), N(r, 4, 3))),
            Case(f"bce_with_logits-{red}", lambda z, y, red=red: ops.bce_with_logits(z, y, red),
                 lambda z, y, red=red: np_bce_with_logits(z, y, red),
                 lambda r: (N(r, 4, 3, scale=2.0), r.random((4, 3)))),
        ]
    cases += [
        Case("cross_entropy-3d", ops.cross_entropy, np_cross_entropy,
             lambda r: (N(r, 2, 3, 4), LABELS(r, 4, 2, 3))),
        Case("cross_entropy-large-logits", lambda z, y: ops.cross_entropy(z, y, "none"),
             lambda z, y: np_cross_entropy(z, y, "none"),
             lambda r: (N(r, 5, 4, scale=1000.0), LABELS(r, 4, 5)), differentiable=False),
        Case("bce_with_logits-large", lambda z, y: ops.bce_with_logits(z, y, "none"),
             lambda z, y: np_bce_with_logits(z, y, "none"),
             lambda r: (np.array([-1e4, -800.0, -100.0, 0.0, 100.0, 800.0, 1e4]), r.random(7)),
             differentiable=False),
        Case("accuracy", ops.accuracy, lambda z, y: np.mean(np.argmax(z, -1) == y),
             lambda r: (np.array([[0.1, 2.0, 2.0], [3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]),
                        np.array([1, 0, 0, 1])), differentiable=False),
    ]
    return cases


CASES = ELEMENTWISE + ACTIVATIONS + _reduction_cases() + SHAPES + CONV + POOLS + NORM + _loss_cases()
GRAD_CASES = [c for c in CASES if c.differentiable]


# ---- helpers -------------------------------------------------------------------------------------
@pytest.fixture(params=["float32", "float64"])
def precision(request):
    """Values are checked in both float precisions (float32 restored afterwards)."""
    mb.set_floatx(request.param)
    try:
        yield request.param
    finally:
        mb.set_floatx("float32")


def _mark_known_bugs(request, case, backend, test):
    for name, kind, reason in case.known_bugs:
        if (name, kind) == (backend, test):
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def _is_float(a):
    return np.asarray(a).dtype.kind == "f"


def _inputs(case, dtype="float64"):
    """The case's inputs, floats rounded to ``dtype`` (so the reference sees the same
    numbers as the backend) and held as float64 for the reference."""
    arrays = case.make(np.random.default_rng(0))
    return [np.asarray(a).astype(dtype).astype(np.float64) if _is_float(a) else np.asarray(a) for a in arrays]


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _weights(outputs):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(np.shape(o)) for o in outputs]


def _weighted_sum_np(case, weights):
    return lambda *xs: float(sum(np.sum(o * w) for o, w in zip(_as_tuple(case.ref(*xs)), weights)))


def _fd_grad(f, arrays, i, eps=FD_EPS):
    """Central differences of scalar ``f(*arrays)`` w.r.t. ``arrays[i]``."""
    x = arrays[i]
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        args = list(arrays)
        for sign in (1.0, -1.0):
            xp = x.copy()
            xp[idx] += sign * eps
            args[i] = xp
            grad[idx] += sign * f(*args)
        grad[idx] /= 2 * eps
    return grad


def _flat(d, keys):
    return np.concatenate([np.ravel(d[k]) for k in keys])


# ---- 1. values --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=str)
def test_values_match_numpy(backend, precision, case, request):
    _mark_known_bugs(request, case, backend, "values")
    arrays = _inputs(case, precision)
    got = _as_tuple(case.op(*[ops.asarray(a) for a in arrays]))
    want = _as_tuple(case.ref(*arrays))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g, w = ops.to_numpy(g), np.asarray(w)
        assert g.shape == w.shape
        if w.dtype.kind == "f":
            assert g.dtype == np.dtype(precision)
            assert np.all(np.isfinite(g))
            assert rel_diff(g, w) <= VALUE_TOL[precision]
        else:
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


def test_resolve_padding_documented_example():
    assert ops.resolve_padding("same", (28, 28), (3, 3), (2, 2)) == ((0, 1), (0, 1))


@pytest.mark.parametrize("padding, in_hw, k, s, expected", [
    ("valid", (5, 5), (3, 3), (1, 1), ((0, 0), (0, 0))),
    ("same", (5, 5), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ("same", (5, 6), (2, 2), (1, 1), ((0, 1), (0, 1))),
    ("same", (7, 5), (4, 3), (2, 2), ((1, 2), (1, 1))),
    ("same", (2, 2), (5, 5), (3, 3), ((1, 2), (1, 2))),
    ("SAME", (1, 1), (1, 1), (4, 4), ((0, 0), (0, 0))),
    (2, (5, 5), (3, 3), (1, 1), ((2, 2), (2, 2))),
    (((0, 2), (1, 0)), (5, 5), (3, 3), (1, 1), ((0, 2), (1, 0))),
])
def test_resolve_padding(padding, in_hw, k, s, expected):
    assert ops.resolve_padding(padding, in_hw, k, s) == expected
    assert np_pads(padding, in_hw, k, s) == expected


@pytest.mark.parametrize("xs, ks, stride", [((1, 6, 6, 2), (3, 3, 2, 2), 2),
                                            ((1, 7, 5, 1), (4, 2, 1, 2), (2, 3)),
                                            ((1, 5, 6, 1), (2, 2, 1, 1), 1)])
def test_reference_same_rule_is_tensorflows(xs, ks, stride):
    """The numpy reference's ``"same"`` is TensorFlow's own ``SAME`` (conv and max pool)."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    x, k = N(rng, *xs), N(rng, *ks)
    s = np_pair(stride)
    x_tf, k_tf = tf.constant(x, tf.float64), tf.constant(k, tf.float64)
    want = tf.nn.conv2d(x_tf, k_tf, strides=(1, *s, 1), padding="SAME").numpy()
    assert rel_diff(np_conv2d(x, k, stride, "same"), want) < 1e-12
    want = tf.nn.max_pool2d(x_tf, ks[:2], strides=s, padding="SAME").numpy()
    assert rel_diff(np_pool(x, ks[:2], stride, "same", "max"), want) < 1e-12


def test_conversion_ops(backend, float64):
    x = ops.asarray(np.arange(6.0).reshape(2, 3))
    assert ops.is_tensor(x) and not ops.is_tensor(np.zeros(2))
    assert ops.asarray(x) is x
    assert ops.shape(x) == (2, 3)
    assert ops.to_numpy(ops.cast(x, "int64")).dtype == np.int64
    assert ops.to_numpy(ops.cast(x, "float32")).dtype == np.float32
    assert ops.to_numpy(ops.cast(ops.asarray([0.0, 2.0]), "bool")).tolist() == [False, True]
    np.testing.assert_array_equal(ops.to_numpy(ops.zeros((2, 1))), np.zeros((2, 1)))
    assert ops.to_numpy(ops.zeros((2,), "int32")).dtype == np.int32
    for scalar in (np.int64(3), np.bool_(True), np.float64(2.5), 7, np.array(1.5)):  # 0-d stays 0-d
        assert ops.shape(ops.asarray(scalar)) == ()
        assert ops.to_numpy(ops.asarray(scalar)) == scalar
    np.testing.assert_array_equal(ops.to_numpy(ops.zeros_like(x)), np.zeros((2, 3)))
    np.testing.assert_array_equal(ops.to_numpy(ops.ones_like(x)), np.ones((2, 3)))
    assert ops.to_numpy(ops.ones_like(x)).dtype == np.float64


def test_logical_ops_and_while_loop(backend):
    a, b = ops.asarray(np.array([True, True, False])), ops.asarray(np.array([True, False, False]))
    assert ops.to_numpy(ops.logical_and(a, b)).tolist() == [True, False, False]
    assert ops.to_numpy(ops.logical_not(b)).tolist() == [False, True, True]

    def body(i, total):
        return i + 1, total + ops.cast(i, ops.dtype_name(total))

    for run in (lambda f: f, ops.compile_function):  # eagerly and inside the compiled path
        loop = run(lambda n: ops.while_loop(lambda i, t: i < n, body,
                                            (ops.asarray(np.int64(0)), ops.asarray(np.float64(0.0)))))
        i, total = loop(ops.asarray(np.int64(5)))
        assert int(ops.to_numpy(i)) == 5 and float(ops.to_numpy(total)) == 10.0


def test_loss_gradients_stable_for_large_logits(backend, precision):
    """Analytic gradients: CE -> (softmax - one_hot) / n, BCE -> (sigmoid - y) / n."""
    rng = np.random.default_rng(0)
    z = N(rng, 5, 4, scale=1000.0).astype(precision).astype(np.float64)
    y = LABELS(rng, 4, 5)
    _, g = ops.value_and_grad(lambda p: ops.cross_entropy(p["z"], ops.asarray(y)))({"z": z})
    assert rel_diff(ops.to_numpy(g["z"]), (np_softmax(z) - np.eye(4)[y]) / 5) <= VALUE_TOL[precision]
    z = np.array([-1e4, -800.0, -100.0, -30.0, 30.0, 100.0, 800.0, 1e4])
    t = rng.random(8).astype(precision).astype(np.float64)
    _, g = ops.value_and_grad(lambda p: ops.bce_with_logits(p["z"], ops.asarray(t)))({"z": z})
    assert rel_diff(ops.to_numpy(g["z"]), (np_sigmoid(z) - t) / 8) <= VALUE_TOL[precision]


def test_bce_with_logits_gradient_at_zero_logit(backend, float64):
    y = np.array([0.0, 0.2, 0.5, 1.0])
    loss = lambda p: ops.bce_with_logits(p["z"], ops.asarray(y), "sum")  # noqa: E731
    _, g = ops.value_and_grad(loss)({"z": np.zeros(4)})
    np.testing.assert_allclose(ops.to_numpy(g["z"]), 0.5 - y, rtol=0, atol=1e-15)


# ---- 2. gradients ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradients_match_finite_differences(backend, float64, case, request):
    """d/dx sum(op(x) * w) for fixed random w, against central differences in numpy."""
    _mark_known_bugs(request, case, backend, "grads")
    arrays = _inputs(case)
    wrt = [i for i, a in enumerate(arrays) if _is_float(a)]
    weights = _weights(_as_tuple(case.ref(*arrays)))
    f_np = _weighted_sum_np(case, weights)

    def f(params):
        xs = [params[f"x{i}"] if i in wrt else ops.asarray(a) for i, a in enumerate(arrays)]
        terms = [ops.sum(ops.multiply(o, ops.asarray(w))) for o, w in zip(_as_tuple(case.op(*xs)), weights)]
        return sum(terms[1:], terms[0])

    value, grads = ops.value_and_grad(f)({f"x{i}": arrays[i] for i in wrt})
    assert rel_diff(ops.to_numpy(value), f_np(*arrays)) <= VALUE_TOL["float64"]
    keys = [f"x{i}" for i in wrt]
    got = _flat({k: ops.to_numpy(grads[k]) for k in keys}, keys)
    want = np.concatenate([np.ravel(_fd_grad(f_np, arrays, i)) for i in wrt])
    assert got.dtype == np.float64
    assert rel_diff(got, want) < GRAD_TOL


def test_stop_gradient(backend, float64):
    x = np.array([1.0, -2.0, 3.0])
    _, g = ops.value_and_grad(lambda p: ops.sum(ops.stop_gradient(p["x"]) * p["x"]))({"x": x})
    np.testing.assert_array_equal(ops.to_numpy(g["x"]), x)


# ---- 3. second order -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Composite:
    name: str
    fn: Callable     # (params: dict of tensors, consts: dict of tensors) -> scalar
    make: Callable   # rng -> (params dict, consts dict), numpy

    def __str__(self):
        return self.name


def _conv_bn_ce(p, c):
    h = ops.tanh(ops.conv2d(p["x"], p["k"], stride=2, padding="same"))  # 4x4 -> 2x2, pads (0, 1)
    h, _, _ = ops.batch_norm(h, p["scale"], p["offset"])
    return ops.cross_entropy(ops.mean(h, (1, 2)), c["labels"])


def _conv_maxpool_lse(p, c):
    h = ops.tanh(ops.conv2d(p["x"], p["k"], stride=(1, 2), padding=((1, 0), (0, 2))))
    h = ops.max_pool2d(h, 3, 2, "same")
    return ops.sum(ops.logsumexp(ops.flatten(h), -1))


def _conv_bias_bn_pool(p, c):  # Conv4's block: conv (+ bias in the kernel), batch norm, relu, max-pool
    h = ops.conv2d(p["x"], p["k"], padding="same", bias=p["b"])
    h, _, _ = ops.batch_norm(ops.tanh(h), p["scale"], p["offset"])
    return ops.sum(ops.max_pool2d(ops.relu(h), 2) * c["w"])


def _tasks_matmul(p, c):  # MAML's batched meta-batch: parameters broadcast over a task axis
    k = ops.broadcast_to(p["k"], (3,) + tuple(ops.shape(p["k"])))
    return ops.sum(ops.tanh(ops.matmul(c["x"], k)) * c["w"])


def _avgpool_bn_mse(p, c):
    h, _, _ = ops.batch_norm(ops.avg_pool2d(p["x"], 2, padding="same"), p["scale"], p["offset"])
    return ops.mse(ops.sigmoid(h), c["target"])


COMPOSITES = [
    Composite("conv2d+bias->tanh->batch_norm->relu->max_pool2d", _conv_bias_bn_pool, lambda r: (
        {"x": N(r, 3, 4, 4, 2), "k": N(r, 3, 3, 2, 3, scale=0.5), "b": N(r, 3), "scale": P(r, 3),
         "offset": N(r, 3)}, {"w": N(r, 3, 2, 2, 3)})),
    Composite("broadcast_to->batched matmul->tanh", _tasks_matmul, lambda r: (
        {"k": N(r, 4, 2, scale=0.5)}, {"x": N(r, 3, 5, 4), "w": N(r, 3, 5, 2)})),
    Composite("tanh(conv2d same s2)->batch_norm->cross_entropy", _conv_bn_ce, lambda r: (
        {"x": N(r, 3, 4, 4, 2), "k": N(r, 3, 3, 2, 3, scale=0.5), "scale": P(r, 3), "offset": N(r, 3)},
        {"labels": LABELS(r, 3, 3)})),
    Composite("conv2d explicit->max_pool2d same->logsumexp", _conv_maxpool_lse, lambda r: (
        {"x": N(r, 2, 5, 6, 2), "k": N(r, 3, 3, 2, 2, scale=0.5)}, {})),
    Composite("avg_pool2d same->batch_norm->sigmoid->mse", _avgpool_bn_mse, lambda r: (
        {"x": N(r, 3, 5, 5, 2), "scale": P(r, 2), "offset": N(r, 2)}, {"target": r.random((3, 3, 3, 2))})),
    Composite("log_softmax", lambda p, c: ops.sum(ops.log_softmax(p["x"]) * c["w"]),
              lambda r: ({"x": N(r, 3, 5)}, {"w": N(r, 3, 5)})),
    Composite("matmul->sigmoid", lambda p, c: ops.sum(ops.sigmoid(ops.matmul(p["a"], p["b"])) * c["w"]),
              lambda r: ({"a": N(r, 2, 3, 4), "b": N(r, 4, 5)}, {"w": N(r, 2, 3, 5)})),
    Composite("bce_with_logits", lambda p, c: ops.bce_with_logits(p["z"], c["y"]),
              lambda r: ({"z": N(r, 4, 3, scale=2.0)}, {"y": r.random((4, 3))})),
    Composite("softmax->var", lambda p, c: ops.sum(ops.var(ops.softmax(p["x"], 0), axis=1)),
              lambda r: ({"x": N(r, 4, 5)}, {})),
]


def _evaluate(comp):
    """Value, gradient and Hessian-vector product of ``comp`` on the active backend."""
    params, consts = comp.make(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    v = {k: rng.standard_normal(a.shape) for k, a in params.items()}
    c = {k: ops.asarray(a) for k, a in consts.items()}
    inner = ops.value_and_grad(comp.fn, create_graph=True)

    def grad_dot_v(p, c, v):
        _, g = inner(p, c)
        terms = [ops.sum(g[k] * v[k]) for k in p]
        return sum(terms[1:], terms[0])

    value, grads = ops.value_and_grad(comp.fn)(params, c)
    _, hv = ops.value_and_grad(grad_dot_v)(params, c, {k: ops.asarray(a) for k, a in v.items()})
    keys = sorted(params)
    out = {"value": ops.to_numpy(value), "grad": _flat({k: ops.to_numpy(grads[k]) for k in keys}, keys),
           "hvp": _flat({k: ops.to_numpy(hv[k]) for k in keys}, keys)}
    return out, params, c, v, keys


@pytest.mark.parametrize("comp", COMPOSITES, ids=str)
def test_hessian_vector_product_matches_finite_differences(backend, float64, comp):
    got, params, c, v, keys = _evaluate(comp)

    def grad_at(t):
        p = {k: params[k] + t * v[k] for k in params}
        _, g = ops.value_and_grad(comp.fn)(p, c)
        return _flat({k: ops.to_numpy(g[k]) for k in keys}, keys)

    want = (grad_at(HVP_EPS) - grad_at(-HVP_EPS)) / (2 * HVP_EPS)
    assert got["hvp"].dtype == np.float64
    assert np.max(np.abs(want)) > 1e-3  # a real second-order signal, not a zero test
    assert rel_diff(got["hvp"], want) < HVP_TOL


# ---- 4. tied maxima ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size, stride, padding", [(2, None, "valid"), (2, None, "same"), (3, 2, "valid"),
                                                   (3, 2, "same"), (3, 1, 1)])
def test_max_pool_ties_give_the_gradient_to_the_first_maximum(backend, float64, size, stride, padding):
    rng = np.random.default_rng(0)
    h = np.maximum(np.round(N(rng, 2, 7, 7, 2)), 0.0)  # relu'd integers: many ties
    h[0, :3, :3, :] = 0.0                               # an all-zero window
    h[1, :2, :2, 0] = [[2.0, 2.0], [1.0, 2.0]]          # three tied maxima
    out_shape = np_pool(h, size, stride, padding, "max").shape
    w = rng.standard_normal(out_shape)
    loss = lambda p: ops.sum(ops.max_pool2d(p["h"], size, stride, padding) * ops.asarray(w))  # noqa: E731
    _, g = ops.value_and_grad(loss)({"h": h})
    want = np_max_pool_tie_grad(h, w, size, stride, padding)
    assert rel_diff(ops.to_numpy(g["h"]), want) < 1e-12
    if size == 2 and stride is None:  # the all-zero window: its top-left cell takes it all
        np.testing.assert_allclose(ops.to_numpy(g["h"])[0, 0, 0, :], w[0, 0, 0], rtol=0, atol=1e-15)
        np.testing.assert_allclose(ops.to_numpy(g["h"])[0, :2, :2, :].sum(axis=(0, 1)), w[0, 0, 0],
                                   rtol=0, atol=1e-15)


@pytest.mark.parametrize("name, axis", [("max", None), ("max", -1), ("max", (0, 1)),
                                        ("min", 0), ("min", None)])
def test_reduce_ties_share_gradient_equally(backend, float64, name, axis):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [3.0, 0.0, 3.0]])
    op, ref = (ops.max, np.max) if name == "max" else (ops.min, np.min)
    _, g = ops.value_and_grad(lambda p: ops.sum(op(p["x"], axis)))({"x": x})
    hit = x == ref(x, axis=axis, keepdims=True)
    share = hit / hit.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(ops.to_numpy(g["x"]), share, rtol=0, atol=1e-15)


# ---- 5. parity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("comp", COMPOSITES, ids=str)
def test_torch_tensorflow_parity(both_backends, float64, comp):
    results = {}
    for name in both_backends:
        with mb.use_backend(name):
            results[name] = _evaluate(comp)[0]
    for what in ("value", "grad", "hvp"):
        assert rel_diff(results["torch"][what], results["tensorflow"][what]) < PARITY_TOL, what


def test_parity_of_plain_ops(both_backends, float64):
    """One forward pass through several ops at once, same numbers on both frameworks."""
    rng = np.random.default_rng(0)
    x, k, s, o = N(rng, 2, 6, 6, 3), N(rng, 3, 3, 3, 4), P(rng, 4), N(rng, 4)
    z, y = N(rng, 2, 5, scale=30.0), LABELS(rng, 5, 2)
    out = {}
    for name in both_backends:
        with mb.use_backend(name):
            h = ops.relu(ops.conv2d(ops.asarray(x), ops.asarray(k), 2, "same"))
            h = ops.batch_norm(h, ops.asarray(s), ops.asarray(o))[0]
            h = ops.max_pool2d(h, 3, 2, "same") + ops.avg_pool2d(h, 2, 1, "valid")[:, :2, :2, :]
            out[name] = [ops.to_numpy(h), ops.to_numpy(ops.log_softmax(ops.asarray(z))),
                         ops.to_numpy(ops.cross_entropy(ops.asarray(z), ops.asarray(y), "none"))]
    for a, b in zip(out["torch"], out["tensorflow"]):
        assert rel_diff(a, b) < PARITY_TOL


# ---- 6. bad input --------------------------------------------------------------------------------------
def _bad_conv(xs, ks, stride=1, padding="same"):
    return lambda: ops.conv2d(ops.asarray(np.zeros(xs)), ops.asarray(np.zeros(ks)), stride, padding)


@pytest.mark.parametrize("call", [
    pytest.param(_bad_conv((1, 5, 5, 3), (3, 3, 2, 4)), id="channels-mismatch"),
    pytest.param(_bad_conv((5, 5, 3), (3, 3, 3, 4)), id="x-not-4d"),
    pytest.param(_bad_conv((1, 5, 5, 3), (3, 3, 3, 4), padding="full"), id="padding-string"),
    pytest.param(_bad_conv((1, 5, 5, 3), (3, 3, 3, 4), padding=-1), id="padding-negative"),
    pytest.param(_bad_conv((1, 5, 5, 3), (3, 3, 3, 4), padding=((1, 1),)), id="padding-one-pair"),
    pytest.param(_bad_conv((1, 3, 3, 1), (5, 5, 1, 1), padding="valid"), id="kernel-bigger-than-input"),
    pytest.param(_bad_conv((1, 2, 2, 1), (5, 5, 1, 1), padding=1), id="kernel-bigger-than-padded-input"),
    pytest.param(_bad_conv((1, 5, 5, 1), (3, 3, 1, 1), stride=0), id="stride-0"),
    pytest.param(_bad_conv((1, 5, 5, 1), (3, 3, 1, 1), stride=-2), id="stride-negative"),
    pytest.param(_bad_conv((1, 5, 5, 1), (3, 3, 1, 1), stride=(2,)), id="stride-one-entry"),
    pytest.param(_bad_conv((1, 5, 5, 1), (3, 3, 1, 1), stride=(2, 0)), id="stride-pair-with-0"),
    pytest.param(_bad_conv((1, 5, 5, 1), (3, 3, 1, 1), stride=1.5), id="stride-float"),
    pytest.param(lambda: ops.conv2d(ops.asarray(np.zeros((1, 5, 5, 2))), ops.asarray(np.zeros((3, 3, 2, 4))),
                                    bias=ops.asarray(np.zeros(3))), id="conv-bias-wrong-size"),
    pytest.param(lambda: ops.broadcast_to(ops.asarray(np.zeros((2, 3))), (3, 3)), id="broadcast-incompatible"),
    pytest.param(lambda: ops.broadcast_to(ops.asarray(np.zeros((2, 3))), (3,)), id="broadcast-fewer-axes"),
    pytest.param(lambda: ops.max_pool2d(ops.asarray(np.zeros((1, 4, 4, 1))), 0), id="pool-size-0"),
    pytest.param(lambda: ops.avg_pool2d(ops.asarray(np.zeros((1, 2, 2, 1))), 3), id="pool-bigger-than-input"),
    pytest.param(lambda: ops.cross_entropy(ops.asarray(np.zeros((2, 3))), ops.asarray([0, 1]), "avg"),
                 id="bad-reduction"),
])
def test_bad_input_raises_expected_received(backend, call):
    with pytest.raises(ValueError) as info:
        call()
    assert "Expected" in str(info.value) and "Received" in str(info.value)


# ---- 7. floatx ---------------------------------------------------------------------------------------
def test_set_floatx_sets_asarray_dtype(backend):
    try:
        for dtype in ("float64", "float32", "float64"):
            mb.set_floatx(dtype)
            assert mb.floatx() == dtype
            for value in ([1.0, 2.0], np.ones(3, np.float32), np.ones(3, np.float64)):
                assert ops.to_numpy(ops.asarray(value)).dtype == np.dtype(dtype)
            assert ops.to_numpy(ops.zeros((2,))).dtype == np.dtype(dtype)
            assert ops.to_numpy(ops.one_hot(ops.asarray([0, 1]), 2)).dtype == np.dtype(dtype)
            assert ops.to_numpy(ops.asarray([1, 2])).dtype == np.int64
            assert ops.to_numpy(ops.asarray([1.0], dtype="float32")).dtype == np.float32
    finally:
        mb.set_floatx("float32")


def test_set_floatx_rejects_float16():
    with pytest.raises(ValueError) as info:
        mb.set_floatx("float16")
    assert "Expected" in str(info.value) and "Received" in str(info.value)
    assert mb.floatx() == "float32"
