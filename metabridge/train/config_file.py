"""Experiment files: ``metabridge train --config exp.toml``.

Every command-line flag can live in the file under its own name (dashes or
underscores), e.g.::

    algo = "protonet"
    dataset = "omniglot"
    data-dir = "../shared/data/omniglot"
    ways = 60
    test-ways = 5
    steps = 1500
    lr-decay-every = 500
    run-dir = "runs/protonet"
    checkpoint-every = 100

Flags given on the command line override the file. Unknown keys, wrong types
and impossible values are rejected before anything is trained, naming the key.

>>> values = load_config_file("exp.toml")                       # doctest: +SKIP
>>> cfg, run_values = split_values({**values, "steps": 10}, "exp.toml")  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from metabridge.train.experiment import ExperimentConfig
from metabridge.train.limits import check_memory
from metabridge.train.run_dir import RunOptions, allowed_types
from metabridge.utils.bounded import MAX_JSON_BYTES, read_bounded

# Keys about where and how a run is recorded, beside the experiment's own fields.
RUN_KEYS: dict[str, tuple[type, ...]] = {"backend": (str,), "run_dir": (str,)}
RUN_KEYS.update({f.name: (bool,) if f.type == "bool" else (int,) for f in dataclasses.fields(RunOptions)})

_allowed = allowed_types


def field_types() -> dict[str, tuple[tuple[type, ...], bool]]:
    """Every accepted key with its allowed types (experiment fields and run keys)."""
    out = {f.name: _allowed(f.type) for f in dataclasses.fields(ExperimentConfig)}
    out.update({k: (v, False) for k, v in RUN_KEYS.items()})
    return out


def load_config_file(path: str) -> dict:
    """The key/value pairs of a TOML experiment file (a regular file of at most 1 MiB),
    keys normalised to underscores.

    >>> load_config_file("examples/protonet_omniglot.toml")["algo"]   # doctest: +SKIP
    'protonet'
    """
    if not os.path.lexists(path):
        raise ValueError(f"Expected a config file (--config). Received: {path} does not exist")
    data = read_bounded(os.path.realpath(path), MAX_JSON_BYTES, f"a TOML experiment file (--config {path})")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"Expected valid TOML (UTF-8) in {path}. Received: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"Expected valid TOML in {path}. Received: {exc}") from None
    except RecursionError:
        raise ValueError(f"Expected valid TOML in {path}. Received: nesting too deep to read") from None
    return {k.replace("-", "_"): v for k, v in raw.items()}


def check_values(values: dict, source: str) -> None:
    """Reject unknown keys and wrong types, naming the key and where it came from."""
    types = field_types()
    for key, value in values.items():
        if key not in types:
            raise ValueError(f"Expected only known keys in {source} (e.g. {', '.join(sorted(types)[:6])}, …). "
                             f"Received: unknown key {key!r}")
        allowed, nullable = types[key]
        if value is None and nullable:
            continue
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise ValueError(f"Expected {key} to be {names} in {source}. "
                             f"Received: {key}={value!r:.80} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"Expected {key} to be finite in {source}. Received: {key}={value!r}")


def split_values(values: dict, source: str) -> tuple[ExperimentConfig, dict]:
    """``(resolved ExperimentConfig, run keys)`` from merged file and flag values, all checked."""
    check_values(values, source)
    run = {k: v for k, v in values.items() if k in RUN_KEYS}
    exp = {k: v for k, v in values.items() if k not in RUN_KEYS}
    try:
        cfg = ExperimentConfig(**exp).resolved()
        check_memory(cfg)
        RunOptions(**{k: v for k, v in run.items() if k not in ("backend", "run_dir")}).checked()
    except ValueError as exc:
        raise ValueError(f"{exc} (in {source})") from None
    return cfg, run
