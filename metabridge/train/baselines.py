"""Baselines on the same test episodes, so a trained result can be judged.

``metabridge compare`` prints every trained metric beside these:

- **untrained network**: the algorithm evaluated exactly as after training, from
  its initial meta-parameters (for MAML-like algorithms: the untrained network
  after the test-time inner steps);
- **pixel nearest neighbour** (classification): each query goes to the class
  whose mean support image is nearest in raw pixels (1-NN for one-shot);
- **support mean** (regression): every query predicted as the mean target of
  its support set.

>>> rows = compute_baselines(experiment, episodes=600)        # doctest: +SKIP
>>> rows["pixel nearest neighbour"]                            # doctest: +SKIP
(0.5312, 0.0101)
"""
from __future__ import annotations

import numpy as np

from metabridge import ops
from metabridge.train.experiment import Experiment
from metabridge.utils.stats import mean_ci95

PIXEL_NN = "pixel nearest neighbour"
SUPPORT_MEAN = "support mean"
UNTRAINED = "untrained network"


def pixel_nearest_neighbour(episode) -> float:
    """Accuracy of nearest class mean on raw pixels (Euclidean) for one episode."""
    sx = np.asarray(episode.support_x, np.float64).reshape(len(episode.support_x), -1)
    qx = np.asarray(episode.query_x, np.float64).reshape(len(episode.query_x), -1)
    sy, qy = np.asarray(episode.support_y), np.asarray(episode.query_y)
    classes = np.unique(sy)
    means = np.stack([sx[sy == c].mean(0) for c in classes])
    d = (qx * qx).sum(1)[:, None] - 2.0 * qx @ means.T + (means * means).sum(1)[None, :]
    return float(np.mean(classes[np.argmin(d, axis=1)] == qy))


def support_mean_mse(episode) -> float:
    """MSE of predicting every query target as the mean support target."""
    sy, qy = np.asarray(episode.support_y, np.float64), np.asarray(episode.query_y, np.float64)
    return float(np.mean((qy - sy.mean(0)) ** 2))


def compute_baselines(experiment: Experiment, episodes: int | None = None) -> dict[str, tuple[float, float]]:
    """``{name: (mean, 95% CI half-width)}`` of the baselines over the experiment's
    first ``episodes`` test episodes (default: its ``test_tasks``), on the active backend."""
    episodes = experiment.c.test_tasks if episodes is None else episodes
    init = {k: ops.asarray(v) for k, v in experiment.init_params(experiment.c.seed).items()}
    out = {UNTRAINED: mean_ci95(experiment.evaluate(init, episodes=episodes)[1])}
    test = experiment.sources.test
    raw = [test.episode(i) for i in range(episodes)]
    if experiment.metric_name == "accuracy":
        out[PIXEL_NN] = mean_ci95([pixel_nearest_neighbour(ep) for ep in raw])
    else:
        out[SUPPORT_MEAN] = mean_ci95([support_mean_mse(ep) for ep in raw])
    return out
