"""Early stopping (``keep_best``, issue 12): the best validated parameters are
kept in RUN_DIR/best, tested at the end, and survive a kill and resume."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from metabridge import config, ops
from metabridge.train import ExperimentConfig, RunOptions, resume, train
from metabridge.train.checkpoint import latest_params, list_checkpoints
from metabridge.train.experiment import Experiment
from metabridge.utils.stats import mean_ci95

CFG = dict(algo="protonet", dataset="digits", steps=24, meta_batch=2, test_tasks=100, floatx="float64",
           outer_lr=0.05)  # a large step: validation goes up and down, so the best is not the last
OPTIONS = dict(checkpoint_every=4, eval_every=4, eval_episodes=50, keep_best=True)


def _validations(path):
    rows = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
    key = "val_accuracy" if any("val_accuracy" in r for r in rows) else "monitor_accuracy"  # digits: no val split
    return [(r["step"] + 1, r[key]) for r in rows if key in r]


def test_the_best_validation_is_kept_and_tested(backend, tmp_path):
    run = tmp_path / "run"
    result = train(ExperimentConfig(**CFG), backend, run_dir=str(run), options=RunOptions(**OPTIONS), quiet=True)
    vals = _validations(run)
    best_step, best_value = max(vals, key=lambda sv: (sv[1], -sv[0]))  # the first of the highest
    params, meta = latest_params(str(run / "best"))
    assert (meta["step"], meta["val_metric"]) == (best_step, best_value)
    assert len(list_checkpoints(str(run / "best"))) == 1
    record = json.loads((run / "result.json").read_text())
    assert record["tested_step"] == best_step == result.tested_step and record["val_metric"] == best_value
    cfg = ExperimentConfig(**CFG).resolved()
    with config.use_floatx("float64"), config.use_backend(backend):  # recompute the test independently
        exp = Experiment(cfg)
        _, values = exp.evaluate({k: ops.asarray(v) for k, v in params.items()})
        _, last = exp.evaluate({k: ops.asarray(v) for k, v in result.params.items()})
    assert record["metric"] == pytest.approx(mean_ci95(values)[0], abs=1e-12)
    if best_step != CFG["steps"]:  # the last parameters are tested only without keep_best
        assert not np.array_equal(values, last)


def test_keep_best_survives_a_kill_and_resume(backend, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(ExperimentConfig(**CFG), backend, run_dir=str(whole), options=RunOptions(**OPTIONS), quiet=True)
    shutil.copytree(whole, cut)
    # as if killed after step 16: later checkpoints and results gone (the kept best may be newer)
    for meta in list_checkpoints(str(cut / "checkpoints")):
        if int(os.path.basename(meta)[5:13]) > 16:
            os.unlink(meta)
            os.unlink(meta[:-5] + ".safetensors")
    os.unlink(cut / "result.json")
    resume(str(cut), quiet=True)
    assert json.loads((cut / "result.json").read_text()) == json.loads((whole / "result.json").read_text())
    a, ma = latest_params(str(whole / "best"))
    b, mb_ = latest_params(str(cut / "best"))
    assert ma["step"] == mb_["step"] and all(np.array_equal(a[k], b[k]) for k in a)


def test_keep_best_needs_validation():
    with pytest.raises(ValueError, match="Expected eval_every > 0 with keep_best"):
        RunOptions(keep_best=True).checked()
    with pytest.raises(ValueError, match="Expected keep_best true or false. Received: keep_best='yes'"):
        RunOptions(eval_every=2, keep_best="yes").checked()
