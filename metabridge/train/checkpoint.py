"""Checkpoints any backend can read: safetensors tensors beside JSON metadata.

A checkpoint is two files in a run's ``checkpoints/`` folder::

    step-00000120.safetensors   # tensors: params/<name>, opt/<slot>, state/<name>
    step-00000120.json          # step, versions, backend, sha256 and size of the tensor file

No pickle anywhere: loading a checkpoint never executes code. Each file is
written atomically (temporary file, fsync, rename), tensors first, metadata
last, so the metadata file is the commit marker: a checkpoint without it was
interrupted and is ignored. The metadata records the tensor file's sha256, so a
truncated or tampered file is detected and refused; :func:`load_latest` then
falls back to the previous checkpoint.

The metadata also carries the run's id and the sha256 of its recorded config
(``run_id``, ``config_sha256``). Given an :class:`Expected` (what the run's
model and optimizer need), loading refuses, naming the file, a checkpoint of
another run, a step outside ``[1, steps]`` or not matching its file name, and
tensors of other names, shapes or dtypes; sizes are checked before anything
is read, and only regular files are read (no FIFO, device or symlink).

>>> path = save_checkpoint("run/checkpoints", 120, {"params/w": np.zeros(3)}, {"backend": "torch"})  # doctest: +SKIP
>>> tensors, meta = load_latest("run/checkpoints")                                               # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from metabridge.optim import averaged_params
from metabridge.utils.atomic import atomic_file
from metabridge.utils.bounded import MAX_JSON_BYTES, FileFormatError, parse_json, read_bounded

FORMAT = 1
_NAME = re.compile(r"step-(\d{8})\.json$")
#: Cap on a tensor file when the model it is for is not known (``Expected`` gives the exact need).
MAX_TENSOR_BYTES = 16 << 30
_SHA = re.compile(r"[0-9a-f]{64}$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, tampered, incompatible)."""


@dataclass
class Expected:
    """What a run's checkpoints must be: its id and config hash, its number of
    steps, and each tensor's shape and dtype (``tensors``: name -> (shape, dtype)).
    ``meta``: metadata keys that must have exactly these values.

    >>> exp = Expected("3f2a…", "9c1d…", steps=100, tensors={"params/w": ((3,), "float32")})  # doctest: +SKIP
    >>> tensors, meta = load_latest("runs/a/checkpoints", exp)                                # doctest: +SKIP
    """

    run_id: str | None
    config_sha256: str | None
    steps: int
    tensors: dict[str, tuple[tuple[int, ...], str]] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def max_bytes(self) -> int:
        """The largest tensor file these tensors can make (data plus a generous header)."""
        if self.tensors is None:
            return MAX_TENSOR_BYTES
        data = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                   for shape, dtype in self.tensors.values())
        return data + 8 + 4096 + 256 * len(self.tensors)


def _fault_point(name: str, step: int) -> None:
    """Fault injection for the kill-and-resume tests: with
    ``METABRIDGE_FAULT_PAUSE=<name>@<step>`` the process announces the point on
    stderr and sleeps there, so a test can SIGKILL it mid-write."""
    if os.environ.get("METABRIDGE_FAULT_PAUSE") == f"{name}@{step}":
        print(f"metabridge-fault-pause:{name}", file=sys.stderr, flush=True)
        time.sleep(3600)


def checkpoint_paths(directory: str, step: int) -> tuple[str, str]:
    """``(tensor file, metadata file)`` of the checkpoint after ``step`` steps."""
    stem = os.path.join(directory, f"step-{step:08d}")
    return stem + ".safetensors", stem + ".json"


def _check_directory(directory: str) -> None:
    if os.path.islink(directory):
        raise CheckpointError(f"Expected {directory} to be a directory of the run itself. Received: a symbolic link "
                              f"(metabridge never writes or deletes through links)")


def read_run_id(meta_path: str) -> tuple[bool, str | None]:
    """``(readable, run_id)`` of a checkpoint's metadata file, without raising."""
    try:
        meta = parse_json(read_bounded(meta_path, MAX_JSON_BYTES, "checkpoint metadata"), meta_path,
                          "checkpoint metadata")
    except (FileFormatError, OSError):
        return False, None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return False, None
    run_id = meta.get("run_id")
    return True, run_id if isinstance(run_id, str) else None


