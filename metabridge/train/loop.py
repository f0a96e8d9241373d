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
from metabridge.optim import Adam, StepDecay
from metabridge.progress import progress
from metabridge.train.checkpoint import (
    CheckpointError,
    load_latest,
    remove_stale_temporaries,
    save_checkpoint,
    split_tensors,
)
from metabridge.train.evaluation import mean_ci95
from metabridge.train.experiment import ExperimentConfig, RunResult, _Setup
from metabridge.train.run_dir import RunDir, write_json_atomic

VALIDATION_OFFSET = 1_000_000  # validation episodes never coincide with the final test episodes


def _optimizer(c: ExperimentConfig) -> Adam:
    lr = c.outer_lr if c.lr_decay_every is None else StepDecay(c.outer_lr, c.lr_decay_every, c.lr_decay)
    return Adam(lr=lr)


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
    """One reduction: a NaN or inf anywhere makes the total non-finite."""
    total = sum(ops.sum(t) for t in tensors.values())
    return math.isfinite(float(ops.to_numpy(total)))


def _checkpoint_tensors(params: dict, opt_state: dict) -> dict:
    out = {f"params/{k}": ops.to_numpy(v) for k, v in params.items()}
    out.update({f"opt/{k}": ops.to_numpy(v) for k, v in opt_state.items() if k != "step"})
    return out


def _tensorboard(run: RunDir | None):
    if run is None or not run.options.tensorboard:
        return None
    import os

    from metabridge.train.tensorboard import EventWriter

    return EventWriter(os.path.join(run.path, "tb"))


def train(cfg: ExperimentConfig, backend: str, run: RunDir | None = None, quiet: bool = False) -> RunResult:
    """Train ``cfg`` on ``backend`` and evaluate on its test episodes.

    With ``run`` (a :class:`RunDir`), steps are logged to its metrics.jsonl,
    checkpoints are written every ``run.options.checkpoint_every`` steps, and
    training starts from the newest valid checkpoint if there is one.
    """
    c = cfg.resolved()
    previous_floatx = config.floatx()
    config.set_floatx(c.floatx)
    try:
        with config.use_backend(backend) as name:
            setup = _Setup(c)
            init = setup.init_params(c.seed)
            opt = _optimizer(c)
            params = {k: ops.asarray(v) for k, v in init.items()}
            state = opt.init(params)
            start, elapsed_before, losses = 0, 0.0, []
            if run is not None:
                remove_stale_temporaries(run.checkpoints)
            saved = load_latest(run.checkpoints) if run is not None else None
            if saved is not None:
                tensors, meta = saved
                p, slots, _ = split_tensors(tensors)
                check_compatible(init, p, run.checkpoints)
                params = {k: ops.asarray(p[k]) for k in init}
                state = {"step": int(meta["opt_step"]), **{k: ops.asarray(v) for k, v in slots.items()}}
                start, elapsed_before = int(meta["step"]), float(meta.get("seconds", 0.0))
                losses = [r["loss"] for r in run.truncate_metrics(start) if "loss" in r]
            elif run is not None:
                run.truncate_metrics(0)
            tb = _tensorboard(run)
            bar = progress(range(start, c.steps), c.steps - start, f"{c.algo}/{c.dataset} [{name}]", quiet)
            t0, pending, postfix = time.perf_counter(), [], {}
            for step in bar:
                if c.algo == "reptile":  # its outer update is not a gradient step
                    new_params, value = setup.algorithm.meta_step(params, setup.sources.train.batch(step, c.meta_batch),
                                                                  step)
                    new_state, bad = state, None if math.isfinite(value) else f"meta-loss {value}"
                else:
                    loss, grads = setup.train_step_loss_and_grad(params, step)
                    value = float(ops.to_numpy(loss))
                    bad = None if math.isfinite(value) else f"meta-loss {value}"
                    new_params, new_state = opt.update(params, grads, state) if bad is None else (None, None)
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
                pending.append({"step": step, "loss": value, "seconds": round(seconds, 4)})
                if tb is not None:
                    tb.scalar("train/loss", value, step)
                if run is not None and run.options.eval_every and (step + 1) % run.options.eval_every == 0:
                    values = setup.evaluate(params, episodes=run.options.eval_episodes, offset=VALIDATION_OFFSET)[1]
                    mean, ci = mean_ci95(values)
                    pending.append({"step": step, "val_" + setup.metric_name: mean, "val_ci95": ci})
                    postfix["val_" + setup.metric_name] = f"{mean:.4f}"
                    if tb is not None:
                        tb.scalar("val/" + setup.metric_name, mean, step)
                if step % 10 == 0:
                    postfix["loss"] = f"{value:.4f}"
                    bar.set_postfix(postfix)
                done = step + 1
                if run is not None and (done % run.options.checkpoint_every == 0 or done == c.steps):
                    run.append_metrics(pending)
                    pending = []
                    meta = {"opt_step": int(state["step"]), "seconds": seconds, "backend": name,
                            "floatx": c.floatx, "algo": c.algo}
                    save_checkpoint(run.checkpoints, done, _checkpoint_tensors(params, state), meta,
                                    keep=run.options.keep)
            if run is not None:
                run.append_metrics(pending)
            if tb is not None:
                tb.close()
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
        config.set_floatx(previous_floatx)


def resume(path: str, quiet: bool = False) -> RunResult:
    """Continue the run in ``path`` from its newest valid checkpoint, on the backend it was started on."""
    run = RunDir.open(path)
    return train(run.config, run.backend, run, quiet=quiet)
