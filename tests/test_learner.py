"""The clone-and-adapt object API (issue #4): the same meta-gradients as the
functional API for MAML, FOMAML, Meta-SGD and ANIL, on both backends and between
them; torch's loss-tensor form; the learner's contract; errors (DESIGN.md §4, §9)."""
from __future__ import annotations

import numpy as np
import pytest

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import ANIL, MAML, Learner, MetaSGD
from metabridge.algorithms.meta_sgd import LR_PREFIX
from metabridge.data import TaskBatch
from metabridge.nn import MLP, Conv4

from conftest import expect_value_error, flat, perturbed_init, rel_diff

HAS_TORCH = "torch" in mb.available_backends()
STEPS = 2  # inner steps: two adapt calls


# ---- helpers ------------------------------------------------------------------------------
def _models() -> dict:
    return {
        "conv4-strided-bn": Conv4(5, input_shape=(16, 16, 1), channels=4, strided=True),
        "conv4-pooled-bn": Conv4(5, input_shape=(16, 16, 1), channels=4),
        "mlp": MLP([6, 16, 16, 5]),
    }


ALGORITHMS = {
    "maml": lambda m: MAML(m, inner_lr=0.4, inner_steps=STEPS),
    "fomaml": lambda m: MAML(m, inner_lr=0.4, inner_steps=STEPS, first_order=True),
    "meta-sgd": lambda m: MetaSGD(m, inner_lr=0.4, inner_steps=STEPS),
    "anil": lambda m: ANIL(m, inner_lr=0.4, inner_steps=STEPS),
}


def _meta_params(algo, model, seed: int = 0) -> dict:
    """Perturbed weights; Meta-SGD also gets distinct positive per-entry rates."""
    params = perturbed_init(model, seed)
    if isinstance(algo, MetaSGD):
        rng = np.random.default_rng(seed + 7)
        params.update({LR_PREFIX + k: (algo.inner_lr * rng.uniform(0.5, 1.5, v.shape)).astype(v.dtype)
                       for k, v in list(params.items())})
    return params


def _batch(model, tasks: int = 2, ways: int = 5, shots: int = 2, queries: int = 3,
           seed: int = 0) -> TaskBatch:
    rng = np.random.default_rng(seed)
    shape = tuple(model.input_shape)
    return TaskBatch(
        rng.uniform(size=(tasks, ways * shots, *shape)),
        np.tile(np.repeat(np.arange(ways), shots), (tasks, 1)),
        rng.uniform(size=(tasks, ways * queries, *shape)),
        np.tile(np.repeat(np.arange(ways), queries), (tasks, 1)),
    )


def _object_meta_value_and_grad(algo, params: dict, batch: TaskBatch, tensor_loss: bool = False):
    """``(mean query loss, meta-gradient)`` written with clone / adapt / learner(x)."""
    params = {k: ops.asarray(v) for k, v in params.items()}
    sx, sy, qx, qy = (ops.asarray(a)
                      for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))

    def task_loss(p, sx, sy, qx, qy):
        learner = algo.clone(p)
        for _ in range(algo.inner_steps):
            if tensor_loss:
                learner.adapt(algo.loss_fn(learner(sx), sy))
            else:
                learner.adapt(lambda l: algo.loss_fn(l(sx), sy))
        return algo.loss_fn(learner(qx), qy)

    grad_fn = ops.value_and_grad(task_loss)
    loss_sum, grad_sum = None, None
    for t in range(batch.size):
        loss, grads = grad_fn(params, sx[t], sy[t], qx[t], qy[t])
        loss_sum = loss if loss_sum is None else loss_sum + loss
        grad_sum = grads if grad_sum is None else {k: grad_sum[k] + g for k, g in grads.items()}
    n = batch.size
    return loss_sum / n, {k: g / n for k, g in grad_sum.items()}


def _numbers(loss, grads) -> tuple[float, np.ndarray]:
    return float(ops.to_numpy(loss)), flat(grads)


# ---- object API == functional API --------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["conv4-strided-bn", "conv4-pooled-bn", "mlp"])
@pytest.mark.parametrize("algo_name", list(ALGORITHMS))
def test_object_api_gives_the_functional_meta_gradient(backend, float64, algo_name, model_name):
    model = _models()[model_name]
    algo = ALGORITHMS[algo_name](model)
    params, batch = _meta_params(algo, model), _batch(model)
    ref_loss, ref_grad = _numbers(*algo.meta_value_and_grad(params, batch))
    loss, grads = _object_meta_value_and_grad(algo, params, batch)
    assert list(grads) == list(params)
    loss, grad = _numbers(loss, grads)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss), (loss, ref_loss)
    assert rel_diff(grad, ref_grad) < 1e-12, rel_diff(grad, ref_grad)
    assert np.max(np.abs(ref_grad)) > 0


