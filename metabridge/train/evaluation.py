"""Evaluation statistics: mean ± 95% confidence interval over test tasks."""
from __future__ import annotations

import numpy as np


def mean_ci95(values) -> tuple[float, float]:
    """``(mean, half-width of the 95% CI)`` using the normal approximation
    ``1.96 * std / sqrt(n)`` (sample std, ``ddof=1``), as few-shot papers report.

    >>> mean_ci95([1.0, 2.0, 3.0])
    (2.0, 1.1316065276531284)
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("Expected at least one value. Received: an empty array")
    if arr.size == 1:
        return float(arr[0]), 0.0
    return float(arr.mean()), float(1.96 * arr.std(ddof=1) / np.sqrt(arr.size))


def evaluate_run(path: str, backend: str | None = None, episodes: int | None = None,
                 floatx: str | None = None) -> dict:
    """Evaluate a run directory's newest valid checkpoint on ``backend`` (default:
    the backend that trained it) over its test episodes; any backend reads any
    checkpoint. ``floatx="float64"`` evaluates float32 weights in float64 (then
    near-ties between classes resolve the same way on every backend).

    >>> evaluate_run("runs/protonet", backend="tf", episodes=600)["metric"]   # doctest: +SKIP
    0.9741
    """
    import dataclasses

    from metabridge import config, ops
    from metabridge.train.checkpoint import latest_params
    from metabridge.train.experiment import _Setup
    from metabridge.train.loop import check_compatible
    from metabridge.train.run_dir import RunDir

    run = RunDir.open(path)
    c = run.config.resolved()
    if floatx is not None:
        if floatx not in config.FLOATX_CHOICES:
            raise ValueError(f"Expected floatx in {config.FLOATX_CHOICES}. Received: floatx={floatx!r}")
        c = dataclasses.replace(c, floatx=floatx)
    if episodes is not None and (not isinstance(episodes, int) or episodes < 1):
        raise ValueError(f"Expected episodes >= 1. Received: episodes={episodes!r}")
    params, meta = latest_params(run.checkpoints)
    previous = config.floatx()
    config.set_floatx(c.floatx)
    try:
        with config.use_backend(backend or run.backend) as name:
            setup = _Setup(c)
            check_compatible(setup.init_params(c.seed), params, run.checkpoints)
            params = {k: ops.asarray(v) for k, v in params.items()}
            metric, values = setup.evaluate(params, episodes=episodes)
    finally:
        config.set_floatx(previous)
    mean, ci = mean_ci95(values)
    return {"run": path, "backend": name, "trained_on": meta.get("backend"), "step": meta["step"], "floatx": c.floatx,
            "metric_name": metric, "metric": mean, "metric_ci95": ci, "episodes": int(values.size)}
