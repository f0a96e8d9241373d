"""Settings: which backend, float precision and device.

The backend is resolved in this order: an active ``use_backend`` block
(a ``contextvars`` value, so threads and asyncio tasks do not see each
other's blocks), then ``set_backend``, then the ``METABRIDGE_BACKEND``
environment variable, then ``"torch"``. The float precision works the same
way: a ``use_floatx`` block, else ``set_floatx``, else ``"float32"``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from types import ModuleType
from typing import Callable, Iterator

from metabridge import backend as _table

BACKENDS = _table.NAMES
FLOATX_CHOICES = ("float32", "float64")

_global_backend: str | None = None
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "metabridge_backend", default=None
)
_floatx = "float32"
_context_floatx: contextvars.ContextVar[str | None] = contextvars.ContextVar("metabridge_floatx", default=None)
_device = "cpu"
# (backend, floatx) while a compiled function runs (see :func:`pinned`); read only
# while a graph compiler traces (``_tracing``, set by a backend that needs it).
_pinned: tuple[str, str] | None = None
_pin_lock = threading.RLock()
_tracing: Callable[[], bool] = lambda: False


def canonical_backend_name(name: str) -> str:
    """Map an alias (``"tf"``, ``"pytorch"``…) to ``"torch"`` or ``"tensorflow"``.

    >>> canonical_backend_name("tf")
    'tensorflow'
    """
    return _table.canonical_name(name)


def set_backend(name: str) -> None:
    """Select the backend for this process (imports that framework only).

    >>> import metabridge
    >>> metabridge.set_backend("tf")  # doctest: +SKIP
    """
    global _global_backend
    canonical = canonical_backend_name(name)
    _table.load(canonical)  # fail now, with a clear error, if it is missing
    _global_backend = canonical


def get_backend() -> str:
    """The active backend name: ``"torch"`` or ``"tensorflow"``.

    >>> get_backend() in ("torch", "tensorflow")
    True
    """
    if _pinned is not None and _tracing():
        return _pinned[0]
    ctx = _context_backend.get()
    if ctx is not None:
        return ctx
    if _global_backend is not None:
        return _global_backend
    env = os.environ.get("METABRIDGE_BACKEND")
    if env:
        return canonical_backend_name(env)
    return "torch"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run a block on another backend; other threads keep their own.

    >>> with use_backend("torch"):  # doctest: +SKIP
    ...     ops.asarray([1.0])
    """
    canonical = canonical_backend_name(name)
    _table.load(canonical)
    token = _context_backend.set(canonical)
    try:
        yield canonical
    finally:
        _context_backend.reset(token)


def current_backend() -> ModuleType:
    """The active backend package (see :func:`get_backend`), imported on first use."""
    return _table.load(get_backend())


def _check_floatx(dtype: str) -> str:
    if dtype not in FLOATX_CHOICES:
        raise ValueError(
            f"Expected floatx to be one of {FLOATX_CHOICES}. Received: floatx={dtype!r}"
        )
    return dtype


def set_floatx(dtype: str) -> None:
    """Set the float precision of new tensors and parameters for this process
    (a :func:`use_floatx` block still wins inside it).

    >>> set_floatx("float64"); floatx()
    'float64'
    >>> set_floatx("float32")
    """
    global _floatx
    _floatx = _check_floatx(dtype)


@contextlib.contextmanager
def use_floatx(dtype: str) -> Iterator[str]:
    """Run a block in another float precision; the previous one comes back
    afterwards, also on errors, and other threads keep their own.

    >>> with use_floatx("float64"):
    ...     floatx()
    'float64'
    """
    token = _context_floatx.set(_check_floatx(dtype))
    try:
        yield dtype
    finally:
        _context_floatx.reset(token)


def floatx() -> str:
    """The current float precision (``"float32"`` or ``"float64"``)."""
    if _pinned is not None and _tracing():
        return _pinned[1]
    ctx = _context_floatx.get()
    return _floatx if ctx is None else ctx


@contextlib.contextmanager
def pinned() -> Iterator[tuple[str, str]]:
    """Hold the current backend and float precision in plain module globals for
    the block, for graph capture: ``torch.compile`` cannot read a ``ContextVar``
    (Dynamo: "does not know how to trace method get of class ContextVar"), but
    reads and guards globals. The pin is read only while a compiler traces, so
    other threads keep their own settings; blocks of different threads run one
    at a time (a lock), and a nested block keeps the outer pin.

    >>> with pinned() as (backend, dtype):     # doctest: +SKIP
    ...     compiled_fn(params)
    """
    global _pinned
    with _pin_lock:
        if _pinned is not None:
            yield _pinned
            return
        _pinned = (get_backend(), floatx())
        try:
            yield _pinned
        finally:
            _pinned = None


def parse_device(device: str) -> tuple[str, int]:
    """Parse ``"cpu"``, ``"gpu"`` or ``"gpu:N"`` into ``(kind, index)``.

    >>> parse_device("gpu:1")
    ('gpu', 1)
    """
    if isinstance(device, str):
        text = device.strip().lower()
        if text == "cpu":
            return "cpu", 0
        if text in ("gpu", "cuda"):
            return "gpu", 0
        for prefix in ("gpu:", "cuda:"):
            if text.startswith(prefix) and text[len(prefix):].isdigit():
                return "gpu", int(text[len(prefix):])
    raise ValueError(
        f"Expected device to be 'cpu', 'gpu' or 'gpu:N'. Received: device={device!r}"
    )


def set_device(device: str) -> None:
    """Place new tensors on ``"cpu"``, ``"gpu"`` or ``"gpu:N"``.

    The active backend checks the device exists; TensorFlow is told to grow
    GPU memory rather than reserve all of it.

    >>> set_device("cpu")
    """
    global _device
    kind, index = parse_device(device)
    name = "cpu" if kind == "cpu" else f"gpu:{index}"
    current_backend().device.configure(name)
    _device = name


def get_device() -> str:
    """The current device name (``"cpu"`` or ``"gpu:N"``)."""
    return _device
