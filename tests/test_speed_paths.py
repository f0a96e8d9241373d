"""The fast paths of issue #10 compute what the plain paths compute.

* a meta-batch run as one batched computation (``MAML.batched_task_loss``,
  ``MLP.apply_tasks``) against the task-by-task loop, float64 1e-12, on every
  MAML-family algorithm that takes it, and across backends;
* the compiled optimizer step (``optim.CompiledUpdate``) against ``opt.update``;
* counter-based sinusoid tasks: pure in ``(seed, index)``, a batch equal to its
  episodes, uniform numbers that look uniform.
"""
from __future__ import annotations

import dataclasses
import threading
import warnings

import numpy as np
import pytest
from conftest import rel_diff

import metabridge as mb
from metabridge import ops, optim
from metabridge.algorithms import ANIL, MAML, MetaSGD
from metabridge.algorithms.common import CompiledFunctions
from metabridge.algorithms.siamese import KochSGD
from metabridge.data import SinusoidTasks, TaskBatch
from metabridge.data.counter_rng import counter_uniforms
from metabridge.nn import MLP


def _numpy(d: dict) -> dict:
    return {k: np.array(ops.to_numpy(v)) for k, v in d.items()}


def _classification_batch(tasks: int, ways: int, shots: int, features: int, seed: int) -> TaskBatch:
    rng = np.random.default_rng(seed)
    labels = np.tile(np.repeat(np.arange(ways), shots), (tasks, 1))
    return TaskBatch(rng.normal(size=(tasks, ways * shots, features)), labels,
                     rng.normal(size=(tasks, ways * shots, features)), labels)


def _both_paths(alg, params, batch):
    """``(batched, loop)`` meta-loss and meta-gradient of ``alg`` on ``batch``."""
    assert alg.tasks_batched()
    batched = alg.meta_value_and_grad(params, batch)
    alg.tasks_batched = lambda: False  # the task-by-task loop, as for models without apply_tasks
    alg._compiled = CompiledFunctions()  # not the function traced on the batched path
    loop = alg.meta_value_and_grad(params, batch)
    return batched, loop


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_batched_meta_batch_equals_the_task_loop_regression(backend, float64, cls, first_order, compiled):
    alg = cls(MLP([1, 40, 40, 1]), inner_lr=0.01, inner_steps=2, first_order=first_order, loss="mse",
              compiled=compiled)
    params = alg.init(0) if cls is MetaSGD else alg.model.init(0)
    batch = SinusoidTasks(shots=10, queries=10, seed=1, dtype="float64").batch(0, 25)
    (lb, gb), (ll, gl) = _both_paths(alg, params, batch)
    assert abs(float(ops.to_numpy(lb)) - float(ops.to_numpy(ll))) < 1e-12 * abs(float(ops.to_numpy(ll)))
    gb, gl = _numpy(gb), _numpy(gl)
    assert list(gb) == list(gl)
    for k in gl:
        assert rel_diff(gb[k], gl[k]) < 1e-12, k


def test_batched_meta_batch_equals_the_task_loop_classification(backend, float64):
    alg = MAML(MLP([6, 16, 3], activation="tanh"), inner_lr=0.3, inner_steps=1)
    params = alg.model.init(3)
    (lb, gb), (ll, gl) = _both_paths(alg, params, _classification_batch(5, 3, 2, 6, seed=0))
    assert abs(float(ops.to_numpy(lb)) - float(ops.to_numpy(ll))) < 1e-12
    for k, v in _numpy(gl).items():
        assert rel_diff(_numpy(gb)[k], v) < 1e-12, k


def test_anil_and_custom_losses_keep_the_task_loop(backend):
    assert not ANIL(MLP([1, 8, 1]), inner_lr=0.1, loss="mse").tasks_batched()
    assert not MAML(MLP([1, 8, 1]), inner_lr=0.1, loss=lambda p, y: ops.sum(ops.square(p - y))).tasks_batched()
    assert MAML(MLP([1, 8, 1]), inner_lr=0.1, loss="mse").tasks_batched()


