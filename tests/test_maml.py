"""MAML: parity between backends, correctness (finite differences, closed forms),
the inner loop's contract, evaluation and errors (DESIGN.md §3-§5, §9)."""
from __future__ import annotations

import numpy as np
import pytest

import metabridge as mb
from metabridge import ops, optim
from metabridge.algorithms import MAML
from metabridge.data import EpisodeSampler, SinusoidTasks, TaskBatch, load_digits
from metabridge.nn import MLP, Conv4

from conftest import expect_value_error, flat, perturbed_init, rel_diff, unflat


# ---- helpers ------------------------------------------------------------------------------
def _numpy(d: dict) -> dict:
    return {k: np.array(ops.to_numpy(v)) for k, v in d.items()}








def _random_classification_batch(tasks, ways, shots, queries, shape, seed) -> TaskBatch:
    rng = np.random.default_rng(seed)
    return TaskBatch(
        rng.uniform(size=(tasks, ways * shots, *shape)),
        np.tile(np.repeat(np.arange(ways), shots), (tasks, 1)),
        rng.uniform(size=(tasks, ways * queries, *shape)),
        np.tile(np.repeat(np.arange(ways), queries), (tasks, 1)),
    )




# ---- parity: the same meta-loss curve on both frameworks -----------------------------------------
def _sinusoid_training(backend: str, steps: int) -> tuple[np.ndarray, dict, np.ndarray]:
    """Second-order MAML (2 inner steps) + Adam on sinusoids; returns per-step
    meta-losses, the final params and the first meta-gradient."""
    with mb.use_backend(backend):
        model = MLP([1, 40, 40, 1])
        maml = MAML(model, inner_lr=0.01, inner_steps=2, loss="mse")
        tasks = SinusoidTasks(shots=10, queries=10, seed=0, dtype=mb.floatx())
        params = {k: ops.asarray(v) for k, v in model.init(seed=0).items()}
        opt = optim.Adam(lr=1e-3)
        state = opt.init(params)
        losses, first_grad = [], None
        for step in range(steps):
            loss, grads = maml.meta_value_and_grad(params, tasks.batch(step, meta_batch=5))
            params, state = opt.update(params, grads, state)
            losses.append(float(ops.to_numpy(loss)))
            first_grad = flat(grads) if first_grad is None else first_grad
        return np.array(losses), _numpy(params), first_grad


def test_parity_sinusoid_float64(float64, both_backends):
    lt, pt, gt = _sinusoid_training("torch", 20)
    lf, pf, gf = _sinusoid_training("tensorflow", 20)
    assert np.all(np.isfinite(lt)) and lt[-1] < lt[0]  # it trains
    assert np.max(np.abs(lt - lf) / np.abs(lt)) < 1e-9, (lt, lf)
    assert rel_diff(gt, gf) < 1e-9
    assert rel_diff(flat(pt), flat(pf)) < 1e-9
    for k in pt:
        assert pt[k].dtype == pf[k].dtype == np.float64


def test_parity_sinusoid_float32(both_backends):
    assert mb.floatx() == "float32"
    lt, pt, gt = _sinusoid_training("torch", 5)
    lf, pf, gf = _sinusoid_training("tensorflow", 5)
    assert np.max(np.abs(lt - lf) / np.abs(lt)) < 1e-5, (lt, lf)
    assert rel_diff(gt, gf) < 1e-5
    assert rel_diff(flat(pt), flat(pf)) < 1e-5
    assert all(v.dtype == np.float32 for v in pt.values())


