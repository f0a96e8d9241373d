"""The backend table: one record per backend, and loading a backend by name.

Everything metabridge knows about a backend's identity lives in
:data:`BACKENDS` (Keras 3 style): its canonical name and aliases, the
framework it needs, the pip extra that installs it, the format a trained
network is exported to, and capability flags that code reads instead of
checking names. Adding a backend means one folder under
``metabridge/backends/<name>/`` (same module names and public names as the
others) and one record here.

This module imports no framework and nothing else of metabridge; a backend's
framework is imported only when :func:`load` is called.

>>> record("tf").name
'tensorflow'
>>> record("torch").pip_extra
'torch'
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class BackendRecord:
    """What metabridge knows about one backend.

    ``native_format`` is the name ``metabridge export --to`` takes for this
    backend's own model type (saved with ``native_extension``); ``native_kind``
    names the objects :func:`metabridge.wrap` accepts on it. ``env`` holds
    environment defaults set before the framework is imported.
    ``loss_tensor_grads``: ``Learner.adapt`` can differentiate a loss tensor
    computed outside a metabridge function (torch's autograd can, TensorFlow's
    tape cannot).
    """

    name: str
    aliases: tuple[str, ...]
    framework_module: str
    pip_extra: str
    native_format: str
    native_extension: str
    native_kind: str
    env: dict = field(default_factory=dict)
    loss_tensor_grads: bool = False

    @property
    def package(self) -> str:
        """The metabridge package implementing the backend."""
        return f"metabridge.backends.{self.name}"


BACKENDS: tuple[BackendRecord, ...] = (
    BackendRecord("torch", ("torch", "pytorch"), "torch", "torch", "torch", ".pt", "torch.nn.Module",
                  loss_tensor_grads=True),
    BackendRecord("tensorflow", ("tf", "tensorflow"), "tensorflow", "tf", "keras", ".keras", "Keras models",
                  env={"TF_CPP_MIN_LOG_LEVEL": "2"}),  # keep TensorFlow's C++ start-up chatter off the terminal
)
NAMES: tuple[str, ...] = tuple(r.name for r in BACKENDS)
_BY_ALIAS = {alias: r for r in BACKENDS for alias in (r.name, *r.aliases)}

_loaded: dict[str, ModuleType] = {}
_lock = threading.Lock()


def record(name: str) -> BackendRecord:
    """The record of backend ``name`` (canonical name or alias, any case).

    >>> record("PyTorch").name
    'torch'
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in _BY_ALIAS:
        valid = ", ".join(repr(n) for n in _BY_ALIAS)
        raise ValueError(f"Expected backend to be one of {valid}. Received: backend={name!r}")
    return _BY_ALIAS[key]


def canonical_name(name: str) -> str:
    """Map an alias (``"tf"``, ``"pytorch"``…) to the canonical backend name.

    >>> canonical_name("tf")
    'tensorflow'
    """
    return record(name).name


def by_native_format(fmt: str) -> BackendRecord:
    """The backend whose native model format is ``fmt`` (``"torch"`` or ``"keras"``).

    >>> by_native_format("keras").name
    'tensorflow'
    """
    for r in BACKENDS:
        if r.native_format == fmt:
            return r
    formats = tuple(r.native_format for r in BACKENDS)
    raise ValueError(f"Expected a native format in {formats}. Received: {fmt!r}")


def load(name: str) -> ModuleType:
    """Import and return the backend package ``name`` (canonical or alias).

    >>> load("torch").name  # doctest: +SKIP
    'torch'
    """
    rec = record(name)
    module = _loaded.get(rec.name)
    if module is not None:
        return module
    with _lock:
        if rec.name in _loaded:
            return _loaded[rec.name]
        for key, value in rec.env.items():
            os.environ.setdefault(key, value)
        try:
            importlib.import_module(rec.framework_module)
        except ImportError as exc:
            raise ImportError(
                f"The {rec.name!r} backend needs the {rec.framework_module!r} package, which is not "
                f"installed. Install it with: pip install 'metabridge[{rec.pip_extra}]'"
            ) from exc
        module = importlib.import_module(rec.package)
        _loaded[rec.name] = module
        return module


def available() -> list[str]:
    """Backends whose framework is installed, without importing any framework.

    >>> set(available()) <= set(NAMES)
    True
    """
    return [r.name for r in BACKENDS if importlib.util.find_spec(r.framework_module)]
