"""``metabridge eval``: evaluate a run directory's newest checkpoint on any backend."""
from __future__ import annotations

import dataclasses
import warnings

from metabridge import config, ops
from metabridge.train.checkpoint import latest_params
from metabridge.train.experiment import Experiment
from metabridge.train.loop import check_compatible, expected_checkpoint
from metabridge.train.run_dir import RunDir
from metabridge.utils.stats import mean_ci95


def evaluate_run(path: str, backend: str | None = None, episodes: int | None = None,
                 floatx: str | None = None) -> dict:
    """Evaluate a run directory's newest valid checkpoint on ``backend`` (default:
    the backend that trained it) over its test episodes; any backend reads any
    checkpoint. ``floatx="float64"`` evaluates float32 weights in float64 (then
    near-ties between classes resolve the same way on every backend).

    >>> evaluate_run("runs/protonet", backend="tf", episodes=600)["metric"]   # doctest: +SKIP
    0.9741
    """
    run = RunDir.open(path)
    changed = run.changed_keys()
    if changed:
        warnings.warn(f"{run.config_path} was edited since the run was created (keys {changed}); "
                      f"evaluating with the edited config", stacklevel=2)
    try:
        c = run.config.resolved()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{exc} (in {run.config_path})") from None
    if floatx is not None:
        if floatx not in config.FLOATX_CHOICES:
            raise ValueError(f"Expected floatx in {config.FLOATX_CHOICES}. Received: floatx={floatx!r}")
        c = dataclasses.replace(c, floatx=floatx)
    if episodes is not None and (not isinstance(episodes, int) or episodes < 1):
        raise ValueError(f"Expected episodes >= 1. Received: episodes={episodes!r}")
    with config.use_floatx(c.floatx), config.use_backend(backend or run.backend) as name:
        experiment = Experiment(c)
        # the checkpoint is checked against the run (id, config hash, step range) and the model (names,
        # shapes, dtypes of parameters and optimizer slots) before its tensors are used
        params, meta = latest_params(run.checkpoints, expected_checkpoint(run, experiment, c))
        check_compatible(experiment.init_params(c.seed), params, run.checkpoints)
        params = {k: ops.asarray(v) for k, v in params.items()}
        metric, values = experiment.evaluate(params, episodes=episodes)
    mean, ci = mean_ci95(values)
    return {"run": path, "backend": name, "trained_on": meta.get("backend"), "step": meta["step"], "floatx": c.floatx,
            "metric_name": metric, "metric": mean, "metric_ci95": ci, "episodes": int(values.size)}
