"""The backend registry: load a backend package lazily, by name.

A backend is a package under ``metabridge/backends/<name>/`` exposing the
same modules (``ops``, ``autodiff``, ``device``) and public names. Only those
packages import a framework; nothing is imported until a backend is used.
"""
from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType

from metabridge import config

_loaded: dict[str, ModuleType] = {}
_lock = threading.Lock()

# The framework module each backend needs, to tell a missing install apart
# from a bug inside the backend package itself.
_FRAMEWORK_MODULE = {"torch": "torch", "tensorflow": "tensorflow"}


def load(name: str) -> ModuleType:
    """Import and return the backend package ``name`` (canonical or alias).

    >>> load("torch").name  # doctest: +SKIP
    'torch'
    """
    canonical = config.canonical_backend_name(name)
    with _lock:
        if canonical in _loaded:
            return _loaded[canonical]
        framework = _FRAMEWORK_MODULE[canonical]
        if canonical == "tensorflow":
            # Keep TensorFlow's C++ start-up chatter off the user's terminal.
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            importlib.import_module(framework)
        except ImportError as exc:
            extra = config.PIP_EXTRAS[canonical]
            raise ImportError(
                f"The {canonical!r} backend needs the {framework!r} package, which is not "
                f"installed. Install it with: pip install 'metabridge[{extra}]'"
            ) from exc
        module = importlib.import_module(f"metabridge.backends.{canonical}")
        _loaded[canonical] = module
        return module


def current() -> ModuleType:
    """The active backend package (see :func:`metabridge.get_backend`)."""
    return load(config.get_backend())


def available() -> list[str]:
    """Backends whose framework is installed, without importing any framework.

    >>> set(available()) <= {"torch", "tensorflow"}
    True
    """
    import importlib.util

    return [n for n in config.BACKENDS if importlib.util.find_spec(_FRAMEWORK_MODULE[n])]
