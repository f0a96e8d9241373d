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

>>> path = save_checkpoint("run/checkpoints", 120, {"params/w": np.zeros(3)}, {"backend": "torch"})  # doctest: +SKIP
>>> tensors, meta = load_latest("run/checkpoints")                                               # doctest: +SKIP
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
import time
import warnings

import numpy as np

from metabridge.utils.atomic import atomic_file

FORMAT = 1
_NAME = re.compile(r"step-(\d{8})\.json$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, tampered, incompatible)."""


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


def save_checkpoint(directory: str, step: int, tensors: dict[str, np.ndarray], meta: dict,
                    keep: int | None = 3) -> str:
    """Write the checkpoint after ``step`` steps; keep the newest ``keep`` (all if None).

    Returns the metadata file's path.
    """
    from safetensors.numpy import save as st_save

    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    data = st_save(arrays)
    tensor_path, meta_path = checkpoint_paths(directory, step)
    with atomic_file(tensor_path) as fh:
        fh.write(data)
        _fault_point("tensors", step)
    _fault_point("between", step)
    record = {**meta, "format": FORMAT, "step": int(step), "tensors": os.path.basename(tensor_path),
              "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "saved": time.time()}
    with atomic_file(meta_path) as fh:
        fh.write(json.dumps(record, indent=1, sort_keys=True).encode())
    if keep is not None:
        for old_meta in list_checkpoints(directory)[:-keep]:
            for path in (old_meta, old_meta[:-len(".json")] + ".safetensors"):
                if os.path.exists(path):
                    os.unlink(path)
    return meta_path


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete temporary files an interrupted write left behind; returns their names."""
    stale = glob.glob(os.path.join(directory, ".step-*.tmp"))
    for path in stale:
        os.unlink(path)
    return [os.path.basename(p) for p in stale]


def list_checkpoints(directory: str) -> list[str]:
    """Metadata files of complete-looking checkpoints, oldest first."""
    found = [p for p in glob.glob(os.path.join(directory, "step-*.json")) if _NAME.search(p)]
    return sorted(found)


def load_checkpoint(meta_path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Tensors and metadata of one checkpoint, verified against its recorded checksum."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    try:
        with open(meta_path, "rb") as fh:
            meta = json.loads(fh.read())
    except FileNotFoundError:
        raise CheckpointError(f"Expected a checkpoint metadata file. Received: {meta_path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"Expected valid JSON in {meta_path}. Received: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"Expected a metabridge checkpoint (format {FORMAT}) in {meta_path}. "
                              f"Received: format={meta.get('format') if isinstance(meta, dict) else None!r}")
    required = {"tensors": str, "bytes": int, "sha256": str, "step": int}
    bad = [k for k, t in required.items() if not isinstance(meta.get(k), t)]
    if bad:
        raise CheckpointError(f"Expected {', '.join(bad)} in the checkpoint metadata {meta_path}. "
                              f"Received: {', '.join(f'{k}={meta.get(k)!r}' for k in bad)}")
    if os.path.basename(meta["tensors"]) != meta["tensors"]:
        raise CheckpointError(f"Expected a file name beside {meta_path}. Received: tensors={meta['tensors']!r}")
    tensor_path = os.path.join(os.path.dirname(meta_path), meta["tensors"])
    try:
        with open(tensor_path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise CheckpointError(f"Expected the tensor file {tensor_path}. Received: it is missing") from None
    if len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(
            f"Expected {tensor_path} to match its recorded sha256 ({meta['bytes']} bytes). "
            f"Received: {len(data)} bytes with a different checksum (truncated or modified); refusing to load it")
    try:
        tensors = st_load(data)
    except SafetensorError as exc:  # pragma: no cover - the checksum catches damage first
        raise CheckpointError(f"Expected a safetensors file at {tensor_path}. Received: {exc}") from None
    return tensors, meta


def load_latest(directory: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The newest checkpoint that verifies, or ``None`` when there is none.

    A damaged newer checkpoint is skipped with a warning naming it.
    """
    for meta_path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(meta_path)
        except CheckpointError as exc:
            warnings.warn(f"Skipping checkpoint {os.path.basename(meta_path)}: {exc}", stacklevel=2)
    return None


def latest_params(directory: str) -> tuple[dict[str, np.ndarray], dict]:
    """``(parameters, metadata)`` of the newest valid checkpoint; a clear error when there is none."""
    saved = load_latest(directory)
    if saved is None:
        raise CheckpointError(f"Expected at least one valid checkpoint in {directory}. Received: none")
    params, _, _ = split_tensors(saved[0])
    return params, saved[1]


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
