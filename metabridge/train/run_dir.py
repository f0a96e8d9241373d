"""A run directory: everything needed to rebuild, resume, evaluate and plot a run.

::

    RUN_DIR/
      config.json        # the resolved ExperimentConfig, run options, backend, versions
      metrics.jsonl      # one JSON line per logged step: step, loss, seconds (+ val accuracy)
      checkpoints/       # step-XXXXXXXX.safetensors + .json (see metabridge.train.checkpoint)
      result.json        # final test metric, written when the run finishes
      tb/                # TensorBoard event files (with --tensorboard)

>>> run = RunDir.create("runs/maml", cfg, RunOptions(), backend="torch")   # doctest: +SKIP
>>> RunDir.open("runs/maml").config.algo                                   # doctest: +SKIP
'maml'
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass

from metabridge import backend as _backends
from metabridge.train.experiment import ExperimentConfig
from metabridge.utils.atomic import atomic_file
from metabridge.version import __version__

RUN_FORMAT = 1


@dataclass
class RunOptions:
    """How a run is recorded (not what it computes).

    ``checkpoint_every``: steps between checkpoints (the last step is always saved);
    ``keep``: checkpoints kept; ``eval_every``: steps between validation
    evaluations logged to metrics.jsonl (0: never); ``eval_episodes``: episodes
    per validation; ``tensorboard``: also write TensorBoard event files.
    """

    checkpoint_every: int = 100
    keep: int = 3
    eval_every: int = 0
    eval_episodes: int = 100
    tensorboard: bool = False

    def checked(self) -> "RunOptions":
        """This object, after checking every field (a clear error names the bad one)."""
        for name, low in (("checkpoint_every", 1), ("keep", 1), ("eval_every", 0), ("eval_episodes", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"Expected {name} >= {low}. Received: {name}={value!r}")
        if not isinstance(self.tensorboard, bool):
            raise ValueError(f"Expected tensorboard true or false. Received: tensorboard={self.tensorboard!r}")
        return self


def _versions(backend: str) -> dict:
    import importlib.metadata as md

    out = {"metabridge": __version__, "python": platform.python_version()}
    dist = _backends.record(backend).framework_module if backend in _backends.NAMES else None
    for name in ([dist] if dist else []):
        for candidate in (name, name + "-cpu"):
            try:
                out[name] = md.version(candidate)
                break
            except md.PackageNotFoundError:
                continue
    return out


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON so that readers see the old file or the new one, never half."""
    with atomic_file(path) as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=True).encode())


class RunDir:
    """A run directory on disk (see the module docstring)."""

    def __init__(self, path: str, record: dict):
        self.path = path
        self.record = record
        where = os.path.join(path, "config.json")
        known = {f.name for f in dataclasses.fields(ExperimentConfig)}
        options = {f.name for f in dataclasses.fields(RunOptions)}
        for section, allowed in (("config", known), ("run", options)):
            unknown = sorted(set(record.get(section, {})) - allowed)
            if unknown:
                raise ValueError(f"Expected only known {section} keys in {where} (written by another metabridge "
                                 f"version?). Received: unknown keys {unknown}")
        self.config = ExperimentConfig(**record["config"])
        self.options = RunOptions(**record.get("run", {})).checked()
        self.backend: str = record["backend"]
        self.input_shape: tuple | None = tuple(record["input_shape"]) if record.get("input_shape") else None

    # ---- paths --------------------------------------------------------------------------
    @property
    def checkpoints(self) -> str:
        return os.path.join(self.path, "checkpoints")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.path, "metrics.jsonl")

    @property
    def result_path(self) -> str:
        return os.path.join(self.path, "result.json")

    # ---- create / open ------------------------------------------------------------------
    @staticmethod
    def check_new(path: str) -> None:
        """Raise unless ``path`` can hold a new run (an existing run is never overwritten)."""
        if os.path.exists(os.path.join(path, "config.json")):
            raise ValueError(f"Expected a new run directory (use `metabridge resume {path}` to continue). "
                             f"Received: {path} already holds a run")
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"Expected a directory for the run. Received: {path} is a file")

    @classmethod
    def create(cls, path: str, config, options: RunOptions, backend: str,
               input_shape: tuple | None = None) -> "RunDir":
        """Make a new run directory for a resolved config (``input_shape``: the
        model's, recorded so the model can be rebuilt without the data)."""
        cls.check_new(path)
        os.makedirs(path, exist_ok=True)
        record = {"metabridge_run": RUN_FORMAT, "config": dataclasses.asdict(config),
                  "run": dataclasses.asdict(options.checked()), "backend": backend,
                  "input_shape": list(input_shape) if input_shape is not None else None,
                  "versions": _versions(backend), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(os.path.join(path, "config.json"), record)
        return cls(path, record)

    @classmethod
    def open(cls, path: str) -> "RunDir":
        """An existing run directory; a clear error for anything else."""
        cfg = os.path.join(path, "config.json")
        if not os.path.isdir(path):
            raise ValueError(f"Expected a run directory. Received: {path} does not exist or is not a directory")
        try:
            with open(cfg) as fh:
                record = json.load(fh)
        except FileNotFoundError:
            raise ValueError(f"Expected a run directory (with config.json, made by `metabridge train --run-dir`). "
                             f"Received: {path} has no config.json") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"Expected valid JSON in {cfg}. Received: {exc}") from None
        if not isinstance(record, dict) or record.get("metabridge_run") != RUN_FORMAT:
            raise ValueError(f"Expected a metabridge run directory (format {RUN_FORMAT}). "
                             f"Received: {cfg} is not one")
        return cls(path, record)

    # ---- metrics ------------------------------------------------------------------------
    def append_metrics(self, records: list[dict]) -> None:
        """Append lines to metrics.jsonl and fsync. The loop appends at each
        checkpoint; lines of steps after the last checkpoint are recomputed on resume."""
        if not records:
            return
        with open(self.metrics_path, "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl (a torn last line from a kill is skipped)."""
        if not os.path.exists(self.metrics_path):
            return []
        out = []
        with open(self.metrics_path) as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def truncate_metrics(self, steps_done: int) -> list[dict]:
        """Keep only lines of steps before ``steps_done`` (what a checkpoint covers); returns them."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) < steps_done]
        with atomic_file(self.metrics_path) as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in kept).encode())
        return kept
