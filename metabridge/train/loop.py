"""The training loop, with or without a run directory, and exact resume.

Episode ``i`` is a pure function of ``(seed, i)`` and every piece of state
(parameters, optimizer slots and step count) goes into the checkpoint, so a run
resumed from its checkpoint after step ``s`` computes exactly what the
uninterrupted run computed from step ``s`` on: the final parameters are equal
bit for bit (same backend, same machine).

>>> run = RunDir.create("runs/a", ExperimentConfig(steps=50), RunOptions(checkpoint_every=10), "torch")  # doctest: +SKIP
>>> result = train(run.config, "torch", run)          # doctest: +SKIP
>>> result = resume("runs/a")                          # after a kill: continues from the last checkpoint  # doctest: +SKIP
"""
from __future__ import annotations

import math
import time

import numpy as np

from metabridge import config, ops
from metabridge.utils.progress import progress
from metabridge.train.checkpoint import (
    CheckpointError,
    load_latest,
    remove_stale_temporaries,
    save_checkpoint,
    split_tensors,
)
from metabridge.train.experiment import Experiment, ExperimentConfig, RunResult
from metabridge.train.run_dir import RunDir, RunOptions, write_json_atomic
from metabridge.utils.stats import mean_ci95

VALIDATION_OFFSET = 1_000_000  # validation episodes never coincide with the final test episodes


def check_compatible(setup_params: dict, saved: dict, where: str) -> None:
    """Raise a clear error when a checkpoint's parameters do not fit the run's model."""
    missing, extra = sorted(set(setup_params) - set(saved)), sorted(set(saved) - set(setup_params))
    if missing or extra:
        raise CheckpointError(f"Expected a checkpoint of this run's model in {where}. Received: parameters "
                              f"missing {missing[:5]} and unexpected {extra[:5]}")
    for k, v in setup_params.items():
        if tuple(np.shape(v)) != tuple(np.shape(saved[k])):
            raise CheckpointError(f"Expected a checkpoint of this run's model ({k} with shape {tuple(np.shape(v))}) "
                                  f"in {where}. "
                                  f"Received: shape {tuple(np.shape(saved[k]))}")


def _all_finite(tensors: dict) -> bool:
    """True when no tensor holds a NaN or inf (``sum(t * 0)`` is 0 exactly then, and cannot overflow)."""
    total = sum(ops.sum(t * 0.0) for t in tensors.values())
    return math.isfinite(float(ops.to_numpy(total)))


def _checkpoint_tensors(params: dict, opt_state: dict) -> dict:
    out = {f"params/{k}": ops.to_numpy(v) for k, v in params.items()}
    out.update({f"opt/{k}": ops.to_numpy(v) for k, v in opt_state.items() if k != "step"})
    return out


def _tensorboard(run: RunDir | None, kept: list[dict]):
    """A fresh event file holding exactly the kept metric lines (older files of
    the run are replaced, so a resumed run's curves do not overlap)."""
    if run is None or not run.options.tensorboard:
        return None
    import glob
    import os

    from metabridge.train.tensorboard import EventWriter

    logdir = os.path.join(run.path, "tb")
    for old in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        os.unlink(old)
    writer = EventWriter(logdir)
    _log_scalars(writer, kept)
    return writer


def _log_scalars(writer, records: list[dict]) -> None:
    """The metric values of metrics.jsonl lines as TensorBoard scalars (``val_accuracy`` → ``val/accuracy``)."""
    for record in records:
        for key, value in record.items():
            if key not in ("step", "seconds") and not key.endswith("ci95"):
                tag = "train/loss" if key == "loss" else key.replace("_", "/", 1)
                writer.scalar(tag, value, record["step"])


def _check_run_matches(run: RunDir, c: ExperimentConfig, backend: str) -> None:
    if c != run.config.resolved() or config.canonical_backend_name(backend) != run.backend:
        raise ValueError(f"Expected the config and backend recorded in {run.path} (use resume()). "
                         f"Received: a different config or backend={backend!r}")