def test_parity_conv4_second_order_meta_gradient_and_compiled(float64, both_backends):
    """Conv4 with batch norm: second-order meta-gradient on both frameworks, eager and compiled."""
    model = Conv4(out_features=5, input_shape=(28, 28, 1), channels=8)
    params = model.init(seed=0)
    batch = _random_classification_batch(2, 5, 1, 2, (28, 28, 1), seed=0)
    results = {}
    for backend in both_backends:
        with mb.use_backend(backend):
            for compiled in (False, True):
                maml = MAML(model, inner_lr=0.4, inner_steps=1, compiled=compiled)
                loss, grads = maml.meta_value_and_grad(params, batch)
                assert list(grads) == list(params)
                results[backend, compiled] = (float(ops.to_numpy(loss)), flat(grads))
    ref_loss, ref_grad = results["torch", False]
    for key, (loss, grad) in results.items():
        assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss), key
        assert rel_diff(grad, ref_grad) < 1e-12, key
    # ...and it really is second order: first order gives something else.
    with mb.use_backend("torch"):
        fo = MAML(model, inner_lr=0.4, inner_steps=1, first_order=True)
        assert rel_diff(flat(fo.meta_value_and_grad(params, batch)[1]), ref_grad) > 1e-3


def test_compiled_matches_eager(backend, float64):
    model = MLP([1, 40, 40, 1])
    params = model.init(seed=1)
    tasks = SinusoidTasks(shots=10, queries=10, seed=1, dtype="float64")
    for first_order in (False, True):
        eager = MAML(model, inner_lr=0.01, inner_steps=2, loss="mse", first_order=first_order)
        compiled = MAML(model, inner_lr=0.01, inner_steps=2, loss="mse", first_order=first_order,
                        compiled=True)
        for step in range(2):  # the second call reuses the compiled function
            batch = tasks.batch(step, meta_batch=3)
            le, ge = eager.meta_value_and_grad(params, batch)
            lc, gc = compiled.meta_value_and_grad(params, batch)
            assert abs(float(ops.to_numpy(le)) - float(ops.to_numpy(lc))) <= 1e-12 * abs(float(ops.to_numpy(le)))
            assert rel_diff(flat(ge), flat(gc)) < 1e-12


def test_compiled_handles_a_new_meta_batch_size(backend, float64):
    model = MLP([1, 8, 1])
    params = model.init(seed=0)
    tasks = SinusoidTasks(shots=5, queries=5, seed=0, dtype="float64")
    eager = MAML(model, inner_lr=0.01, inner_steps=1, loss="mse")
    compiled = MAML(model, inner_lr=0.01, inner_steps=1, loss="mse", compiled=True)
    for size in (3, 4, 2):  # e.g. a last, partial meta-batch
        batch = tasks.batch(0, meta_batch=size)
        le, ge = eager.meta_value_and_grad(params, batch)
        lc, gc = compiled.meta_value_and_grad(params, batch)
        assert abs(float(ops.to_numpy(le)) - float(ops.to_numpy(lc))) <= 1e-12 * abs(float(ops.to_numpy(le)))
        assert rel_diff(flat(ge), flat(gc)) < 1e-12


def test_meta_training_loop_from_numpy_init(backend):
    model = MLP([1, 8, 1])
    maml = MAML(model, inner_lr=0.01, inner_steps=1, loss="mse")
    params = model.init(seed=0)  # numpy, as documented
    opt = optim.Adam(lr=1e-3)
    state = opt.init(params)
    loss, grads = maml.meta_value_and_grad(params, SinusoidTasks(seed=0).batch(0, 2))
    params, state = opt.update(params, grads, state)
    assert all(ops.is_tensor(v) for v in params.values())


