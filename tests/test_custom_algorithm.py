"""examples/custom_algorithm.py: an algorithm from one file trains, checkpoints,
resumes and evaluates through the command line on both backends, found via
METABRIDGE_PLUGINS and via an installed entry point."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from metabridge import cli
from metabridge.recipes import registry
from metabridge.train.checkpoint import load_latest

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                       "custom_algorithm.py")
NAME = "scaled-protonet"


def _metabridge(args, env_extra, cwd=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env_extra}
    proc = subprocess.run([sys.executable, "-m", "metabridge", *args], env=env, capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _drop_last_checkpoint(run: str, step: int, keep_in: str) -> None:
    ckpts = os.path.join(run, "checkpoints")
    os.makedirs(keep_in, exist_ok=True)
    for f in os.listdir(ckpts):
        if f.startswith(f"step-{step:08d}"):
            shutil.move(os.path.join(ckpts, f), os.path.join(keep_in, f))


def _params(run: str) -> dict:
    tensors, meta = load_latest(os.path.join(run, "checkpoints"))
    return {k: v for k, v in tensors.items() if k.startswith("params/")}, meta


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_plugin_file_trains_resumes_and_evaluates_through_the_cli(both_backends, backend, tmp_path):
    env = {"METABRIDGE_PLUGINS": EXAMPLE}
    run = str(tmp_path / "run")
    args = ["train", "--algo", NAME, "--backend", backend, "--steps", "6", "--meta-batch", "2",
            "--checkpoint-every", "3", "--test-tasks", "20", "--run-dir", run, "--json", "--quiet"]
    done = _metabridge(args, env)
    full, meta = _params(run)
    assert meta["step"] == 6 and "params/metric.log_scale" in full
    # the learned scale moved away from its initial value log(1) = 0
    assert abs(float(full["params/metric.log_scale"][0])) > 0
    _drop_last_checkpoint(run, 6, str(tmp_path / "moved"))
    assert _params(run)[1]["step"] == 3
    resumed = _metabridge(["resume", run, "--json", "--quiet"], env)
    again, meta = _params(run)
    assert meta["step"] == 6
    for k in full:
        assert np.array_equal(full[k], again[k]), k
    assert resumed["results"][backend]["metric"] == done["results"][backend]["metric"]
    other = "tensorflow" if backend == "torch" else "torch"
    ev = _metabridge(["eval", run, "--backend", other, "--json"], env)
    assert ev["backend"] == other and ev["episodes"] == 20
    # float32 across frameworks: at most two near-tie queries of the 20 x 25 may flip
    assert abs(ev["metric"] - done["results"][backend]["metric"]) <= 2 / 500


def test_without_the_plugin_the_algorithm_is_unknown(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metabridge", "train", "--algo", NAME, "--steps", "1"],
                          env={**os.environ, "METABRIDGE_PLUGINS": ""}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "invalid choice" in proc.stderr and NAME in proc.stderr


def test_entry_point_plugin_appears_in_algo_choices(tmp_path):
    """A pip-installed package declaring a metabridge.recipes entry point: here a
    dist-info folder on PYTHONPATH, which is what pip installs."""
    site = tmp_path / "site"
    (site / "my_recipes-1.0.dist-info").mkdir(parents=True)
    shutil.copy(EXAMPLE, site / "my_custom_algorithm.py")
    (site / "my_recipes-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: my-recipes\n"
                                                                 "Version: 1.0\n")
    (site / "my_recipes-1.0.dist-info" / "entry_points.txt").write_text(
        f"[metabridge.recipes]\n{NAME} = my_custom_algorithm:RECIPE\n")
    env = {**os.environ, "PYTHONPATH": str(site), "METABRIDGE_PLUGINS": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    code = "from metabridge.recipes import recipe_names; print(','.join(recipe_names()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert NAME in out.stdout.strip().split(",")
    proc = subprocess.run([sys.executable, "-m", "metabridge", "compare", "--algo", NAME, "--steps", "2",
                           "--meta-batch", "2", "--test-tasks", "5", "--backends", "torch", "--json", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["config"]["algo"] == NAME


def test_bad_plugin_path_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setenv(registry.PLUGINS_ENV, "no/such/file.py")
    with pytest.raises(ValueError, match="Expected an existing file in METABRIDGE_PLUGINS. Received: 'no/such/file.py'"):
        registry.load_plugins()
    assert cli  # the CLI module imports cleanly with the registry