def test_object_api_is_second_order(backend, float64):
    """Second-order MAML through adapt differs from first order (so the graph flows)."""
    model = MLP([6, 16, 16, 5])
    params, batch = perturbed_init(model, 0), _batch(model)
    second = _numbers(*_object_meta_value_and_grad(ALGORITHMS["maml"](model), params, batch))[1]
    first = _numbers(*_object_meta_value_and_grad(ALGORITHMS["fomaml"](model), params, batch))[1]
    assert rel_diff(second, first) > 1e-3


# ---- torch: adapt(loss_tensor) == adapt(loss_fn) ---------------------------------------------------
@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
@pytest.mark.parametrize("algo_name", list(ALGORITHMS))
def test_torch_loss_tensor_equals_loss_function(float64, algo_name):
    model = _models()["conv4-strided-bn"]
    algo = ALGORITHMS[algo_name](model)
    params, batch = _meta_params(algo, model), _batch(model)
    with mb.use_backend("torch"):
        fn_loss, fn_grad = _numbers(*_object_meta_value_and_grad(algo, params, batch))
        t_loss, t_grad = _numbers(*_object_meta_value_and_grad(algo, params, batch, tensor_loss=True))
    assert abs(t_loss - fn_loss) <= 1e-12 * abs(fn_loss)
    assert rel_diff(t_grad, fn_grad) < 1e-12


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_torch_loss_tensor_without_a_graph_is_refused(float64):
    """Outside any value_and_grad (plain evaluation-style use), a loss tensor of
    a learner whose params have no graph gets a clear error; a loss function works."""
    model = MLP([6, 16, 5])
    maml = MAML(model, inner_lr=0.4)
    params, batch = perturbed_init(model, 0), _batch(model)
    sx, sy = batch.support_x[0], batch.support_y[0]
    with mb.use_backend("torch"):
        learner = maml.clone(params)
        expect_value_error(lambda: learner.adapt(maml.loss_fn(learner(sx), ops.asarray(sy))), "graph")
        learner.adapt(lambda l: maml.loss_fn(l(sx), ops.asarray(sy)))
        ref = maml.adapt(params, sx, sy, steps=1)
        assert rel_diff(flat(learner.params), flat(ref)) == 0.0


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_torch_learn2learn_style_backward_gives_the_meta_gradient(float64):
    """learn2learn's own pattern: leaf tensors with requires_grad, adapt(loss
    tensor), query_loss.backward(); the .grad fields hold the meta-gradient."""
    torch = pytest.importorskip("torch")
    model = _models()["conv4-strided-bn"]
    maml = ALGORITHMS["maml"](model)
    params, batch = perturbed_init(model, 0), _batch(model, tasks=1)
    with mb.use_backend("torch"):
        _, ref = maml.meta_value_and_grad(params, batch)
        leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        learner = maml.clone(leaves)
        sy, qy = ops.asarray(batch.support_y[0]), ops.asarray(batch.query_y[0])
        for _ in range(maml.inner_steps):
            learner.adapt(maml.loss_fn(learner(batch.support_x[0]), sy))
        maml.loss_fn(learner(batch.query_x[0]), qy).backward()
        assert rel_diff(flat({k: t.grad for k, t in leaves.items()}), flat(ref)) < 1e-12


# ---- parity: the same numbers on torch and tensorflow -------------------------------------------------
@pytest.mark.parametrize("algo_name", list(ALGORITHMS))
def test_parity_object_api_float64(both_backends, float64, algo_name):
    model = _models()["conv4-strided-bn"]
    algo = ALGORITHMS[algo_name](model)
    params, batch = _meta_params(algo, model), _batch(model)
    results = {}
    for backend in both_backends:
        with mb.use_backend(backend):
            results[backend] = _numbers(*_object_meta_value_and_grad(algo, params, batch))
    (lt, gt), (lf, gf) = results["torch"], results["tensorflow"]
    assert abs(lt - lf) <= 1e-12 * abs(lt), (lt, lf)
    assert rel_diff(gt, gf) < 1e-12, rel_diff(gt, gf)