# ---- correctness: finite differences ------------------------------------------------------------------
def _fd_check(maml, params: dict, batch, seed: int, directions: int = 2, coords: int = 4,
              eps: float = 1e-5, tol: float = 1e-6) -> np.ndarray:
    """Central differences of the meta-loss along random directions and coordinates
    against the meta-gradient, relative to the size of the whole gradient."""
    theta = flat(params)
    _, grads = maml.meta_value_and_grad(params, batch)
    g = flat(grads)
    assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 0

    def f(vec):
        return float(ops.to_numpy(maml.meta_value_and_grad(unflat(vec, params), batch)[0]))

    rng = np.random.default_rng(seed)
    for _ in range(directions):
        v = rng.standard_normal(theta.size)
        v /= np.linalg.norm(v)
        fd = (f(theta + eps * v) - f(theta - eps * v)) / (2 * eps)
        assert abs(fd - g @ v) / np.linalg.norm(g) < tol, (fd, g @ v)
    # the coordinates with the largest gradient entries plus random ones
    picks = list(rng.choice(theta.size, size=coords, replace=False)) + [int(np.argmax(np.abs(g)))]
    for i in picks:
        e = np.zeros_like(theta)
        e[i] = eps
        fd = (f(theta + e) - f(theta - e)) / (2 * eps)
        assert abs(fd - g[i]) / np.max(np.abs(g)) < tol, (i, fd, g[i])
    return g


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_meta_gradient_matches_finite_differences_mse(backend, float64, inner_steps):
    model = MLP([1, 16, 16, 1], activation="tanh")  # smooth: every second derivative counts
    params = perturbed_init(model, seed=3)
    batch = SinusoidTasks(shots=5, queries=5, seed=3, dtype="float64").batch(0, meta_batch=2)
    maml = MAML(model, inner_lr=0.1, inner_steps=inner_steps, loss="mse")
    g = _fd_check(maml, params, batch, seed=inner_steps)
    # The check has teeth: the first-order gradient is far outside its tolerance.
    fo = MAML(model, inner_lr=0.1, inner_steps=inner_steps, loss="mse", first_order=True)
    assert rel_diff(flat(fo.meta_value_and_grad(params, batch)[1]), g) > 1e-3


def test_meta_gradient_matches_finite_differences_cross_entropy(backend, float64):
    model = MLP([6, 12, 3], activation="tanh")
    params = perturbed_init(model, seed=4)
    batch = _random_classification_batch(2, 3, 2, 3, (6,), seed=4)
    maml = MAML(model, inner_lr=0.5, inner_steps=2)
    _fd_check(maml, params, batch, seed=4)


def test_meta_gradient_matches_finite_differences_conv4_batch_norm(backend, float64):
    model = Conv4(out_features=3, input_shape=(16, 16, 1), channels=4)
    params = perturbed_init(model, seed=5)
    batch = _random_classification_batch(1, 3, 1, 2, (16, 16, 1), seed=5)
    maml = MAML(model, inner_lr=0.3, inner_steps=1)
    _fd_check(maml, params, batch, seed=5, directions=2, coords=1)


# ---- correctness: first order and closed forms -----------------------------------------------------------
def test_first_order_is_the_query_gradient_at_the_adapted_params(backend, float64):
    model = MLP([1, 20, 20, 1])
    params = model.init(seed=2)
    batch = SinusoidTasks(shots=10, queries=10, seed=2, dtype="float64").batch(0, meta_batch=3)
    lr, steps = 0.05, 2
    fo = MAML(model, inner_lr=lr, inner_steps=steps, loss="mse", first_order=True)
    so = MAML(model, inner_lr=lr, inner_steps=steps, loss="mse")
    loss_fo, g_fo = fo.meta_value_and_grad(params, batch)
    loss_so, g_so = so.meta_value_and_grad(params, batch)

    def task_loss(p, x, y):
        return ops.mse(model(p, x), y)

    grad_fn = ops.value_and_grad(task_loss)  # create_graph=False: plain, detached gradients
    losses, grads = [], []
    for t in range(batch.size):
        p = {k: ops.asarray(v) for k, v in params.items()}
        for _ in range(steps):
            _, g = grad_fn(p, batch.support_x[t], ops.asarray(batch.support_y[t]))
            p = {k: ops.asarray(ops.to_numpy(p[k]) - lr * ops.to_numpy(g[k])) for k in p}  # detached
        lq, gq = grad_fn(p, batch.query_x[t], ops.asarray(batch.query_y[t]))
        losses.append(float(ops.to_numpy(lq)))
        grads.append(flat(gq))
    expected = np.mean(grads, axis=0)
    assert abs(float(ops.to_numpy(loss_fo)) - np.mean(losses)) <= 1e-12 * np.mean(losses)
    assert abs(float(ops.to_numpy(loss_so)) - np.mean(losses)) <= 1e-12 * np.mean(losses)
    assert rel_diff(flat(g_fo), expected) < 1e-12
    assert rel_diff(flat(g_so), expected) > 1e-3  # second order is not first order