def train(cfg: ExperimentConfig, backend: str, run: RunDir | None = None, quiet: bool = False, *,
          run_dir: str | None = None, options: RunOptions | None = None) -> RunResult:
    """Train ``cfg`` on ``backend`` and evaluate on its test episodes.

    ``run_dir`` (with ``options``) records a new run there: steps go to
    metrics.jsonl, checkpoints are written every ``options.checkpoint_every``
    steps. The directory is created only once the data and model are built, so
    a bad path or data set leaves nothing behind. ``run`` (an existing
    :class:`RunDir`, of this config and backend) continues from its newest
    valid checkpoint, as :func:`resume` does.

    >>> res = train(ExperimentConfig(steps=20), "torch", run_dir="runs/a",
    ...             options=RunOptions(checkpoint_every=5))    # doctest: +SKIP
    """
    c = cfg.resolved()
    if run is not None and run_dir is not None:
        raise ValueError(f"Expected run or run_dir, not both. Received: run={run.path!r}, run_dir={run_dir!r}")
    if run is not None:
        _check_run_matches(run, c, backend)
    if run_dir is not None:
        RunDir.check_new(run_dir)
        options = (options or RunOptions()).checked()
    tb = None
    try:
        with config.use_floatx(c.floatx), config.use_backend(backend) as name:
            setup = Experiment(c)
            if run_dir is not None:
                run = RunDir.create(run_dir, c, options, name, input_shape=setup.input_shape)
            init = setup.init_params(c.seed)
            opt = setup.optimizer()
            params = {k: ops.asarray(v) for k, v in init.items()}
            state = opt.init(params)
            start, elapsed_before, kept = 0, 0.0, []
            if run is not None:
                remove_stale_temporaries(run.checkpoints)
                saved = load_latest(run.checkpoints)
                if saved is not None:
                    tensors, meta = saved
                    p, slots, _ = split_tensors(tensors)
                    check_compatible(init, p, run.checkpoints)
                    params = {k: ops.asarray(p[k]) for k in init}
                    state = {"step": int(meta["opt_step"]), **{k: ops.asarray(v) for k, v in slots.items()}}
                    start, elapsed_before = int(meta["step"]), float(meta.get("seconds", 0.0))
                kept = run.truncate_metrics(start)
                tb = _tensorboard(run, kept)
            losses = [r["loss"] for r in kept if "loss" in r]
            monitor = "val_" if setup.sources.val is not None else "monitor_"
            bar = progress(range(start, c.steps), c.steps - start, f"{c.algo}/{c.dataset} [{name}]", quiet)
            t0, pending, postfix = time.perf_counter(), [], {}
            for step in bar:
                loss, direction = setup.loss_and_grad(params, step)
                value = float(loss) if isinstance(loss, (int, float)) else float(ops.to_numpy(loss))
                bad = None if math.isfinite(value) else f"meta-loss {value}"
                new_params, new_state = opt.update(params, direction, state) if bad is None else (None, None)
                if bad is None and not _all_finite({**new_params, **{k: v for k, v in new_state.items() if k != "step"}}):
                    bad = f"parameters or optimizer state after the update (meta-loss {value:.6g})"
                if bad is not None:
                    if run is not None:
                        run.append_metrics(pending)
                    raise FloatingPointError(
                        f"Non-finite {bad} at step {step}; stopping. The last good checkpoint is kept"
                        + (f" in {run.checkpoints}." if run is not None else "."))
                params, state = new_params, new_state
                losses.append(value)
                seconds = elapsed_before + time.perf_counter() - t0
                records = [{"step": step, "loss": value, "seconds": round(seconds, 4)}]
                if run is not None and run.options.eval_every and (step + 1) % run.options.eval_every == 0:
                    offset = 0 if monitor == "val_" else VALIDATION_OFFSET
                    values = setup.evaluate(params, episodes=run.options.eval_episodes, offset=offset,
                                            validation=True)[1]
                    mean, ci = mean_ci95(values)
                    records.append({"step": step, monitor + setup.metric_name: mean, monitor + "ci95": ci})
                    postfix[monitor + setup.metric_name] = f"{mean:.4f}"
                pending.extend(records)
                if tb is not None:
                    _log_scalars(tb, records)
                if step % 10 == 0:
                    postfix["loss"] = f"{value:.4f}"
                    bar.set_postfix(postfix)
                done = step + 1
                if run is not None and (done % run.options.checkpoint_every == 0 or done == c.steps):
                    run.append_metrics(pending)
                    pending = []
                    if tb is not None:
                        tb.flush()
                    meta = {"opt_step": int(state["step"]), "seconds": seconds, "backend": name,
                            "floatx": c.floatx, "algo": c.algo}
                    save_checkpoint(run.checkpoints, done, _checkpoint_tensors(params, state), meta,
                                    keep=run.options.keep)
            if run is not None:
                run.append_metrics(pending)
            trained_steps = max(c.steps - start, 1)
            seconds_per_step = (time.perf_counter() - t0) / trained_steps
            metric_name, values = setup.evaluate(params)
            mean, ci = mean_ci95(values)
            numpy_params = {k: ops.to_numpy(v) for k, v in params.items()}
            result = RunResult(name, losses, metric_name, mean, ci, seconds_per_step, numpy_params,
                               setup.sources.describe)
            if run is not None:
                write_json_atomic(run.result_path, {"backend": name, "metric_name": metric_name, "metric": mean,
                                                    "metric_ci95": ci, "episodes": c.test_tasks,
                                                    "final_loss": losses[-1] if losses else None})
            return result
    finally:
        if tb is not None:
            tb.close()


def run_experiment(cfg: ExperimentConfig, backend: str, quiet: bool = False) -> RunResult:
    """Train and evaluate ``cfg`` on ``backend``; parameters come back as numpy
    (no run directory: see :func:`metabridge.train.loop.train` for one).

    >>> res = run_experiment(ExperimentConfig(steps=10, test_tasks=20), "torch")  # doctest: +SKIP
    >>> res.metric_name
    'mse'
    """
    return train(cfg, backend, None, quiet=quiet)


def resume(path: str, quiet: bool = False) -> RunResult:
    """Continue the run in ``path`` from its newest valid checkpoint, on the backend it was started on."""
    run = RunDir.open(path)
    return train(run.config, run.backend, run, quiet=quiet)