# ---- the learner's contract ------------------------------------------------------------------------
def test_learner_contract(backend, float64):
    model = MLP([6, 16, 5])
    anil = ANIL(model, inner_lr=0.4)
    params, batch = perturbed_init(model, 0), _batch(model)
    sx, sy, qx = batch.support_x[0], ops.asarray(batch.support_y[0]), batch.query_x[0]
    learner = anil.clone(params)
    assert isinstance(learner, Learner) and learner.model is model
    before = learner.clone()
    assert learner.adapt(lambda l: anil.loss_fn(l(sx), sy)) is learner
    adapted = learner.params
    # ANIL adapts the head only; the original dict and the earlier clone are untouched.
    for k in params:
        same = rel_diff(ops.to_numpy(adapted[k]), params[k]) == 0.0
        assert same != k.startswith(model.head_prefix), k
    assert rel_diff(flat(before.params), flat(params)) == 0.0
    assert rel_diff(ops.to_numpy(learner(qx)), ops.to_numpy(model(adapted, qx))) == 0.0


# ---- errors ---------------------------------------------------------------------------------------
def test_bad_input_errors(backend, float64):
    model = Conv4(5, input_shape=(16, 16, 1), channels=4, strided=True)
    maml = MAML(model, inner_lr=0.4)
    params = model.init(0)
    x = np.zeros((5, 16, 16, 1))
    y = ops.asarray(np.arange(5))
    partial = {k: v for k, v in params.items() if k != "conv1.kernel"}
    expect_value_error(lambda: maml.clone(partial), "missing ['conv1.kernel']")
    expect_value_error(lambda: maml.clone([1, 2]), "dict", "list")
    expect_value_error(lambda: maml.clone({**params, "head.bias": np.zeros(3)}), "head.bias", "(5,)", "(3,)")
    expect_value_error(lambda: MetaSGD(model, inner_lr=0.4).clone(params), "lr.<name>")
    expect_value_error(lambda: Learner(object(), params), "MAML-family", "object")
    learner = maml.clone(params)
    expect_value_error(lambda: learner.adapt(42), "loss function", "int")
    expect_value_error(lambda: learner.adapt(lambda l: ops.cross_entropy(l(x), y, reduction="none")),
                       "scalar", "(5,)")
    expect_value_error(lambda: learner.adapt(lambda l: 1.0), "scalar", "float")
    expect_value_error(lambda: learner.adapt(lambda l: ops.cross_entropy(l(x), y), first_order="yes"),
                       "first_order")
    if backend == "tensorflow":
        loss = ops.cross_entropy(learner(x), y)
        expect_value_error(lambda: learner.adapt(loss), "loss function on the tensorflow backend", "tensor")


def test_adapt_first_order_flag_gives_the_fomaml_meta_gradient(backend, float64):
    """A second-order MAML learner adapted with first_order=True has FOMAML's
    meta-gradient (the functional first-order one), which differs from MAML's."""
    model = MLP([6, 16, 16, 5])
    maml, fomaml = ALGORITHMS["maml"](model), ALGORITHMS["fomaml"](model)
    params, batch = perturbed_init(model, 0), _batch(model, tasks=1)
    p = {k: ops.asarray(v) for k, v in params.items()}
    sx, sy, qx, qy = (ops.asarray(a[0]) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))

    def task_loss(p):
        learner = maml.clone(p)
        for _ in range(maml.inner_steps):
            learner.adapt(lambda l: maml.loss_fn(l(sx), sy), first_order=True)
        return maml.loss_fn(learner(qx), qy)

    grads = flat(ops.value_and_grad(task_loss)(p)[1])
    first = flat(fomaml.meta_value_and_grad(params, batch)[1])
    second = flat(maml.meta_value_and_grad(params, batch)[1])
    assert rel_diff(grads, first) < 1e-12
    assert rel_diff(grads, second) > 1e-3


def test_torch_loss_tensor_not_from_the_learner_is_refused(float64):
    pytest.importorskip("torch")
    import torch

    model = MLP([6, 8, 5])
    maml = ALGORITHMS["maml"](model)
    with mb.use_backend("torch"):
        params = {k: torch.tensor(v, requires_grad=True) for k, v in perturbed_init(model, 0).items()}
        other = {k: torch.tensor(v, requires_grad=True) for k, v in perturbed_init(model, 1).items()}
        x, y = torch.rand(10, 6, dtype=torch.float64), torch.arange(10) % 5
        learner = maml.clone(params)
        stale = maml.loss_fn(model(other, x), y)                 # a loss of other parameters
        with pytest.raises(ValueError, match="Expected a loss computed from these parameters"):
            learner.adapt(stale)
