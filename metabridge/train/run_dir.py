"""A run directory: everything needed to rebuild, resume, evaluate and plot a run.

::

    RUN_DIR/
      config.json        # the resolved ExperimentConfig, run options, backend, versions
      metrics.jsonl      # one JSON line per logged step: step, loss, seconds (+ val accuracy)
      checkpoints/       # step-XXXXXXXX.safetensors + .json (see metabridge.train.checkpoint)
      result.json        # final test metric, written when the run finishes
      tb/                # TensorBoard event files (with --tensorboard)
      .metabridge-lock   # the one-writer lock (see metabridge.train.lock)

config.json carries the run's ``id`` (made when the directory is created; every
checkpoint's metadata repeats it) and a ``seal``: the sha256 of the recorded
identity (config, run options, backend, input shape) and a short digest per
key, so an edit is detected and named.

>>> run = RunDir.create("runs/maml", cfg, RunOptions(), backend="torch")   # doctest: +SKIP
>>> RunDir.open("runs/maml").config.algo                                   # doctest: +SKIP
'maml'
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
import uuid
from dataclasses import dataclass

from metabridge import backend as _backends
from metabridge.train.experiment import ExperimentConfig
from metabridge.utils.atomic import atomic_file
from metabridge.utils.bounded import MAX_JSON_BYTES, MAX_LINE_BYTES, FileFormatError, append_text, \
    load_json_file, open_regular
from metabridge.version import __version__

RUN_FORMAT = 1


@dataclass
class RunOptions:
    """How a run is recorded (not what it computes).

    ``checkpoint_every``: steps between checkpoints (the last step is always saved);
    ``keep``: checkpoints kept; ``eval_every``: steps between validation
    evaluations logged to metrics.jsonl (0: never); ``eval_episodes``: episodes
    per validation; ``tensorboard``: also write TensorBoard event files;
    ``keep_best``: early stopping as Koch et al. did it: the parameters of the
    best validation so far are kept in ``RUN_DIR/best/`` and the final test
    evaluates them (needs ``eval_every``).
    """

    checkpoint_every: int = 100
    keep: int = 3
    eval_every: int = 0
    eval_episodes: int = 100
    tensorboard: bool = False
    keep_best: bool = False

    def checked(self) -> "RunOptions":
        """This object, after checking every field (a clear error names the bad one)."""
        for name, low in (("checkpoint_every", 1), ("keep", 1), ("eval_every", 0), ("eval_episodes", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"Expected {name} >= {low}. Received: {name}={value!r}")
        for name in ("tensorboard", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Expected {name} true or false. Received: {name}={getattr(self, name)!r}")
        if self.keep_best and not self.eval_every:
            raise ValueError("Expected eval_every > 0 with keep_best (the best parameters are chosen on "
                             "validation). Received: eval_every=0")
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


#: What a run directory holds; ``train`` refuses a directory holding any of them.
RUN_FILES = ("config.json", "metrics.jsonl", "result.json", "checkpoints", "tb", "best")
#: Cap on metrics.jsonl (about ten million logged steps).
MAX_METRICS_BYTES = 1 << 30
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def allowed_types(annotation) -> tuple[tuple[type, ...], bool]:
    """Python types a dataclass field annotation (a string here) allows, and whether None is allowed.

    >>> allowed_types("int | None")
    ((<class 'int'>,), True)
    """
    parts = [p.strip() for p in str(annotation).split("|")]
    types: tuple[type, ...] = ()
    for p in parts:
        types += _TYPES.get(p, ())
    return types, "None" in parts


def type_error(key: str, value, annotation) -> str | None:
    """``None`` when ``value`` fits ``annotation``, else the problem in words."""
    allowed, nullable = allowed_types(annotation)
    if value is None and nullable:
        return None
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        names = " or ".join(t.__name__ for t in allowed)
        return f"Expected {key} to be {names}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"Expected {key} to be finite"
    return None


def write_json_atomic(path: str, obj, sort_keys: bool = True) -> None:
    """Write ``obj`` as JSON so that readers see the old file or the new one, never half.

    >>> write_json_atomic("runs/a/result.json", {"metric": 0.9})   # doctest: +SKIP
    """
    with atomic_file(path) as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=sort_keys).encode())


def _identity(record: dict) -> dict:
    """The recorded keys that define a run, flattened: ``config.<field>``, ``run.<field>``, ``backend``, …"""
    out = {"id": record.get("id"), "metabridge_run": record.get("metabridge_run"),
           "backend": record.get("backend"), "input_shape": record.get("input_shape")}
    for section in ("config", "run"):
        values = record.get(section)
        for k, v in (values.items() if isinstance(values, dict) else ()):
            out[f"{section}.{k}"] = v
    return out


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def seal_of(record: dict) -> dict:
    """``{"sha256": ..., "keys": {key: short digest}}`` of a run record's identity.

    >>> sorted(seal_of({"id": "x", "config": {"seed": 0}, "backend": "torch"})["keys"])[:2]
    ['backend', 'config.seed']
    """
    ident = _identity(record)
    return {"sha256": _digest(ident), "keys": {k: _digest(v)[:12] for k, v in ident.items()}}


class RunDir:
    """A run directory on disk (see the module docstring)."""

    def __init__(self, path: str, record: dict):
        self.path = path
        self.record = record
        where = os.path.join(path, "config.json")
        if not isinstance(record, dict):
            raise ValueError(f"Expected a JSON object in {where}. Received: {type(record).__name__}")
        for key, kind in (("config", dict), ("backend", str)):
            if not isinstance(record.get(key), kind):
                raise ValueError(f"Expected the key {key!r} ({kind.__name__}) in {where}. "
                                 f"Received: {'no such key' if key not in record else repr(record[key])[:80]}")
        for key, kind in (("run", dict), ("input_shape", list), ("id", str), ("seal", dict)):
            if record.get(key) is not None and not isinstance(record[key], kind):
                raise ValueError(f"Expected {key!r} to be a {kind.__name__} in {where}. "
                                 f"Received: {repr(record[key])[:80]}")
        fields = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}
        options = {f.name: f.type for f in dataclasses.fields(RunOptions)}
        for section, allowed in (("config", fields), ("run", options)):
            values = record.get(section) or {}
            unknown = sorted(set(values) - set(allowed))
            if unknown:
                raise ValueError(f"Expected only known {section} keys in {where} (written by another metabridge "
                                 f"version?). Received: unknown keys {unknown}")
            for k, v in values.items():
                problem = type_error(f"{section}.{k}", v, allowed[k])
                if problem:
                    raise ValueError(f"{problem} in {where}. Received: {section}.{k}={v!r}")
        shape = record.get("input_shape")
        if shape is not None and not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 1 << 20
                                         for n in shape):
            raise ValueError(f"Expected input_shape to be a list of positive ints in {where}. "
                             f"Received: {shape!r:.80}")
        try:
            self.config = ExperimentConfig(**record["config"])
            self.options = RunOptions(**record.get("run") or {}).checked()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{exc} (in {where})") from None
        self.backend: str = record["backend"]
        self.input_shape: tuple | None = tuple(shape) if shape else None
        #: The run's identity (None for runs made before identities existed).
        self.id: str | None = record.get("id")

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

    @property
    def best(self) -> str:
        """Where ``keep_best`` keeps the parameters of the best validation so far."""
        return os.path.join(self.path, "best")

    @property
    def config_path(self) -> str:
        return os.path.join(self.path, "config.json")

    # ---- identity -----------------------------------------------------------------------
    @property
    def config_sha256(self) -> str | None:
        """sha256 of the identity recorded when the run was created (checkpoints carry it)."""
        seal = self.record.get("seal")
        return seal.get("sha256") if isinstance(seal, dict) else None

    def changed_keys(self) -> list[str]:
        """Keys of config.json edited since the run was created (``[]`` when none or no seal)."""
        seal = self.record.get("seal")
        if not isinstance(seal, dict):
            return []
        now = seal_of(self.record)
        if now["sha256"] == seal.get("sha256"):
            return []
        keys = seal.get("keys") if isinstance(seal.get("keys"), dict) else {}
        changed = sorted(k for k in set(keys) | set(now["keys"]) if keys.get(k) != now["keys"].get(k))
        return changed or ["seal"]

    def check_unchanged(self) -> None:
        """Raise naming the keys when config.json was edited since the run was created.

        >>> RunDir.open("runs/a").check_unchanged()     # doctest: +SKIP
        """
        changed = self.changed_keys()
        if changed:
            raise ValueError(f"Expected {self.config_path} as recorded when the run was created (a run continues "
                             f"with the config it started with; start a new run with `metabridge train` to change "
                             f"it). Received: edited keys {changed}")

    def check_no_links(self) -> None:
        """Raise when a part of the run is a symbolic link (writes and deletions never follow one)."""
        for name in RUN_FILES:
            target = os.path.join(self.path, name)
            if os.path.islink(target):
                raise ValueError(f"Expected {target} to be part of the run directory itself. Received: a symbolic "
                                 f"link to {os.readlink(target)} (metabridge never writes or deletes through links)")

    # ---- create / open ------------------------------------------------------------------
    @staticmethod
    def check_new(path: str) -> None:
        """Raise unless ``path`` can hold a new run: an existing run, a part of one, or a
        file a run would write (metrics.jsonl, result.json, checkpoints/, tb/) is never overwritten."""
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ValueError(f"Expected a directory for the run (--run-dir). Received: {path} is a file")
        if os.path.lexists(os.path.join(path, "config.json")):
            raise ValueError(f"Expected a new run directory (use `metabridge resume {path}` to continue). "
                             f"Received: {path} already holds a run (config.json)")
        found = [n for n in RUN_FILES if os.path.lexists(os.path.join(path, n))]
        if found:
            raise ValueError(f"Expected a new run directory for --run-dir (nothing a run writes there yet). "
                             f"Received: {path} already holds {', '.join(found)} (part of another run or your "
                             f"own files; move them or choose another --run-dir)")

    @classmethod
    def create(cls, path: str, config, options: RunOptions, backend: str,
               input_shape: tuple | None = None) -> "RunDir":
        """Make a new run directory for a resolved config (``input_shape``: the
        model's, recorded so the model can be rebuilt without the data). Its id is
        the first thing written: config.json is the run's first file.

        >>> run = RunDir.create("runs/a", cfg, RunOptions(), "torch")   # doctest: +SKIP
        """
        cls.check_new(path)
        os.makedirs(path, exist_ok=True)
        record = {"id": uuid.uuid4().hex, "metabridge_run": RUN_FORMAT, "config": dataclasses.asdict(config),
                  "run": dataclasses.asdict(options.checked()), "backend": backend,
                  "input_shape": list(input_shape) if input_shape is not None else None,
                  "versions": _versions(backend), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        record["seal"] = seal_of(record)
        write_json_atomic(os.path.join(path, "config.json"), record, sort_keys=False)
        return cls(path, record)

    @classmethod
    def open(cls, path: str) -> "RunDir":
        """An existing run directory; a clear error naming the file for anything else.

        >>> RunDir.open("runs/a").config.algo      # doctest: +SKIP
        'maml'
        """
        cfg = os.path.join(path, "config.json")
        if not os.path.isdir(path):
            raise ValueError(f"Expected a run directory. Received: {path} does not exist or is not a directory")
        if not os.path.lexists(cfg):
            raise ValueError(f"Expected a run directory (with config.json, made by `metabridge train --run-dir`). "
                             f"Received: {path} has no config.json")
        record = load_json_file(cfg, MAX_JSON_BYTES, "a run record (config.json)")
        if not isinstance(record, dict) or record.get("metabridge_run") != RUN_FORMAT:
            raise ValueError(f"Expected a metabridge run directory (format {RUN_FORMAT}). "
                             f"Received: {cfg} is not one")
        return cls(path, record)

    # ---- metrics ------------------------------------------------------------------------
    def append_metrics(self, records: list[dict]) -> None:
        """Append lines to metrics.jsonl and fsync (never through a symlink). The loop appends
        at each checkpoint; lines of steps after the last checkpoint are recomputed on resume."""
        if not records:
            return
        append_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records), "the metrics file")

    def read_metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl (a torn last line from a kill is skipped);
        a clear error naming the file and line for anything that is not a metrics record."""
        if not os.path.lexists(self.metrics_path):
            return []
        return self._read_metrics()[0]

    def _read_metrics(self) -> tuple[list[dict], bool]:
        """``(records, torn)``: ``torn`` when the last line was cut off by a kill."""
        fd, st = open_regular(self.metrics_path, "the metrics file (metrics.jsonl)")
        with os.fdopen(fd, "rb") as fh:
            if st.st_size > MAX_METRICS_BYTES:
                raise FileFormatError(f"Expected {self.metrics_path} of at most {MAX_METRICS_BYTES} bytes. "
                                      f"Received: {st.st_size} bytes")
            out, number, torn = [], 0, False
            while True:
                line = fh.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                number += 1
                if len(line) > MAX_LINE_BYTES:
                    raise FileFormatError(f"Expected lines of at most {MAX_LINE_BYTES} bytes in {self.metrics_path}. "
                                          f"Received: line {number} is longer")
                if not line.endswith(b"\n"):        # the last line, torn by a kill
                    torn = True
                    break
                out.append(self._metrics_record(line, number))
        return out, torn

    def _metrics_record(self, line: bytes, number: int) -> dict:
        where = f"{self.metrics_path} line {number}"
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise FileFormatError(f"Expected one JSON object per line in {self.metrics_path}. "
                                  f"Received: line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise FileFormatError(f"Expected a JSON object (step, loss, ...) on {where}. "
                                  f"Received: {type(record).__name__}")
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise FileFormatError(f"Expected an integer step >= 0 on {where}. Received: step={step!r:.40}")
        for k, v in record.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise FileFormatError(f"Expected numbers on {where}. Received: {k}={v!r:.40}")
        return record

    def truncate_metrics(self, steps_done: int) -> list[dict]:
        """Keep only lines of steps before ``steps_done`` (what a checkpoint covers); returns them.
        The file is rewritten (atomically) only when a line goes."""
        if not os.path.lexists(self.metrics_path):
            return []
        records, torn = self._read_metrics()
        kept = [r for r in records if r["step"] < steps_done]
        if torn or len(kept) != len(records):
            with atomic_file(self.metrics_path) as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in kept).encode())
        return kept
