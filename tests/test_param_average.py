"""Exponential moving average of the parameters (``optim.ParameterAverage``,
``ema_decay``): against its closed form in numpy, across backends, compiled
against eager, through the training loop (checkpoints, resume, keep-best) and
its errors."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import metabridge as mb
from metabridge import ops
from metabridge.optim import SGD, Adam, CompiledUpdate, ParameterAverage, averaged_params
from metabridge.train import ExperimentConfig, RunOptions, resume, train
from metabridge.train.checkpoint import latest_params, list_checkpoints, load_checkpoint, split_tensors

from conftest import expect_value_error, flat, rel_diff

DECAY = 0.9


def closed_form(trajectory: list[dict], decay: float) -> dict:
    """sum_s (1 - d) d^(t-s) p_s / (1 - d^t) over the parameters after updates s = 1..t."""
    t = len(trajectory)
    weights = np.array([(1 - decay) * decay ** (t - s) for s in range(1, t + 1)]) / (1 - decay ** t)
    return {k: sum(w * p[k] for w, p in zip(weights, trajectory)) for k in trajectory[0]}


def _steps(backend: str, inner, steps: int, compiled: bool):
    """``steps`` updates of a noisy quadratic; the parameters after each and the averaged ones."""
    rng = np.random.default_rng(0)
    init = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    noise = [{k: rng.normal(size=v.shape) for k, v in init.items()} for _ in range(steps)]
    with mb.use_backend(backend):
        opt = ParameterAverage(inner, DECAY)
        params = {k: ops.asarray(v) for k, v in init.items()}
        state = opt.init(params)
        first = opt.averaged(params, state)
        assert all(np.array_equal(ops.to_numpy(first[k]), init[k]) for k in init)  # before any update
        update = CompiledUpdate(opt) if compiled else None
        trajectory = []
        for s in range(steps):
            grads = {k: 2.0 * params[k] + ops.asarray(noise[s][k]) for k in params}
            if compiled:
                params, state, finite = update(params, grads, state)
                assert finite
            else:
                params, state = opt.update(params, grads, state)
            trajectory.append({k: ops.to_numpy(v) for k, v in params.items()})
        averaged = {k: ops.to_numpy(v) for k, v in opt.averaged(params, state).items()}
    return trajectory, averaged


@pytest.mark.parametrize("inner", ["adam", "sgd-momentum"])
def test_average_matches_the_closed_form(backend, float64, inner):
    make = (lambda: Adam(0.05)) if inner == "adam" else (lambda: SGD(0.05, momentum=0.9))
    trajectory, averaged = _steps(backend, make(), 7, compiled=False)
    want = closed_form(trajectory, DECAY)
    for k in want:
        np.testing.assert_allclose(averaged[k], want[k], rtol=1e-12, atol=1e-14)
    one, avg_one = _steps(backend, make(), 1, compiled=False)  # the first average is the first update's params
    for k in avg_one:
        np.testing.assert_allclose(avg_one[k], one[0][k], rtol=1e-14, atol=0)
    # the optimizer's own update is unchanged by the average
    with mb.use_backend(backend):
        plain = make()
        rng = np.random.default_rng(0)
        params = {"w": ops.asarray(rng.normal(size=(3, 4))), "b": ops.asarray(rng.normal(size=(4,)))}
        noise = {k: rng.normal(size=ops.shape(v)) for k, v in params.items()}
        params, _ = plain.update(params, {k: 2.0 * params[k] + ops.asarray(noise[k]) for k in params},
                                 plain.init(params))
        assert all(np.array_equal(ops.to_numpy(params[k]), trajectory[0][k]) for k in params)


def test_compiled_update_equals_eager(backend, float64):
    eager_traj, eager_avg = _steps(backend, Adam(0.05), 5, compiled=False)
    comp_traj, comp_avg = _steps(backend, Adam(0.05), 5, compiled=True)
    for k in eager_avg:
        assert rel_diff(comp_avg[k], eager_avg[k]) < 1e-13
        assert rel_diff(comp_traj[-1][k], eager_traj[-1][k]) < 1e-13


def test_average_parity_across_backends(float64, both_backends):
    traj_t, avg_t = _steps("torch", Adam(0.05), 6, compiled=True)
    traj_f, avg_f = _steps("tensorflow", Adam(0.05), 6, compiled=True)
    for k in avg_t:
        assert rel_diff(avg_t[k], avg_f[k]) < 1e-12
        assert rel_diff(traj_t[-1][k], traj_f[-1][k]) < 1e-12


def test_errors():
    expect_value_error(lambda: ParameterAverage(Adam(), 1.0), "0 < decay < 1", "decay=1.0")
    expect_value_error(lambda: ParameterAverage(Adam(), True), "0 < decay < 1", "decay=True")

    class UpdateOnly:
        def update(self, params, grads, state):
            return params, state

    expect_value_error(lambda: ParameterAverage(UpdateOnly(), 0.9), "scalars() and apply()", "UpdateOnly")
    expect_value_error(lambda: averaged_params({"a": 1, "b": 2}, {"avg.a": 1}), "every parameter", "'b'")
    for bad in (0, 1, 1.5, "0.9", True):
        expect_value_error(lambda bad=bad: ExperimentConfig(ema_decay=bad).resolved(), "0 < ema_decay < 1",
                           f"ema_decay={bad!r}")


CFG = dict(algo="protonet", dataset="digits", steps=12, meta_batch=2, test_tasks=50, floatx="float64",
           outer_lr=0.05, ema_decay=0.8)


def test_training_evaluates_the_average(backend, tmp_path):
    """Checkpoints after every step hold the raw parameters and the average; the average
    equals the closed form over the saved trajectory, and it is what the run returns,
    validates, keeps as best, tests and hands to evaluate/export (``latest_params``)."""
    run = tmp_path / "run"
    options = RunOptions(checkpoint_every=1, keep=100, eval_every=4, eval_episodes=20, keep_best=True)
    result = train(ExperimentConfig(**CFG), backend, run_dir=str(run), options=options, quiet=True)
    metas = list_checkpoints(str(run / "checkpoints"))
    assert len(metas) == CFG["steps"]
    trajectory, last_slots = [], None
    for meta in metas:
        params, last_slots, _ = split_tensors(load_checkpoint(meta)[0])
        trajectory.append(params)
    want = closed_form(trajectory, CFG["ema_decay"])
    for k in want:
        np.testing.assert_allclose(last_slots["avg." + k], want[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(result.params[k], want[k], rtol=1e-10, atol=1e-12)
    assert rel_diff(flat(trajectory[-1]), flat(want)) > 1e-3  # the raw parameters differ
    evaluated, _ = latest_params(str(run / "checkpoints"))
    assert all(np.array_equal(evaluated[k], result.params[k]) for k in want)
    best, meta = latest_params(str(run / "best"))
    step_params = [split_tensors(load_checkpoint(m)[0]) for m in metas]
    _, slots_at_best, _ = step_params[meta["step"] - 1]
    assert all(np.array_equal(best[k], slots_at_best["avg." + k]) for k in want)


def test_resume_continues_the_average_exactly(backend, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    options = RunOptions(checkpoint_every=3, keep=10)
    train(ExperimentConfig(**CFG), backend, run_dir=str(whole), options=options, quiet=True)
    shutil.copytree(whole, cut)
    for meta in list_checkpoints(str(cut / "checkpoints")):  # as if killed after step 6
        if int(os.path.basename(meta)[5:13]) > 6:
            os.unlink(meta)
            os.unlink(meta[:-5] + ".safetensors")
    os.unlink(cut / "result.json")
    resumed = resume(str(cut), quiet=True)
    a, _ = latest_params(str(whole / "checkpoints"))
    b, _ = latest_params(str(cut / "checkpoints"))
    assert all(np.array_equal(a[k], b[k]) for k in a) and all(np.array_equal(a[k], resumed.params[k]) for k in a)
    assert json.loads((cut / "result.json").read_text()) == json.loads((whole / "result.json").read_text())