def test_batched_path_parity_between_backends(float64, both_backends):
    batch = SinusoidTasks(shots=5, queries=5, seed=0, dtype="float64").batch(2, 8)
    out = {}
    for name in both_backends:
        mb.set_backend(name)
        alg = MAML(MLP([1, 20, 20, 1]), inner_lr=0.01, inner_steps=2, loss="mse", compiled=True)
        loss, grads = alg.meta_value_and_grad(alg.model.init(0), batch)
        out[name] = float(ops.to_numpy(loss)), _numpy(grads)
    assert abs(out["torch"][0] - out["tensorflow"][0]) < 1e-12 * out["torch"][0]
    for k, v in out["torch"][1].items():
        assert rel_diff(v, out["tensorflow"][1][k]) < 1e-12, k


def test_apply_tasks_rows_are_the_model_on_each_parameter_set(backend, float64):
    model = MLP([3, 7, 2], activation="tanh")
    sets = [model.init(seed) for seed in range(4)]
    stacked = {k: ops.asarray(np.stack([p[k] for p in sets])) for k in sets[0]}
    x = np.random.default_rng(0).normal(size=(4, 5, 3))
    out = ops.to_numpy(model.apply_tasks(stacked, x))
    for t, p in enumerate(sets):
        np.testing.assert_allclose(out[t], ops.to_numpy(model(p, x[t])), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match=r"Expected x of shape \(tasks, batch, 3\).*Received: x.shape=\(4, 3\)"):
        model.apply_tasks(stacked, x[:, 0])


# ---- the compiled optimizer step ---------------------------------------------------------------------
def _state_numpy(state: dict) -> dict:
    return {k: (v if k == "step" else np.array(ops.to_numpy(v))) for k, v in state.items()}