def _linear_problem(d=3, tasks=3, n_s=6, n_q=5, seed=0):
    rng = np.random.default_rng(seed)
    params = {"dense1.kernel": rng.standard_normal((d, 1)), "dense1.bias": rng.standard_normal(1)}
    batch = TaskBatch(rng.standard_normal((tasks, n_s, d)), rng.standard_normal((tasks, n_s, 1)),
                      rng.standard_normal((tasks, n_q, d)), rng.standard_normal((tasks, n_q, 1)))
    return params, batch


def _linear_closed_form(params, batch, alpha, steps, first_order):
    """MSE of y = x W + b: grad = 2/n Xa^T (Xa θ - y), Hessian H = 2/n Xa^T Xa (constant);
    θ_k = θ_{k-1} - α grad_s(θ_{k-1}); meta-grad = ((I - α H_s)^k)^T grad_q(θ_k)."""
    theta0 = np.concatenate([params["dense1.kernel"][:, 0], params["dense1.bias"]])
    losses, grads = [], []
    for t in range(batch.size):
        xs = np.hstack([batch.support_x[t], np.ones((batch.support_x.shape[1], 1))])
        xq = np.hstack([batch.query_x[t], np.ones((batch.query_x.shape[1], 1))])
        ys, yq = batch.support_y[t][:, 0], batch.query_y[t][:, 0]
        theta = theta0.copy()
        for _ in range(steps):
            theta = theta - alpha * 2.0 / len(ys) * xs.T @ (xs @ theta - ys)
        h_s = 2.0 / len(ys) * xs.T @ xs
        jac = np.linalg.matrix_power(np.eye(len(theta)) - alpha * h_s, steps)
        g_q = 2.0 / len(yq) * xq.T @ (xq @ theta - yq)
        losses.append(np.mean((xq @ theta - yq) ** 2))
        grads.append(g_q if first_order else jac.T @ g_q)
    return np.mean(losses), np.mean(grads, axis=0)


@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_linear_model_matches_closed_form(backend, float64, inner_steps, first_order):
    params, batch = _linear_problem()
    alpha = 0.1
    maml = MAML(MLP([3, 1]), inner_lr=alpha, inner_steps=inner_steps, loss="mse", first_order=first_order)
    loss, grads = maml.meta_value_and_grad(params, batch)
    want_loss, want_grad = _linear_closed_form(params, batch, alpha, inner_steps, first_order)
    got = np.concatenate([ops.to_numpy(grads["dense1.kernel"])[:, 0], ops.to_numpy(grads["dense1.bias"])])
    assert abs(float(ops.to_numpy(loss)) - want_loss) <= 1e-12 * want_loss
    assert rel_diff(got, want_grad) < 1e-12
    # the Hessian term matters in this problem
    other = _linear_closed_form(params, batch, alpha, inner_steps, not first_order)[1]
    assert rel_diff(other, want_grad) > 1e-2


# ---- the inner loop's contract ----------------------------------------------------------------------------
def _numpy_sgd_linear(params, x, y, lr, steps):
    w, b = params["dense1.kernel"].copy(), params["dense1.bias"].copy()
    for _ in range(steps):
        r = x @ w + b - y
        w, b = w - lr * 2.0 / r.size * x.T @ r, b - lr * 2.0 / r.size * r.sum(0)
    return w, b


