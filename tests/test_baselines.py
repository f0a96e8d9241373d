"""Baselines printed beside every compare result: pixel nearest neighbour,
support mean, the untrained network — on the same test episodes."""
from __future__ import annotations

import json

import numpy as np

import metabridge as mb
from metabridge.cli import main
from metabridge.data import Episode
from metabridge.train import Experiment, ExperimentConfig
from metabridge.train.baselines import PIXEL_NN, UNTRAINED, compute_baselines, pixel_nearest_neighbour, support_mean_mse
from metabridge.utils.stats import mean_ci95


def _nn_by_loops(ep) -> float:
    """Nearest class mean written as plain loops (the independent reference)."""
    classes = sorted(set(np.asarray(ep.support_y).tolist()))
    right = 0
    for q, label in zip(ep.query_x, ep.query_y):
        best, best_d = None, None
        for c in classes:
            mean = np.mean([s for s, y in zip(ep.support_x, ep.support_y) if y == c], axis=0)
            d = float(np.sum((np.asarray(q, np.float64) - mean) ** 2))
            if best_d is None or d < best_d:
                best, best_d = c, d
        right += best == label
    return right / len(ep.query_y)


def test_pixel_nearest_neighbour_matches_loops():
    rng = np.random.default_rng(0)
    for shots in (1, 3):
        sx = rng.normal(size=(4 * shots, 5, 5, 1))
        sy = np.repeat(np.arange(4), shots)
        qx = rng.normal(size=(12, 5, 5, 1)) + np.repeat(sx[::shots], 3, axis=0) * 0.5
        ep = Episode(sx, sy, qx, np.repeat(np.arange(4), 3))
        assert pixel_nearest_neighbour(ep) == _nn_by_loops(ep)


def test_support_mean_mse_closed_form():
    ep = Episode(np.zeros((3, 1)), np.array([[1.0], [2.0], [6.0]]), np.zeros((2, 1)), np.array([[3.0], [5.0]]))
    assert support_mean_mse(ep) == ((3 - 3) ** 2 + (5 - 3) ** 2) / 2


def test_compute_baselines_on_the_test_episodes(backend):
    c = ExperimentConfig(algo="protonet", dataset="digits", steps=1, test_tasks=8).resolved()
    exp = Experiment(c)
    rows = compute_baselines(exp)
    episodes = [exp.sources.test.episode(i) for i in range(8)]
    assert rows[PIXEL_NN] == mean_ci95([_nn_by_loops(ep) for ep in episodes])
    init = {k: mb.ops.asarray(v) for k, v in exp.init_params(c.seed).items()}
    by_hand = [float(np.mean(np.argmax(exp.predict(init, ep), -1) == ep.query_y)) for ep in episodes]
    assert np.allclose(rows[UNTRAINED][0], np.mean(by_hand), atol=1e-12)


def test_default_compare_prints_baselines_beside_each_result(both_backends, capsys):
    assert main(["compare", "--steps", "2", "--test-tasks", "4", "--quiet", "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)["experiments"]
    assert [r["config"]["dataset"] for r in reports] == ["omniglot", "sinusoid"]
    assert set(reports[0]["baselines"]) == {UNTRAINED, PIXEL_NN}
    assert set(reports[1]["baselines"]) == {UNTRAINED, "support mean"}
    assert reports[0]["results"]["torch"]["data"]["source"] == "embedded"
    assert main(["compare", "--algo", "protonet", "--steps", "2", "--test-tasks", "4", "--quiet"]) == 0
    assert "baselines on the same 4 test episodes: untrained network" in capsys.readouterr().out
