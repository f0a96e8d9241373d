"""Several training steps per compiled call (train/stepper.py, ``CompiledUpdate.fused_steps``)
compute what one call a step computes, stop at the first non-finite step, and
end every call where the loop evaluates or checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import rel_diff

from metabridge import ops, optim
from metabridge.train import ExperimentConfig, RunDir, RunOptions, train
from metabridge.train.experiment import Experiment
from metabridge.train.stepper import STEPS_PER_CALL, Steps

SIN = dict(algo="maml", dataset="sinusoid", steps=40, meta_batch=5, shots=5, queries=5, test_tasks=20,
           floatx="float64")


def _one_call_a_step(monkeypatch):
    monkeypatch.setattr(Experiment, "steps_per_call", lambda self, backend: 1)


def test_sinusoid_steps_per_call_on_tensorflow_only():
    c = ExperimentConfig(**SIN).resolved()
    setup = Experiment(c)
    assert setup.steps_per_call("tensorflow") == STEPS_PER_CALL > 1
    assert setup.steps_per_call("torch") == 1
    from dataclasses import replace
    assert Experiment(replace(c, compiled=False)).steps_per_call("tensorflow") == 1


def test_several_steps_per_call_equal_one_call_a_step(tmp_path, backend, monkeypatch):
    cfg = ExperimentConfig(**SIN)
    options = RunOptions(checkpoint_every=10, keep=10, eval_every=7, eval_episodes=4)
    many = train(cfg, backend, run_dir=str(tmp_path / "many"), options=options, quiet=True)
    _one_call_a_step(monkeypatch)
    one = train(cfg, backend, run_dir=str(tmp_path / "one"), options=options, quiet=True)
    assert len(many.losses) == len(one.losses) == 40
    assert rel_diff(np.array(many.losses), np.array(one.losses)) < 1e-12
    for k in one.params:
        assert rel_diff(many.params[k], one.params[k]) < 1e-12, k
    a, b = RunDir.open(str(tmp_path / "many")), RunDir.open(str(tmp_path / "one"))
    val = [(m["step"], m["monitor_mse"]) for m in a.read_metrics() if "monitor_mse" in m]
    assert [s for s, _ in val] == [6, 13, 20, 27, 34]  # evaluated where the loop evaluates
    ref = [(m["step"], m["monitor_mse"]) for m in b.read_metrics() if "monitor_mse" in m]
    assert rel_diff(np.array(val), np.array(ref)) < 1e-12
    assert abs(many.metric - one.metric) < 1e-12 * abs(one.metric)


def test_fused_steps_stop_at_the_first_non_finite_step(backend, float64):
    """Step 3 of 6 makes the loss NaN: three steps are applied, the state is
    the one after them, and the check marks step 3."""
    opt = optim.SGD(0.1)
    update = optim.CompiledUpdate(opt, compiled=True, whole_step=backend == "tensorflow")

    def grad_fn(params, scale):
        return ops.value_and_grad(lambda p: ops.sum(ops.square(p["w"])) * scale)(params)

    scales = ops.asarray(np.array([1.0, 1.0, 1.0, np.nan, 1.0, 1.0]))
    params = {"w": ops.asarray(np.array([1.0, -2.0]))}
    losses, checks, done, new, state = update.fused_steps(grad_fn, (scales,), params, opt.init(params))
    assert done == 3 and state["step"] == 3
    np.testing.assert_allclose(ops.to_numpy(new["w"]), np.array([1.0, -2.0]) * 0.8 ** 3, rtol=1e-15)
    np.testing.assert_allclose(losses[:3], 5.0 * 0.64 ** np.arange(3), rtol=1e-14)
    assert np.all(checks[:3] == 0) and np.isnan(checks[3])


def test_non_finite_step_inside_a_call_stops_the_run_there(backend):
    # an absurd outer learning rate: the first update sends the meta-loss to inf at step 1
    cfg = ExperimentConfig(**dict(SIN, steps=30, outer_lr=1e4, floatx="float32"))
    with pytest.raises(FloatingPointError, match=r"Non-finite meta-loss inf at step 1; stopping"):
        train(cfg, backend, quiet=True)


@pytest.mark.parametrize("start, boundaries, total, room", [
    (0, (), 100, 16), (90, (), 100, 10), (0, (10,), 100, 10), (10, (10, 7), 100, 4), (14, (7, None, 0), 100, 7),
    (99, (), 100, 1),
])
def test_a_call_ends_on_every_boundary(start, boundaries, total, room):
    class Setup:
        def steps_per_call(self, backend):
            return 16

    steps = Steps(Setup(), optim.CompiledUpdate(optim.SGD(0.1)), "tensorflow", total, boundaries)
    assert steps._room(start) == room
