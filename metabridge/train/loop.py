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
import os
import time

import numpy as np

from metabridge import config, ops
from metabridge.optim import CompiledUpdate, averaged_params, finite_probe
from metabridge.train import distributed
from metabridge.utils.progress import progress
from metabridge.train.checkpoint import (
    CheckpointError,
    Expected,
    checkpoint_paths,
    list_checkpoints,
    load_latest,
    read_run_id,
    remove_stale_temporaries,
    save_checkpoint,
    split_tensors,
)
from metabridge.train.experiment import Experiment, ExperimentConfig, RunResult
from metabridge.train.limits import check_memory
from metabridge.train.lock import RunLock
from metabridge.train.run_dir import RunDir, RunOptions, write_json_atomic
from metabridge.train.stepper import Steps
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
    """True when no tensor holds a NaN or inf."""
    return math.isfinite(float(ops.to_numpy(finite_probe(tensors.values()))))


class _EagerUpdate:
    """An optimizer with only ``update`` (a user's own): the update, then the finiteness check."""

    def __init__(self, opt):
        self.opt = opt

    def __call__(self, params: dict, grads: dict, state: dict):
        new_params, new_state = self.opt.update(params, grads, state)
        return new_params, new_state, _all_finite({**new_params, **{k: v for k, v in new_state.items()
                                                                    if k != "step"}})


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


def expected_checkpoint(run: RunDir, setup: Experiment, c: ExperimentConfig) -> Expected:
    """What a checkpoint of ``run`` must hold: its id and config hash, a step in
    ``[1, steps]``, and the names, shapes and dtype (the run's floatx) of every
    parameter and optimizer slot of ``setup``'s model.

    >>> expected_checkpoint(run, Experiment(run.config.resolved()), run.config.resolved())  # doctest: +SKIP
    """
    init = setup.init_params(c.seed)
    state = setup.optimizer().init({k: ops.asarray(v) for k, v in init.items()})
    names = [f"params/{k}" for k in init] + [f"opt/{k}" for k in state if k != "step"]
    shapes = {f"params/{k}": np.shape(v) for k, v in init.items()}
    shapes.update({f"opt/{k}": tuple(ops.to_numpy(v).shape) for k, v in state.items() if k != "step"})
    floatx = run.config.floatx
    return Expected(run.id, run.config_sha256, c.steps, {n: (tuple(shapes[n]), floatx) for n in names},
                    meta={"floatx": floatx, "algo": c.algo})


LOWER_IS_BETTER = ("mse", "loss")


def best_expected(run: RunDir, setup: Experiment, c: ExperimentConfig) -> Expected:
    """What ``RUN_DIR/best/`` must hold: this run's parameters (no optimizer slots)."""
    init = setup.init_params(c.seed)
    return Expected(run.id, run.config_sha256, c.steps,
                    {f"params/{k}": (tuple(np.shape(v)), run.config.floatx) for k, v in init.items()},
                    meta={"floatx": run.config.floatx, "algo": c.algo})


def _load_best(run: RunDir, setup: Experiment, c: ExperimentConfig, init: dict):
    """``(value, step, params)`` of the run's kept best validation, or None."""
    if not os.path.isdir(run.best):
        return None
    saved = load_latest(run.best, best_expected(run, setup, c))
    if saved is None or not isinstance(saved[1].get("val_metric"), (int, float)):
        return None
    p, _, _ = split_tensors(saved[0])
    return float(saved[1]["val_metric"]), int(saved[1]["step"]), {k: ops.asarray(p[k]) for k in init}


def _better(value: float, best, metric_name: str) -> bool:
    if best is None:
        return True
    return value < best[0] if metric_name in LOWER_IS_BETTER else value > best[0]