def save_checkpoint(directory: str, step: int, tensors: dict[str, np.ndarray], meta: dict,
                    keep: int | None = 3) -> str:
    """Write the checkpoint after ``step`` steps; keep the newest ``keep`` of this
    run's own checkpoints (those whose metadata has ``meta["run_id"]``; all if None).
    A checkpoint of another run at the same step is never overwritten.

    Returns the metadata file's path.

    >>> save_checkpoint("runs/a/checkpoints", 10, {"params/w": np.zeros(3)}, {"run_id": "3f2a…"})  # doctest: +SKIP
    'runs/a/checkpoints/step-00000010.json'
    """
    from safetensors.numpy import save as st_save

    _check_directory(directory)
    run_id = meta.get("run_id")
    tensor_path, meta_path = checkpoint_paths(directory, step)
    if os.path.lexists(meta_path):
        readable, owner = read_run_id(meta_path)
        if readable and owner != run_id:
            raise CheckpointError(f"Expected no checkpoint of another run at {meta_path}. Received: one of run "
                                  f"{owner} (move it away; metabridge does not overwrite it)")
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    data = st_save(arrays)
    with atomic_file(tensor_path) as fh:
        fh.write(data)
        _fault_point("tensors", step)
    _fault_point("between", step)
    record = {**meta, "format": FORMAT, "step": int(step), "tensors": os.path.basename(tensor_path),
              "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "saved": time.time()}
    with atomic_file(meta_path) as fh:
        fh.write(json.dumps(record, indent=1, sort_keys=True).encode())
    if keep is not None:
        own = [p for p in list_checkpoints(directory) if read_run_id(p) == (True, run_id)]
        for old_meta in own[:-keep]:
            for path in (old_meta[:-len(".json")] + ".safetensors", old_meta):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)        # unlink removes a link itself, never its target
    return meta_path


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete temporary files an interrupted write left behind; returns their names."""
    if not os.path.isdir(directory) or os.path.islink(directory):
        return []
    stale = glob.glob(os.path.join(directory, ".step-*.tmp"))
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return [os.path.basename(p) for p in stale]


def list_checkpoints(directory: str) -> list[str]:
    """Metadata files of complete-looking checkpoints, oldest first."""
    found = [p for p in glob.glob(os.path.join(directory, "step-*.json")) if _NAME.search(p)]
    return sorted(found)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_meta(meta_path: str) -> dict:
    try:
        data = read_bounded(meta_path, MAX_JSON_BYTES, "checkpoint metadata")
    except FileFormatError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        meta = parse_json(data, meta_path, "checkpoint metadata")
    except FileFormatError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"Expected a metabridge checkpoint (format {FORMAT}) in {meta_path}. "
                              f"Received: format={meta.get('format') if isinstance(meta, dict) else None!r:.40}")
    required = {"tensors": str, "bytes": int, "sha256": str, "step": int}
    bad = [k for k, t in required.items() if not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool)]
    if bad:
        raise CheckpointError(f"Expected {', '.join(bad)} in the checkpoint metadata {meta_path}. "
                              f"Received: {', '.join(f'{k}={meta.get(k)!r:.40}' for k in bad)}")
    if os.path.basename(meta["tensors"]) != meta["tensors"] or meta["tensors"] in ("", ".", ".."):
        raise CheckpointError(f"Expected a file name beside {meta_path}. Received: tensors={meta['tensors']!r:.80}")
    if not _SHA.match(meta["sha256"]) or meta["bytes"] < 0:
        raise CheckpointError(f"Expected a sha256 and a byte count in {meta_path}. "
                              f"Received: sha256={meta['sha256']!r:.80}, bytes={meta['bytes']}")
    named = _NAME.search(meta_path)
    if named and int(named.group(1)) != meta["step"]:
        raise CheckpointError(f"Expected step={int(named.group(1))} in {meta_path} (its file name). "
                              f"Received: step={meta['step']}")
    return meta


def _check_meta(meta: dict, meta_path: str, expected: Expected) -> None:
    if meta.get("run_id") != expected.run_id:
        raise CheckpointError(f"Expected a checkpoint of this run (id {expected.run_id}) in {meta_path}. "
                              f"Received: one of run {meta.get('run_id')!r:.80}; refusing to adopt it")
    if meta.get("config_sha256") != expected.config_sha256:
        raise CheckpointError(f"Expected a checkpoint written with this run's recorded config in {meta_path}. "
                              f"Received: config_sha256={meta.get('config_sha256')!r:.80}")
    if not 1 <= meta["step"] <= expected.steps:
        raise CheckpointError(f"Expected step in [1, {expected.steps}] in {meta_path}. Received: step={meta['step']}")
    for key, value in expected.meta.items():
        got = meta.get(key)
        if got != value or type(got) is not type(value):
            raise CheckpointError(f"Expected {key}={value!r} in {meta_path}. Received: {key}={got!r:.80}")
    if expected.tensors is not None and (not _is_int(meta.get("opt_step")) or meta["opt_step"] != meta["step"]):
        raise CheckpointError(f"Expected opt_step={meta['step']} (one update per step) in {meta_path}. "
                              f"Received: opt_step={meta.get('opt_step')!r:.40}")
    seconds = meta.get("seconds", 0.0)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not (
            math.isfinite(seconds) and seconds >= 0):
        raise CheckpointError(f"Expected seconds >= 0 in {meta_path}. Received: seconds={seconds!r:.40}")
    if meta["bytes"] > expected.max_bytes:
        raise CheckpointError(f"Expected a tensor file of at most {expected.max_bytes} bytes (what this run's model "
                              f"needs) for {meta_path}. Received: bytes={meta['bytes']}")


def _check_tensors(tensors: dict, tensor_path: str, expected: Expected) -> None:
    want = expected.tensors or {}
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise CheckpointError(f"Expected a checkpoint of this run's model (its parameters and optimizer slots) in "
                              f"{tensor_path}. Received: "
                              f"missing {missing[:5]} and unexpected {extra[:5]}")
    for name, (shape, dtype) in want.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(shape) or got.dtype != np.dtype(dtype):
            raise CheckpointError(f"Expected a checkpoint of this run's model: {name} of shape {tuple(shape)} and dtype {np.dtype(dtype)} in "
                                  f"{tensor_path}. Received: shape {tuple(got.shape)}, dtype {got.dtype}")
        if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
            raise CheckpointError(f"Expected finite values of {name} in {tensor_path}. Received: NaN or inf")


def load_checkpoint(meta_path: str, expected: Expected | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Tensors and metadata of one checkpoint, verified against its recorded checksum
    and, with ``expected``, against the run and its model (before any tensor is read
    where the metadata can tell).

    >>> tensors, meta = load_checkpoint("runs/a/checkpoints/step-00000010.json")   # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    if not os.path.lexists(meta_path):
        raise CheckpointError(f"Expected a checkpoint metadata file. Received: {meta_path} does not exist")
    meta = _read_meta(meta_path)
    if expected is not None:
        _check_meta(meta, meta_path, expected)
    tensor_path = os.path.join(os.path.dirname(meta_path), meta["tensors"])
    cap = expected.max_bytes if expected is not None else MAX_TENSOR_BYTES
    if meta["bytes"] > cap:
        raise CheckpointError(f"Expected a tensor file of at most {cap} bytes for {meta_path}. "
                              f"Received: bytes={meta['bytes']}")
    if not os.path.lexists(tensor_path):
        raise CheckpointError(f"Expected the tensor file {tensor_path}. Received: it is missing")
    try:
        data = read_bounded(tensor_path, cap, "a checkpoint tensor file", exact=meta["bytes"])
    except FileFormatError as exc:
        raise CheckpointError(f"{exc}; refusing to load it") from None
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(
            f"Expected {tensor_path} to match its recorded sha256 ({meta['bytes']} bytes). "
            f"Received: {len(data)} bytes with a different checksum (truncated or modified); refusing to load it")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise CheckpointError(f"Expected a safetensors file at {tensor_path}. Received: {exc}") from None
    if expected is not None and expected.tensors is not None:
        _check_tensors(tensors, tensor_path, expected)
    return tensors, meta


def load_latest(directory: str, expected: Expected | None = None,
                reasons: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict] | None:
    """The newest checkpoint that verifies, or ``None`` when there is none.

    A damaged or foreign newer checkpoint is skipped with a warning naming it
    (and the warning appended to ``reasons`` when given).

    >>> tensors, meta = load_latest("runs/a/checkpoints")   # doctest: +SKIP
    """
    if os.path.islink(directory):
        raise CheckpointError(f"Expected {directory} to be a directory of the run itself. Received: a symbolic link")
    for meta_path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(meta_path, expected)
        except CheckpointError as exc:
            message = f"Skipping checkpoint {os.path.basename(meta_path)}: {exc}"
            if reasons is not None:
                reasons.append(message)
            warnings.warn(message, stacklevel=2)
    return None


def latest_params(directory: str, expected: Expected | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """``(parameters, metadata)`` of the newest valid checkpoint; a clear error when there is none.
    For a run with ``ema_decay`` the parameters are the average that the run evaluates
    (:class:`metabridge.optim.ParameterAverage`), not the last update's.

    >>> params, meta = latest_params("runs/a/checkpoints")   # doctest: +SKIP
    """
    reasons: list[str] = []
    saved = load_latest(directory, expected, reasons)
    if saved is None:
        raise CheckpointError(f"Expected at least one valid checkpoint in {directory}. Received: none"
                              + (f" ({'; '.join(reasons)})" if reasons else ""))
    params, slots, _ = split_tensors(saved[0])
    return averaged_params(params, slots), saved[1]


def split_tensors(tensors: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
    """``(params, optimizer slots, model state)`` from a checkpoint's flat tensor dict."""
    out: tuple[dict, dict, dict] = ({}, {}, {})
    for key, value in tensors.items():
        section, _, name = key.partition("/")
        index = {"params": 0, "opt": 1, "state": 2}.get(section)
        if index is None or not name:
            raise CheckpointError(f"Expected tensor names params/…, opt/… or state/…. Received: {key!r}")
        out[index][name] = value
    return out
