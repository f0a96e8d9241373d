"""The metabridge command: compare/train output, JSON shape, clear errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from metabridge.cli import main
from metabridge.train import ExperimentConfig, mean_ci95, parity, run_experiment


def test_compare_json_has_the_documented_shape(both_backends, capsys):
    code = main(["compare", "--algo", "maml", "--steps", "3", "--meta-batch", "4",
                 "--test-tasks", "20", "--quiet", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["algo"] == "maml" and report["config"]["steps"] == 3
    for name in ("torch", "tensorflow"):
        res = report["results"][name]
        assert {"final_loss", "metric", "metric_ci95", "seconds_per_step"} <= set(res)
    assert report["results"]["torch"]["final_loss"] == pytest.approx(
        report["results"]["tensorflow"]["final_loss"], rel=1e-5)
    assert report["parity"]["max_rel_loss_diff"] < 1e-5
    assert report["parity"]["max_abs_param_diff"] < 1e-5


def test_compare_table_for_siamese(both_backends, capsys):
    code = main(["compare", "--algo", "siamese", "--steps", "3", "--test-tasks", "10", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "siamese on digits" in out and "torch" in out and "tensorflow" in out and "parity" in out


def test_train_one_backend(backend, capsys):
    code = main(["train", "--algo", "fomaml", "--backend", backend, "--steps", "2", "--meta-batch", "2",
                 "--test-tasks", "5", "--quiet", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["results"]) == [backend] and "parity" not in report


@pytest.mark.parametrize("argv, message", [
    (["compare", "--backends", "jax"], "Expected backend to be one of"),
    (["compare", "--algo", "maml", "--steps", "0"], "Expected steps >= 1. Received: steps=0"),
    (["compare", "--algo", "siamese", "--dataset", "sinusoid"], "Expected a classification dataset for siamese"),
    (["compare", "--algo", "siamese", "--ways", "20", "--steps", "1"],
     "Expected ways <= 5 (classes available in digits[test]). Received: ways=20"),
    (["train", "--algo", "maml", "--inner-lr", "-1"], "Expected inner_lr > 0. Received: inner_lr=-1"),
])
def test_bad_arguments_give_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "metabridge", "compare", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--backends" in out.stdout


def test_parity_of_a_float64_run_is_exact_to_rounding(both_backends):
    cfg = ExperimentConfig(algo="maml", steps=5, meta_batch=3, test_tasks=10, floatx="float64")
    a, b = run_experiment(cfg, "torch", quiet=True), run_experiment(cfg, "tf", quiet=True)
    p = parity(a, b)
    assert p["max_rel_loss_diff"] < 1e-9 and p["max_abs_param_diff"] < 1e-9
    assert a.metric == pytest.approx(b.metric, rel=1e-9)


def test_mean_ci95_matches_the_normal_formula():
    import numpy as np

    values = np.random.default_rng(0).normal(size=600)
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(values.mean())
    assert ci == pytest.approx(1.96 * values.std(ddof=1) / np.sqrt(600))
    with pytest.raises(ValueError, match="Expected at least one value"):
        mean_ci95([])


@pytest.fixture
def omniglot_root(tmp_path):
    """A tiny Omniglot in the official zipped layout (see test_omniglot.py)."""
    from test_omniglot import BACKGROUND, DRAWERS, EVALUATION, _drawing, _write_zip

    char_id = 0
    for subset, alphabets in (("background", BACKGROUND), ("evaluation", EVALUATION)):
        files = []
        for alphabet, n_chars in alphabets:
            for nn in range(1, n_chars + 1):
                char_id += 1
                files += [(f"images_{subset}/{alphabet}/character{nn:02d}/{char_id:04d}_{dd:02d}.png",
                           _drawing(char_id, dd)) for dd in range(1, DRAWERS + 1)]
        _write_zip(tmp_path / f"images_{subset}.zip", files)
    return tmp_path


@pytest.mark.parametrize("algo, extra", [
    ("maml", ["--split", "lake", "--rotations", "per-task", "--ways", "3", "--meta-batch", "2"]),
    ("siamese", ["--ways", "2", "--meta-batch", "4"]),
])
def test_compare_on_omniglot_records_the_protocol(both_backends, omniglot_root, algo, extra, capsys):
    code = main(["compare", "--algo", algo, "--dataset", "omniglot", "--data-dir", str(omniglot_root),
                 "--steps", "2", "--test-tasks", "4", "--quiet", "--json", *extra])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    data = report["results"]["torch"]["data"]
    if algo == "maml":
        assert data["train"]["split"] == "lake" and data["train"]["rotations"] == "per-task"
        assert data["test"]["part"] == "test"
    else:
        assert data["split"] == "lake" and "within-alphabet" in data["test"]
    assert report["parity"]["max_rel_loss_diff"] < 1e-5


def test_omniglot_without_data_dir_is_a_clear_error(capsys):
    """Without --data-dir Omniglot comes from the embedded 28x28 copy; other sizes need the archives."""
    assert main(["train", "--algo", "maml", "--dataset", "omniglot", "--image-size", "105", "--steps", "1"]) == 2
    assert "Expected --data-dir" in capsys.readouterr().err
    assert main(["train", "--algo", "maml", "--dataset", "miniimagenet", "--steps", "1"]) == 2
    assert "Expected --data-dir" in capsys.readouterr().err


def test_omniglot_without_data_dir_uses_the_embedded_copy(both_backends, capsys):
    code = main(["compare", "--algo", "protonet", "--dataset", "omniglot", "--steps", "2", "--meta-batch", "2",
                 "--test-tasks", "4", "--floatx", "float64", "--quiet", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    data = report["results"]["torch"]["data"]
    assert data["source"] == "embedded" and data["train"]["split"] == "vinyals"
    assert report["parity"]["max_rel_loss_diff"] < 1e-9


def test_non_finite_loss_stops_with_the_step_number(backend, capsys):
    with pytest.raises(FloatingPointError, match=r"Non-finite meta-loss .* at step 0"):
        run_experiment(ExperimentConfig(steps=5, inner_lr=1e12, test_tasks=5, meta_batch=2), backend, quiet=True)
    assert main(["train", "--backend", backend, "--steps", "5", "--inner-lr", "1e12", "--meta-batch", "2",
                 "--test-tasks", "5", "--quiet"]) == 2
    assert "Non-finite meta-loss" in capsys.readouterr().err


def test_protonet_from_the_command_line(both_backends, capsys):
    assert main(["compare", "--algo", "protonet", "--steps", "3", "--test-tasks", "10", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["algo"] == "protonet" and report["results"]["torch"]["metric_name"] == "accuracy"
    assert report["parity"]["max_rel_loss_diff"] < 1e-5


@pytest.mark.parametrize("algo", ["metasgd", "anil", "reptile", "matching"])
def test_family_from_the_command_line(both_backends, algo, capsys):
    assert main(["compare", "--algo", algo, "--steps", "3", "--meta-batch", "3", "--test-tasks", "10",
                 "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["algo"] == algo and report["parity"]["max_rel_loss_diff"] < 1e-5