def _has_progress(run: RunDir) -> bool:
    """Whether anything a restart would overwrite exists: checkpoint files, metric lines, result.json."""
    ckpt = os.path.isdir(run.checkpoints) and any(n.startswith("step-") for n in os.listdir(run.checkpoints))
    metrics = os.path.lexists(run.metrics_path) and os.path.getsize(run.metrics_path) > 0
    return ckpt or metrics or os.path.lexists(run.result_path)


def _check_no_foreign_ahead(run: RunDir, start: int, steps: int) -> None:
    """Refuse up front when a checkpoint of another run sits where this run will write one."""
    every = run.options.checkpoint_every
    due = {s for s in range(start + 1, steps + 1) if s % every == 0 or s == steps}
    for s in sorted(due):
        for path in checkpoint_paths(run.checkpoints, s):
            if os.path.lexists(path) and not (os.path.islink(path) or os.path.isfile(path)):
                raise CheckpointError(f"Expected a regular file or nothing at {path}, where this run writes a "
                                      f"checkpoint. Received: something else (a directory, FIFO or device; move it "
                                      f"away)")
    for meta_path in list_checkpoints(run.checkpoints):
        readable, owner = read_run_id(meta_path)
        if readable and owner != run.id and any(checkpoint_paths(run.checkpoints, s)[1] == meta_path for s in due):
            raise CheckpointError(f"Expected no checkpoint of another run where this run writes its own. "
                                  f"Received: {meta_path} belongs to run {owner} (move it away)")


def _check_run_matches(run: RunDir, c: ExperimentConfig, backend: str) -> None:
    if c != run.config.resolved() or config.canonical_backend_name(backend) != run.backend:
        raise ValueError(f"Expected the config and backend recorded in {run.path} (use resume()). "
                         f"Received: a different config or backend={backend!r}")