@pytest.mark.parametrize("make", [
    lambda: optim.Adam(1e-2),
    lambda: optim.Adam(optim.StepDecay(1e-2, every=2, factor=0.5)),
    lambda: optim.SGD(0.1, momentum=0.9),
    lambda: KochSGD(0.01, layer_lr={"dense1": 2.0, "*": 1.0}, momentum={"dense2": 0.8, "*": 0.95},
                    momentum_steps=3, l2={"*": 1e-3}),
], ids=["adam", "adam-step-decay", "sgd-momentum", "koch-sgd"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_compiled_update_equals_eager_update(backend, make, precision):
    mb.set_floatx(precision)
    try:
        rng = np.random.default_rng(0)
        params = MLP([3, 4, 2]).init(0)
        opt = make()
        state_e = opt.init({k: ops.asarray(v) for k, v in params.items()})
        state_c = dict(state_e)
        pe = pc = {k: ops.asarray(v) for k, v in params.items()}
        step = optim.CompiledUpdate(opt, compiled=True)
        for _ in range(5):
            grads = {k: ops.asarray(rng.normal(size=v.shape).astype(precision)) for k, v in params.items()}
            pe, state_e = opt.update(pe, grads, state_e)
            pc, state_c, finite = step(pc, grads, state_c)
            assert finite
        assert list(state_c) == list(state_e) and state_c["step"] == state_e["step"] == 5
        for k, v in _numpy(pe).items():  # same ops, same rounding: bit for bit
            np.testing.assert_array_equal(_numpy(pc)[k], v)
        for k, v in _state_numpy(state_e).items():
            np.testing.assert_array_equal(_state_numpy(state_c)[k], v)
    finally:
        mb.set_floatx("float32")


def test_compiled_update_reports_non_finite_values(backend):
    params = {"w": ops.asarray(np.ones(3, dtype=np.float32))}
    opt = optim.SGD(1.0)
    step = optim.CompiledUpdate(opt)
    _, _, finite = step(params, {"w": ops.asarray(np.array([0.0, np.inf, 0.0], dtype=np.float32))},
                        opt.init(params))
    assert not finite
    _, _, finite = step(params, {"w": ops.asarray(np.zeros(3, dtype=np.float32))}, opt.init(params))
    assert finite
    with pytest.raises(ValueError, match="Expected grads with the keys of params"):
        step(params, {"v": params["w"]}, opt.init(params))


# ---- counter-based sinusoid tasks --------------------------------------------------------------------
def test_counter_uniforms_are_pure_and_uniform():
    u = counter_uniforms(7, np.arange(20000), 8)
    assert u.shape == (20000, 8) and u.dtype == np.float64
    assert u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(counter_uniforms(7, [12345], 8)[0], u[12345])
    assert not np.array_equal(counter_uniforms(8, [12345], 8)[0], u[12345])
    # Moments and neighbours of 160,000 numbers: mean 1/2, variance 1/12, no correlation.
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    for a, b in ((u[:, 0], u[:, 1]), (u[:-1, 0], u[1:, 0])):
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 0.95 * u.size / 10 and counts.max() < 1.05 * u.size / 10


@pytest.mark.parametrize("call, message", [
    (lambda: counter_uniforms(-1, [0], 3), r"Expected seed >= 0. Received: seed=-1"),
    (lambda: counter_uniforms(0, [0], 0), r"Expected count >= 1. Received: count=0"),
    (lambda: counter_uniforms(0, [2, -1], 3), r"Expected non-negative integer indices. Received: .* from -1 to 2"),
    (lambda: counter_uniforms(0, [0.5], 3), r"Expected non-negative integer indices. Received: indices of dtype float64"),
])
def test_counter_uniforms_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_dtype_name(backend):
    assert ops.dtype_name(ops.asarray(np.zeros(2, dtype=np.float64), "float64")) == "float64"
    assert ops.dtype_name(ops.asarray(np.zeros(2, dtype=np.float32), "float32")) == "float32"
    assert ops.dtype_name(ops.asarray(np.arange(2))) == "int64"


def test_sinusoid_batch_is_its_episodes():
    tasks = SinusoidTasks(shots=4, queries=6, seed=3, dtype="float64")
    batch = tasks.batch(5, 7)
    for j in range(7):
        ep = tasks.episode(5 * 7 + j)
        for name in ("support_x", "support_y", "query_x", "query_y"):
            np.testing.assert_array_equal(getattr(batch, name)[j], getattr(ep, name))


@pytest.mark.parametrize("whole_step, first_order", [(False, False), (True, False), (True, True)])
def test_fused_train_step_equals_gradient_then_update(backend, float64, whole_step, first_order):
    """``CompiledUpdate.fused`` (meta-gradient and Adam in one compiled function)
    against ``meta_value_and_grad`` + ``opt.update``. ``whole_step``: on torch
    ``torch.compile`` with ``torch.func`` gradients (second order), on
    TensorFlow the traced graph called directly. First order: the inner
    gradient stopped (``detach`` inside ``torch.func.grad``)."""
    alg = MAML(MLP([1, 20, 20, 1]), inner_lr=0.01, loss="mse", compiled=True, first_order=first_order)
    tasks = SinusoidTasks(shots=5, queries=5, seed=0, dtype="float64")
    opt = optim.Adam(1e-2)
    step = optim.CompiledUpdate(opt, compiled=True, whole_step=whole_step)
    p_ref = p_fused = {k: ops.asarray(v) for k, v in alg.model.init(0).items()}
    s_ref = s_fused = opt.init(p_ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the compiled path, not the eager fallback
        for i in range(4):
            batch = tasks.batch(i, 6)
            loss_ref, grads = alg.meta_value_and_grad(p_ref, batch)
            p_ref, s_ref = opt.update(p_ref, grads, s_ref)
            grad_fn, args = alg.meta_gradient_function(batch)
            loss, p_fused, s_fused, finite = step.fused(grad_fn, args, p_fused, s_fused)
            assert finite
            assert (abs(float(ops.to_numpy(loss)) - float(ops.to_numpy(loss_ref)))
                    < 1e-12 * float(ops.to_numpy(loss_ref)))
    assert s_fused["step"] == s_ref["step"] == 4
    for k, v in _numpy(p_ref).items():
        assert rel_diff(_numpy(p_fused)[k], v) < 1e-12, k


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
def test_batched_evaluation_equals_the_task_loop(backend, float64, cls):
    alg = cls(MLP([1, 40, 40, 1]), inner_lr=0.01, loss="mse")
    params = _numpy(alg.init(0)) if cls is MetaSGD else alg.model.init(0)
    batch = SinusoidTasks(shots=5, queries=7, seed=2, dtype="float64").batch(0, 9)
    batched = alg.evaluate(params, batch, steps=3)
    alg.tasks_batched = lambda: False
    loop = alg.evaluate(params, batch, steps=3)
    assert sorted(batched) == sorted(loop) == ["loss", "mse"]
    for k in loop:
        assert batched[k].shape == loop[k].shape == (9, 4)
        assert rel_diff(batched[k], loop[k]) < 1e-12, k
    assert np.abs(loop["loss"][:, 3] - loop["loss"][:, 0]).min() > 1e-3  # the adaptation steps change the model


def test_batched_evaluation_equals_the_task_loop_classification(backend, float64):
    alg = MAML(MLP([6, 16, 3], activation="tanh"), inner_lr=0.5)
    params = alg.model.init(3)
    batch = _classification_batch(5, 3, 2, 6, seed=4)
    batched = alg.evaluate(params, batch, steps=2)
    alg.tasks_batched = lambda: False
    loop = alg.evaluate(params, batch, steps=2)
    assert sorted(batched) == sorted(loop) == ["accuracy", "loss"]
    np.testing.assert_array_equal(batched["accuracy"], loop["accuracy"])
    assert rel_diff(batched["loss"], loop["loss"]) < 1e-12


def test_whole_step_falls_back_to_eager_when_it_cannot_compile(backend):
    """A step the compiler cannot take whole (here: a graph break inside) runs
    eagerly after a warning on torch; TensorFlow traces it as before."""
    calls = []

    def step(x):
        calls.append(1)
        if backend == "torch":
            import torch

            torch._dynamo.graph_break()  # what an untraceable call does: torch.compile(fullgraph=True) refuses it
        return x * 2.0

    fn = ops.compile_function(step, whole_step=True)
    x = ops.asarray(np.arange(3.0))
    if backend == "torch":
        with pytest.warns(RuntimeWarning, match="runs eagerly"):
            out = fn(x)
    else:
        out = fn(x)
    np.testing.assert_array_equal(ops.to_numpy(out), [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(ops.to_numpy(fn(x + 1.0)), [2.0, 4.0, 6.0])


def test_whole_step_traces_again_for_new_shapes(backend):
    fn = ops.compile_function(lambda d, y: {"s": ops.sum(d["a"]) + ops.sum(y)}, whole_step=True)
    for n in (2, 3, 2):
        out = fn({"a": ops.asarray(np.ones(n))}, ops.asarray(np.ones((n, 2))))
        assert float(ops.to_numpy(out["s"])) == 3.0 * n
    # Python numbers take part in tracing: a new number is a new trace, not a stale result.
    scaled = ops.compile_function(lambda d, y: {"s": ops.sum(d["a"]) * y}, whole_step=True)
    for y in (2.0, 3.0):
        assert float(ops.to_numpy(scaled({"a": ops.asarray(np.ones(2))}, y)["s"])) == 2.0 * y


def test_pinned_backend_and_floatx():
    """The pin holds the settings for a compiler's trace; other threads keep their own."""
    from metabridge import config

    seen = {}

    def other_thread():
        with config.use_floatx("float32"):
            seen["floatx"] = config.floatx()

    with config.use_backend("torch"), config.use_floatx("float64"):
        with config.pinned() as pin:
            assert pin == ("torch", "float64") == (config.get_backend(), config.floatx())
            with config.pinned() as inner:  # nested: keeps the outer pin
                assert inner == pin
            assert config._pinned == pin
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        assert config._pinned is None
    assert seen == {"floatx": "float32"}
    assert config.floatx() == "float32"


def test_torch_compile_option():
    from metabridge.train import ExperimentConfig
    from metabridge.train.experiment import TORCH_COMPILE_MIN_STEPS, Experiment

    with pytest.raises(ValueError, match=r"Expected torch_compile in \('auto', 'on', 'off'\). "
                                         r"Received: torch_compile='yes'"):
        ExperimentConfig(algo="maml", dataset="sinusoid", torch_compile="yes").resolved()

    def whole(backend, **kw):
        c = ExperimentConfig(algo="maml", dataset="sinusoid", **kw).resolved()
        return Experiment(c).whole_step_compiled(backend)

    assert not whole("torch", steps=TORCH_COMPILE_MIN_STEPS - 1)
    assert whole("torch", steps=TORCH_COMPILE_MIN_STEPS)
    assert whole("torch", steps=10, torch_compile="on")
    assert not whole("torch", steps=TORCH_COMPILE_MIN_STEPS, torch_compile="off")
    assert not whole("torch", steps=10, torch_compile="on", compiled=False)
    assert whole("tensorflow", steps=10) and not whole("tensorflow", steps=10, compiled=False)
    # auto: only small batches (a large network's eager step is already at a hand-written loop's speed)
    big = ExperimentConfig(algo="maml", dataset="digits", steps=TORCH_COMPILE_MIN_STEPS, meta_batch=2000).resolved()
    assert not Experiment(big).whole_step_compiled("torch")
    assert Experiment(dataclasses.replace(big, meta_batch=4)).whole_step_compiled("torch")
