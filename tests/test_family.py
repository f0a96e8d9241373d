"""Meta-SGD, ANIL and Reptile: independent references and parity between backends."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import flat, perturbed_init, rel_diff, unflat

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import ANIL, MAML, MetaSGD, Reptile
from metabridge.data import SinusoidTasks
from metabridge.nn import MLP, Conv4
from metabridge.optim import Adam


def _sin_batch(tasks=3, dtype="float64"):
    return SinusoidTasks(shots=5, queries=5, seed=0, dtype=dtype).batch(0, tasks)


def test_meta_sgd_with_equal_rates_is_maml(backend, float64):
    model = MLP([1, 8, 8, 1], activation="tanh")
    weights = perturbed_init(model, 0)
    meta_sgd = MetaSGD(model, inner_lr=0.05, inner_steps=2, loss="mse")
    maml = MAML(model, inner_lr=0.05, inner_steps=2, loss="mse")
    meta_params = {**weights, **{f"lr.{k}": np.full_like(v, 0.05) for k, v in weights.items()}}
    batch = _sin_batch()
    l1, g1 = meta_sgd.meta_value_and_grad(meta_params, batch)
    l2, g2 = maml.meta_value_and_grad(weights, batch)
    assert float(ops.to_numpy(l1)) == pytest.approx(float(ops.to_numpy(l2)), rel=1e-13)
    assert rel_diff(flat({k: g1[k] for k in weights}), flat(g2)) < 1e-12


def test_meta_sgd_rate_gradient_matches_finite_differences(backend, float64):
    model = MLP([1, 6, 1], activation="tanh")
    meta_sgd = MetaSGD(model, inner_lr=0.05, inner_steps=1, loss="mse")
    rng = np.random.default_rng(0)
    meta_params = meta_sgd.init(0)
    meta_params = {k: v + (0.01 * rng.standard_normal(v.shape) if k.startswith("lr.") else 0.1 * rng.standard_normal(v.shape))
                   for k, v in meta_params.items()}
    batch = _sin_batch()
    _, grads = meta_sgd.meta_value_and_grad(meta_params, batch)
    g, theta = flat(grads), flat(meta_params)
    lr_idx = np.concatenate([np.arange(i, i + v.size) for i, (k, v) in
                             zip(np.cumsum([0] + [v.size for v in meta_params.values()])[:-1], meta_params.items())
                             if k.startswith("lr.")])

    def f(vec):
        return float(ops.to_numpy(meta_sgd.meta_value_and_grad(unflat(vec, meta_params), batch)[0]))

    lr_g = g[lr_idx]
    for i in rng.choice(lr_idx, 10, replace=False):
        e = np.zeros_like(theta)
        e[i] = 1e-6
        fd = (f(theta + e) - f(theta - e)) / 2e-6
        assert abs(fd - g[i]) / np.max(np.abs(lr_g)) < 1e-6


class _FrozenBodyMAML(MAML):
    """Reference for ANIL: plain MAML (full forward pass every inner step) whose
    inner loop only touches the head."""

    def inner_keys(self, params):
        return [k for k in params if k.startswith(self.model.head_prefix)]


@pytest.mark.parametrize("make, xshape", [
    (lambda: MLP([1, 8, 8, 1], activation="tanh"), None),
    (lambda: Conv4(3, input_shape=(16, 16, 1), channels=4), (16, 16, 1)),
], ids=["mlp", "conv4"])
def test_anil_is_maml_with_a_frozen_body(backend, float64, make, xshape):
    model = make()
    params = perturbed_init(model, 0)
    if xshape is None:
        batch, loss = _sin_batch(), "mse"
    else:
        from metabridge.data import TaskBatch

        rng = np.random.default_rng(0)
        labels = np.tile(np.repeat(np.arange(3), 2), (2, 1))
        batch = TaskBatch(rng.random((2, 6, *xshape)), labels, rng.random((2, 6, *xshape)), labels)
        loss = "cross_entropy"
    la, ga = ANIL(model, 0.3, inner_steps=2, loss=loss).meta_value_and_grad(params, batch)
    lm, gm = _FrozenBodyMAML(model, 0.3, inner_steps=2, loss=loss).meta_value_and_grad(params, batch)
    assert float(ops.to_numpy(la)) == pytest.approx(float(ops.to_numpy(lm)), rel=1e-12)
    assert rel_diff(flat(ga), flat(gm)) < 1e-12


def test_reptile_one_step_epsilon_one_is_one_sgd_step(backend, float64):
    rng = np.random.default_rng(0)
    model = MLP([3, 1])  # linear: y = x W + b
    params = perturbed_init(model, 0)
    x, y = rng.standard_normal((1, 8, 3)), rng.standard_normal((1, 8, 1))
    from metabridge.data import TaskBatch

    batch = TaskBatch(x, y, x, y)
    reptile = Reptile(model, inner_lr=0.1, inner_steps=1, loss="mse", outer_stepsize=1.0)
    new, _ = reptile.meta_step(params, batch, step=0)
    w, b = params["dense1.kernel"], params["dense1.bias"]
    r = x[0] @ w + b - y[0]                                   # closed-form MSE gradient
    gw, gb = 2 * x[0].T @ r / r.size, 2 * r.sum(0) / r.size
    assert rel_diff(ops.to_numpy(new["dense1.kernel"]), w - 0.1 * gw) < 1e-14
    assert rel_diff(ops.to_numpy(new["dense1.bias"]), b - 0.1 * gb) < 1e-14


def test_reptile_epsilon_is_annealed_linearly():
    reptile = Reptile(MLP([1, 1]), 0.1, 1, "mse", outer_stepsize=1.0, final_outer_stepsize=0.0, total_steps=10)
    assert [reptile.epsilon(s) for s in (0, 5, 10, 20)] == [1.0, 0.5, 0.0, 0.0]


def _curve(algo, backend, floatx, steps):
    mb.set_floatx(floatx)
    try:
        with mb.use_backend(backend):
            model = MLP([1, 16, 16, 1])
            tasks = SinusoidTasks(shots=5, queries=5, seed=0, dtype=floatx)
            if algo == "reptile":
                alg = Reptile(model, 0.02, inner_steps=3, loss="mse", outer_stepsize=0.5,
                              final_outer_stepsize=0.1, total_steps=steps, inner_optimizer="adam")
                params, losses = model.init(0), []
                for s in range(steps):
                    params, loss = alg.meta_step(params, tasks.batch(s, 4), s)
                    losses.append(loss)
                return np.array(losses)
            alg = (MetaSGD(model, 0.01, 2, loss="mse") if algo == "metasgd"
                   else ANIL(model, 0.01, 2, loss="mse"))
            params = alg.init(0) if algo == "metasgd" else model.init(0)
            params = {k: ops.asarray(v) for k, v in params.items()}
            opt, losses = Adam(1e-3), []
            state = opt.init(params)
            for s in range(steps):
                loss, grads = alg.meta_value_and_grad(params, tasks.batch(s, 4))
                params, state = opt.update(params, grads, state)
                losses.append(float(ops.to_numpy(loss)))
            return np.array(losses)
    finally:
        mb.set_floatx("float32")


@pytest.mark.parametrize("algo", ["metasgd", "anil", "reptile"])
def test_parity_20_steps_float64_and_5_steps_float32(both_backends, algo):
    a, b = _curve(algo, "torch", "float64", 20), _curve(algo, "tensorflow", "float64", 20)
    assert np.max(np.abs(a - b) / np.abs(a)) < 1e-9
    a, b = _curve(algo, "torch", "float32", 5), _curve(algo, "tensorflow", "float32", 5)
    assert np.max(np.abs(a - b) / np.abs(a)) < 1e-5


@pytest.mark.parametrize("make, message", [
    (lambda: Reptile(MLP([1, 1]), 0.1, inner_steps=0), "Expected inner_steps >= 1. Received: inner_steps=0"),
    (lambda: Reptile(MLP([1, 1]), 0.1, outer_stepsize=-1), "Expected outer_stepsize > 0. Received: outer_stepsize=-1"),
    (lambda: ANIL(Conv4(None, input_shape=(16, 16, 1)), 0.1), "Expected a model with a head for ANIL"),
    (lambda: MetaSGD(MLP([1, 1]), inner_lr=-0.1), "Expected inner_lr > 0. Received: inner_lr=-0.1"),
])
def test_bad_configurations_fail_at_construction(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value) and "Received" in str(info.value)


# ---- Reptile's batch-norm evaluation modes ---------------------------------------------------------------
def _reptile_bn_setup(transductive):
    from metabridge.data import TaskBatch

    rng = np.random.default_rng(3)
    model = Conv4(3, input_shape=(8, 8, 1), channels=4, strided=True)
    params = perturbed_init(model, 0)
    sx, sy = rng.standard_normal((1, 3, 8, 8, 1)), np.array([[0, 1, 2]])
    qx, qy = rng.standard_normal((1, 4, 8, 8, 1)), np.array([[0, 1, 2, 0]])
    reptile = Reptile(model, 0.01, 2, transductive=transductive)
    return reptile, params, TaskBatch(sx, sy, qx, qy)


def test_reptile_non_transductive_queries_do_not_see_each_other(backend, float64):
    reptile, params, batch = _reptile_bn_setup(transductive=False)
    sx, qx = batch.support_x[0], batch.query_x[0]
    base = ops.to_numpy(reptile.predict(params, sx, qx))
    changed = qx.copy()
    changed[1:] = 5 * changed[1:] + 3                           # other queries change, query 0 does not
    assert rel_diff(ops.to_numpy(reptile.predict(params, sx, changed))[0], base[0]) < 1e-13
    # query 0 alone, batched with the support set, by the model itself
    alone = ops.to_numpy(reptile.model(params, np.concatenate([sx, qx[:1]], 0)))[-1]
    assert rel_diff(base[0], alone) < 1e-13
    transductive = Reptile(reptile.model, 0.01, 2, transductive=True)
    shared = ops.to_numpy(transductive.predict(params, sx, changed))[0]
    assert rel_diff(shared, base[0]) > 1e-3                     # batch statistics shared across queries


def test_reptile_bn_modes_agree_between_backends(both_backends, float64):
    out = {}
    for b in both_backends:
        with mb.use_backend(b):
            for mode in (True, False):
                reptile, params, batch = _reptile_bn_setup(mode)
                out[b, mode] = reptile.evaluate(params, batch, steps=2)["loss"]
    for mode in (True, False):
        assert rel_diff(out["torch", mode], out["tensorflow", mode]) < 1e-12


# ---- step-decay learning rate ------------------------------------------------------------------------------
def test_step_decay_schedule_drives_sgd_exactly(backend, float64):
    from metabridge.optim import SGD, StepDecay

    sched = StepDecay(0.1, every=2, factor=0.5)
    assert [sched(t) for t in range(6)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    opt = SGD(sched)
    params = {"w": ops.asarray(np.array([1.0, -2.0]))}
    state = opt.init(params)
    g = np.array([0.3, 0.7])
    for _ in range(5):
        params, state = opt.update(params, {"w": ops.asarray(g)}, state)
    expected = np.array([1.0, -2.0]) - (0.1 + 0.1 + 0.05 + 0.05 + 0.025) * g
    assert rel_diff(ops.to_numpy(params["w"]), expected) < 1e-15


def test_step_decay_adam_matches_numpy(backend, float64):
    from metabridge.optim import StepDecay

    rng = np.random.default_rng(1)
    grads = rng.standard_normal((7, 3))
    opt = Adam(StepDecay(0.01, every=3, factor=0.1))
    params = {"w": ops.asarray(np.zeros(3))}
    state = opt.init(params)
    w, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads):
        params, state = opt.update(params, {"w": ops.asarray(g)}, state)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        lr = 0.01 * 0.1 ** (t // 3)
        w = w - lr * (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
    assert rel_diff(ops.to_numpy(params["w"]), w) < 1e-13


# ---- experiments: ProtoNet trained with more ways than tested, decayed learning rate ------------------------
def test_protonet_trains_with_more_ways_than_it_tests(both_backends):
    from metabridge.train import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(algo="protonet", dataset="digits", ways=5, test_ways=3, steps=4, meta_batch=2,
                           test_tasks=10, lr_decay_every=2, floatx="float64")
    runs = [run_experiment(cfg, b, quiet=True) for b in both_backends]
    assert runs[0].metric > 1 / 3 and abs(runs[0].metric - runs[1].metric) < 1e-12
    assert np.max(np.abs(np.array(runs[0].losses) - runs[1].losses) / np.array(runs[0].losses)) < 1e-9


@pytest.mark.parametrize("fields, message", [
    ({"algo": "maml", "dataset": "digits", "test_ways": 3}, "Expected test_ways == ways for maml"),
    ({"algo": "protonet", "lr_decay_every": 0}, "Expected lr_decay_every >= 1. Received: lr_decay_every=0"),
    ({"algo": "protonet", "lr_decay_every": 5, "lr_decay": 2.0}, "Expected 0 < lr_decay <= 1. Received: lr_decay=2.0"),
    ({"algo": "reptile", "test_inner_steps": 0}, "Expected test_inner_steps >= 1. Received: test_inner_steps=0"),
    ({"algo": "protonet", "test_ways": 1}, "Expected test_ways >= 2. Received: test_ways=1"),
])
def test_bad_experiment_fields_are_named(fields, message):
    from metabridge.train import ExperimentConfig

    with pytest.raises(ValueError) as info:
        ExperimentConfig(**fields).resolved()
    assert message in str(info.value) and "Received" in str(info.value)


def test_reptile_transductive_must_be_a_bool():
    with pytest.raises(ValueError, match="Expected transductive True or False. Received: transductive='yes'"):
        Reptile(MLP([1, 1]), 0.1, transductive="yes")


def test_reptile_compiled_matches_eager(backend, float64):
    # SGD inner loop: Adam's first step (beta1 = 0) is lr * g / (|g| + eps), which turns
    # rounding-level differences of tiny gradient entries into lr / eps ~ 1e6 times
    # larger ones, whatever the compiler; the compiled loop itself is the same code.
    reptile, params, batch = _reptile_bn_setup(transductive=True)
    fast = Reptile(reptile.model, 0.01, 2, compiled=True)
    slow = Reptile(reptile.model, 0.01, 2)
    for alg in (fast, slow):
        alg.new, _ = alg.meta_step(params, batch, 0)
        alg.out = alg.evaluate(params, batch, steps=3)["loss"]
    assert rel_diff(flat(fast.new), flat(slow.new)) < 1e-12
    assert rel_diff(fast.out, slow.out) < 1e-12