def train(cfg: ExperimentConfig, backend: str, run: RunDir | None = None, quiet: bool = False, *,
          run_dir: str | None = None, options: RunOptions | None = None, restart: bool = False) -> RunResult:
    """Train ``cfg`` on ``backend`` and evaluate on its test episodes.

    ``run_dir`` (with ``options``) records a new run there: steps go to
    metrics.jsonl, checkpoints are written every ``options.checkpoint_every``
    steps. The directory is created only once the data and model are built, so
    a bad path or data set leaves nothing behind. ``run`` (an existing
    :class:`RunDir`, of this config and backend) continues from its newest
    valid checkpoint, as :func:`resume` does.

    Writers hold the run's lock (:class:`~metabridge.train.lock.RunLock`); a
    directory holding any part of a run is never adopted by a new one; when
    checkpoints exist but none verifies, nothing is changed and a
    :class:`CheckpointError` says so, unless ``restart=True`` (train again from
    step 0, rewriting metrics.jsonl).

    >>> res = train(ExperimentConfig(steps=20), "torch", run_dir="runs/a",
    ...             options=RunOptions(checkpoint_every=5))    # doctest: +SKIP
    """
    c = cfg.resolved()
    if run is not None and run_dir is not None:
        raise ValueError(f"Expected run or run_dir, not both. Received: run={run.path!r}, run_dir={run_dir!r}")
    spec = distributed.from_env()
    main = spec is None or spec.rank == 0  # only worker 0 writes to the run directory and the terminal
    quiet = quiet or not main
    lock = workers = None
    if run is not None:
        run.check_unchanged()
        _check_run_matches(run, c, backend)
        run.check_no_links()
        if main:
            lock = RunLock(run.path).acquire()
    if run_dir is not None:
        if main:
            RunDir.check_new(run_dir)
        options = (options or RunOptions()).checked()
    schedule = run.options if run is not None else options
    keep_best = schedule is not None and schedule.keep_best
    tb = None
    try:
        check_memory(c)
        with config.use_floatx(c.floatx), config.use_backend(backend) as name:
            if spec is not None:  # before the model: TensorFlow's strategy must precede any op
                workers = distributed.Workers.connect(spec, name)
            setup = Experiment(c)
            setup.check_split(1 if workers is None else workers.world)
            share = (0, 1) if workers is None else (workers.rank, workers.world)
            if run_dir is not None and main:
                lock = RunLock(run_dir).acquire()
                run = RunDir.create(run_dir, c, options, name, input_shape=setup.input_shape)
            if not main:
                run = None
            init = setup.init_params(c.seed)
            opt = setup.optimizer()
            params = {k: ops.asarray(v) for k, v in init.items()}
            state = opt.init(params)
            start, elapsed_before, kept, last_saved, best = 0, 0.0, [], None, None
            if run is not None:
                reasons: list[str] = []
                saved = None
                if os.path.isdir(run.checkpoints):
                    saved = load_latest(run.checkpoints, expected_checkpoint(run, setup, c), reasons)
                if saved is None and not restart and _has_progress(run):
                    raise CheckpointError(
                        f"Expected a checkpoint of this run that verifies in {run.checkpoints} to resume from. "
                        f"Received: none ({'; '.join(reasons) or 'no checkpoint files'}); nothing was changed. "
                        f"`metabridge resume --restart {run.path}` trains again from step 0, rewriting "
                        f"metrics.jsonl")
                if saved is not None:
                    tensors, meta = saved
                    p, slots, _ = split_tensors(tensors)
                    check_compatible(init, p, run.checkpoints)
                    params = {k: ops.asarray(p[k]) for k in init}
                    state = {"step": int(meta["opt_step"]), **{k: ops.asarray(v) for k, v in slots.items()}}
                    start, elapsed_before = int(meta["step"]), float(meta.get("seconds", 0.0))
                    last_saved = meta["step"]
                _check_no_foreign_ahead(run, start, c.steps)
                remove_stale_temporaries(run.checkpoints)
                kept = run.truncate_metrics(start)
                tb = _tensorboard(run, kept)
                if keep_best:
                    best = _load_best(run, setup, c, init)
            if workers is not None:
                params, state, start, elapsed_before = workers.broadcast_state(params, state, start,
                                                                               elapsed_before)
                if keep_best:
                    best = workers.broadcast_best(best, params)
            losses = [r["loss"] for r in kept if "loss" in r]
            monitor = "val_" if setup.sources.val is not None else "monitor_"
            bar = progress(range(start, c.steps), c.steps - start, f"{c.algo}/{c.dataset} [{name}]", quiet)
            update = (CompiledUpdate(opt, compiled=c.compiled, whole_step=setup.whole_step_compiled(name))
                      if hasattr(opt, "apply") else _EagerUpdate(opt))
            steps = Steps(setup, update, name, c.steps,
                          boundaries=(schedule.eval_every if schedule is not None else None,
                                      run.options.checkpoint_every if run is not None else None))
            t0, pending, postfix = time.perf_counter(), [], {}
            for step in bar:
                if workers is None:  # the update is computed with the gradient, and used only if all is finite
                    loss, new_params, new_state, finite = steps.step(params, state, step)
                else:
                    loss, direction = setup.loss_and_grad(params, step, share)
                    loss, direction = workers.mean(loss, direction, step)
                value = float(loss) if isinstance(loss, (int, float)) else float(ops.to_numpy(loss))
                bad = None if math.isfinite(value) else f"meta-loss {value}"
                if workers is not None and bad is None:
                    new_params, new_state, finite = update(params, direction, state)
                if bad is None and not finite:
                    bad = f"parameters or optimizer state after the update (meta-loss {value:.6g})"
                if bad is not None:
                    if run is not None:
                        run.append_metrics(pending)
                    if run is None:
                        kept_note = " No run directory: nothing was saved."
                    elif last_saved is None:
                        kept_note = (f" No checkpoint was written yet (the first is due at step "
                                     f"{min(run.options.checkpoint_every, c.steps)}; --checkpoint-every).")
                    else:
                        kept_note = (f" The last good checkpoint (step {last_saved}) is kept in "
                                     f"{run.checkpoints}.")
                    raise FloatingPointError(f"Non-finite {bad} at step {step}; stopping.{kept_note}")
                if new_params is not None:  # None inside a call of several steps (train/stepper.py)
                    params, state = new_params, new_state
                losses.append(value)
                seconds = elapsed_before + time.perf_counter() - t0
                records = [{"step": step, "loss": value, "seconds": round(seconds, 4)}]
                if schedule is not None and schedule.eval_every and (step + 1) % schedule.eval_every == 0:
                    offset = 0 if monitor == "val_" else VALIDATION_OFFSET
                    evaluated = averaged_params(params, state)  # the average with ema_decay
                    values = setup.evaluate(evaluated, episodes=schedule.eval_episodes, offset=offset,
                                            validation=True, workers=workers)[1]
                    mean, ci = mean_ci95(values)
                    records.append({"step": step, monitor + setup.metric_name: mean, monitor + "ci95": ci})
                    if keep_best and _better(mean, best, setup.metric_name):
                        best = (mean, step + 1, evaluated)
                        if run is not None:
                            save_checkpoint(run.best, step + 1, {f"params/{k}": ops.to_numpy(v)
                                                                 for k, v in evaluated.items()},
                                            {"opt_step": step + 1, "val_metric": mean, "metric_name":
                                             setup.metric_name, "backend": name, "floatx": c.floatx,
                                             "algo": c.algo, "run_id": run.id,
                                             "config_sha256": run.config_sha256}, keep=1)
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
                            "floatx": c.floatx, "algo": c.algo, "run_id": run.id,
                            "config_sha256": run.config_sha256,
                            "workers": 1 if workers is None else workers.world}
                    save_checkpoint(run.checkpoints, done, _checkpoint_tensors(params, state), meta,
                                    keep=run.options.keep)
                    last_saved = done
            if run is not None:
                run.append_metrics(pending)
            trained_steps = max(c.steps - start, 1)
            seconds_per_step = (time.perf_counter() - t0) / trained_steps
            evaluated = averaged_params(params, state)
            tested = best[2] if best is not None else evaluated  # keep_best: the best validated parameters
            metric_name, values = setup.evaluate(tested, workers=workers)
            mean, ci = mean_ci95(values)
            numpy_params = {k: ops.to_numpy(v) for k, v in evaluated.items()}
            result = RunResult(name, losses, metric_name, mean, ci, seconds_per_step, numpy_params,
                               setup.sources.describe, tested_step=best[1] if best is not None else c.steps)
            if run is not None:
                extra = {} if best is None else {"tested_step": best[1], "val_metric": best[0]}
                write_json_atomic(run.result_path, {"backend": name, "metric_name": metric_name, "metric": mean,
                                                    "metric_ci95": ci, "episodes": c.test_tasks,
                                                    "final_loss": losses[-1] if losses else None, **extra})
            return result
    finally:
        if tb is not None:
            tb.close()
        if lock is not None:
            lock.release()
        if workers is not None:
            workers.close()


def run_experiment(cfg: ExperimentConfig, backend: str, quiet: bool = False) -> RunResult:
    """Train and evaluate ``cfg`` on ``backend``; parameters come back as numpy
    (no run directory: see :func:`metabridge.train.loop.train` for one).

    >>> res = run_experiment(ExperimentConfig(steps=10, test_tasks=20), "torch")  # doctest: +SKIP
    >>> res.metric_name
    'mse'
    """
    return train(cfg, backend, None, quiet=quiet)


def resume(path: str, quiet: bool = False, restart: bool = False) -> RunResult:
    """Continue the run in ``path`` from its newest valid checkpoint, on the backend it was started on.

    Refused, changing nothing, when config.json was edited, another process holds
    the run, or checkpoints exist and none verifies (``restart=True``: train again
    from step 0 instead).

    >>> result = resume("runs/a")    # doctest: +SKIP
    """
    run = RunDir.open(path)
    return train(run.config, run.backend, run, quiet=quiet, restart=restart)