@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_does_not_modify_its_input(backend, float64, first_order):
    params, batch = _linear_problem(seed=1)
    snapshot = {k: v.copy() for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    maml = MAML(MLP([3, 1]), inner_lr=0.5, inner_steps=3, loss="mse", first_order=first_order)
    adapted = maml.adapt(params, batch.support_x[0], batch.support_y[0])
    assert adapted is not params and list(params) == list(snapshot)
    for k in params:
        assert id(params[k]) == ids[k]
        np.testing.assert_array_equal(params[k], snapshot[k])  # numpy input (torch may share memory)
        assert not np.array_equal(ops.to_numpy(adapted[k]), snapshot[k])
    tensors = {k: ops.asarray(v) for k, v in params.items()}
    maml.adapt(tensors, batch.support_x[0], batch.support_y[0])
    maml.meta_value_and_grad(tensors, batch)
    for k in params:
        np.testing.assert_array_equal(ops.to_numpy(tensors[k]), snapshot[k])  # tensor input
        np.testing.assert_array_equal(params[k], snapshot[k])


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_inner_loop_runs_exactly_inner_steps_times(backend, float64, inner_steps):
    params, batch = _linear_problem(seed=2)
    x, y = batch.support_x[0], batch.support_y[0]
    maml = MAML(MLP([3, 1]), inner_lr=0.5, inner_steps=inner_steps, loss="mse")
    adapted = maml.adapt(params, x, y)
    got = (ops.to_numpy(adapted["dense1.kernel"]), ops.to_numpy(adapted["dense1.bias"]))
    for steps in range(5):
        want = _numpy_sgd_linear(params, x, y, 0.5, steps)
        close = rel_diff(np.concatenate([got[0].ravel(), got[1]]),
                         np.concatenate([want[0].ravel(), want[1]])) < 1e-12
        assert close == (steps == inner_steps), steps
    # ``steps`` overrides; 0 steps returns the parameters unchanged
    two = maml.adapt(params, x, y, steps=2)
    want = _numpy_sgd_linear(params, x, y, 0.5, 2)
    assert rel_diff(ops.to_numpy(two["dense1.kernel"]), want[0]) < 1e-12
    zero = maml.adapt(params, x, y, steps=0)
    np.testing.assert_array_equal(ops.to_numpy(zero["dense1.kernel"]), params["dense1.kernel"])


# ---- evaluation ------------------------------------------------------------------------------------------------
def test_evaluate_mse_per_task_and_step(backend, float64):
    model = MLP([1, 20, 1])
    params = model.init(seed=0)
    batch = SinusoidTasks(shots=10, queries=10, seed=0, dtype="float64").batch(0, meta_batch=3)
    maml = MAML(model, inner_lr=0.02, inner_steps=1, loss="mse")
    out = maml.evaluate(params, batch, steps=3)
    assert set(out) == {"loss", "mse"}
    assert out["loss"].shape == out["mse"].shape == (3, 4)
    for t in range(3):
        unadapted = np.mean((ops.to_numpy(model(params, batch.query_x[t])) - batch.query_y[t]) ** 2)
        assert abs(out["loss"][t, 0] - unadapted) <= 1e-12 * unadapted
        for s in range(4):
            adapted = maml.adapt(params, batch.support_x[t], batch.support_y[t], steps=s)
            want = float(ops.to_numpy(maml.inner_loss(adapted, batch.query_x[t], ops.asarray(batch.query_y[t]))))
            assert abs(out["loss"][t, s] - want) <= 1e-12 * want
    np.testing.assert_allclose(out["mse"], out["loss"], rtol=1e-12)
    assert maml.evaluate(params, batch, steps=0)["loss"].shape == (3, 1)
    assert maml.evaluate(params, batch)["loss"].shape == (3, 2)  # default: inner_steps
    with pytest.raises(ValueError, match="Expected steps >= 0"):
        maml.evaluate(params, batch, steps=-1)


def test_evaluate_accuracy_for_classification(backend, float64):
    model = MLP([64, 16, 5])
    ds = load_digits("train", dtype="float64")
    ds.x = ds.x.reshape(len(ds.x), 64)
    batch = EpisodeSampler(ds, ways=5, shots=1, queries=3, seed=0).batch(0, meta_batch=2)
    maml = MAML(model, inner_lr=0.5, inner_steps=2)
    params = model.init(seed=0)
    out = maml.evaluate(params, batch, steps=2)
    assert set(out) == {"loss", "accuracy"} and out["accuracy"].shape == (2, 3)
    assert np.all((out["accuracy"] >= 0) & (out["accuracy"] <= 1))
    for t in range(2):
        logits = ops.to_numpy(model(params, batch.query_x[t]))
        assert out["accuracy"][t, 0] == np.mean(np.argmax(logits, -1) == batch.query_y[t])
        z = logits - logits.max(-1, keepdims=True)
        ce = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(z)), batch.query_y[t]])
        assert abs(out["loss"][t, 0] - ce) <= 1e-12 * ce


# ---- errors at the boundary ---------------------------------------------------------------------------------------
def test_bad_hyperparameters(backend):
    model = MLP([1, 4, 1])
    for lr in (0, 0.0, -0.1, float("nan"), float("inf")):
        expect_value_error(lambda: MAML(model, inner_lr=lr), "inner_lr > 0")
    for steps in (0, -1, 1.5, True):
        expect_value_error(lambda: MAML(model, inner_lr=0.1, inner_steps=steps), "inner_steps >= 1")
    expect_value_error(lambda: MAML(model, inner_lr=0.1, loss="hinge"), "loss", "'hinge'")
    expect_value_error(lambda: MAML(object(), inner_lr=0.1), "Model")


def test_bad_batches(backend):
    mlp = MLP([1, 4, 1])
    maml = MAML(mlp, inner_lr=0.1, loss="mse")
    params = mlp.init(seed=0)
    good = SinusoidTasks(seed=0).batch(0, 2)
    as_tuple = (good.support_x, good.support_y, good.query_x, good.query_y)
    expect_value_error(lambda: maml.meta_value_and_grad(params, as_tuple), "TaskBatch", "tuple")
    expect_value_error(lambda: maml.evaluate(params, as_tuple), "TaskBatch")
    wide = TaskBatch(np.zeros((2, 5, 2)), np.zeros((2, 5, 1)), np.zeros((2, 5, 2)), np.zeros((2, 5, 1)))
    expect_value_error(lambda: maml.meta_value_and_grad(params, wide), "support_x", "(2, 5, 2)")
    expect_value_error(lambda: maml.evaluate(params, wide), "support_x")

    conv = Conv4(out_features=5, input_shape=(28, 28, 1), channels=8)
    cmaml = MAML(conv, inner_lr=0.4)
    cparams = conv.init(seed=0)
    rgb = _random_classification_batch(1, 5, 1, 1, (28, 28, 3), seed=0)
    expect_value_error(lambda: cmaml.meta_value_and_grad(cparams, rgb), "28, 28, 3)")
    batch = _random_classification_batch(1, 5, 1, 1, (28, 28, 1), seed=0)
    bad_y = batch.support_y.copy()
    bad_y[0, 2] = 7
    high = TaskBatch(batch.support_x, bad_y, batch.query_x, batch.query_y)
    expect_value_error(lambda: cmaml.meta_value_and_grad(cparams, high), "0..4", "7")
    bad_q = batch.query_y.copy()
    bad_q[0, 0] = -1
    negative = TaskBatch(batch.support_x, batch.support_y, batch.query_x, bad_q)
    expect_value_error(lambda: cmaml.meta_value_and_grad(cparams, negative), "query_y")
    floats = TaskBatch(batch.support_x, batch.support_y.astype(float), batch.query_x, batch.query_y)
    expect_value_error(lambda: cmaml.meta_value_and_grad(cparams, floats), "integer")

    sx = batch.support_x.copy()
    sx[0, 0, 3, 3, 0] = np.nan
    expect_value_error(lambda: TaskBatch(sx, batch.support_y, batch.query_x, batch.query_y), "finite")
