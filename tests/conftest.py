"""Shared fixtures: run a test once per installed backend, and in float64."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One compute thread per xdist worker: with -n 2 on 2 cores, two workers each
    # running a 2-thread torch/TF pool oversubscribe the CPU and slow to a crawl.
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(var, "1")

import metabridge as mb  # noqa: E402

BACKENDS = mb.available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each test using it runs on every installed backend (active during the test)."""
    previous = mb.config._global_backend
    mb.set_backend(request.param)
    try:
        yield request.param
    finally:
        mb.config._global_backend = previous


@pytest.fixture
def float64():
    """Run the test in float64 and restore float32 afterwards."""
    mb.set_floatx("float64")
    try:
        yield "float64"
    finally:
        mb.set_floatx("float32")


@pytest.fixture
def both_backends():
    """For parity tests: skip unless torch and tensorflow are both installed."""
    if set(BACKENDS) != {"torch", "tensorflow"}:
        pytest.skip("parity needs both torch and tensorflow installed")
    return ("torch", "tensorflow")


def rel_diff(a, b) -> float:
    """Largest difference relative to the size of the whole array (DESIGN.md §4)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)) / scale)


def flat(d: dict) -> np.ndarray:
    """All values of a params/grads dict as one float vector (dict order)."""
    from metabridge import ops

    return np.concatenate([np.ravel(ops.to_numpy(v)) for v in d.values()])


def unflat(vec: np.ndarray, like: dict) -> dict:
    """Inverse of :func:`flat` for the shapes of ``like``."""
    out, i = {}, 0
    for k, v in like.items():
        n = int(np.prod(np.shape(v)))
        out[k] = vec[i:i + n].reshape(np.shape(v))
        i += n
    return out


def assert_directional_derivatives(loss, params: dict, grads: dict, rng, directions: int = 2,
                                   eps: float = 1e-6, tol: float = 1e-6) -> None:
    """Central differences of ``loss(params dict) -> float`` along random unit
    directions must equal ``grads · direction`` to ``tol`` relative to ``|grads|``."""
    from metabridge import ops

    g, theta = flat(grads), flat(params)

    def f(vec):
        return loss({k: ops.asarray(v) for k, v in unflat(vec, params).items()})

    for _ in range(directions):
        v = rng.standard_normal(theta.size)
        v /= np.linalg.norm(v)
        fd = (f(theta + eps * v) - f(theta - eps * v)) / (2 * eps)
        assert abs(fd - g @ v) / np.linalg.norm(g) < tol, (fd, g @ v)


def perturbed_init(model, seed: int, scale: float = 0.1) -> dict:
    """``model.init`` plus noise, so biases and batch-norm parameters are not at
    special values (zero biases put ReLU units exactly on their kink, which
    finite differences straddle)."""
    rng = np.random.default_rng(seed + 1000)
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in model.init(seed).items()}


def expect_value_error(fn, *fragments) -> str:
    """Call ``fn``; it must raise ValueError in the ``Expected ... Received: ...``
    form containing every fragment. Returns the message."""
    import pytest

    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert "Expected" in msg and "Received" in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg
