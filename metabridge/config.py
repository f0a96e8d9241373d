"""Process-wide settings: which backend, float precision and device.

The backend is resolved in this order: an active ``use_backend`` block
(a ``contextvars`` value, so threads and asyncio tasks do not see each
other's blocks), then ``set_backend``, then the ``METABRIDGE_BACKEND``
environment variable, then ``"torch"``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

BACKEND_ALIASES = {
    "torch": "torch",
    "pytorch": "torch",
    "tf": "tensorflow",
    "tensorflow": "tensorflow",
}
BACKENDS = ("torch", "tensorflow")
PIP_EXTRAS = {"torch": "torch", "tensorflow": "tf"}
FLOATX_CHOICES = ("float32", "float64")

_global_backend: str | None = None
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "metabridge_backend", default=None
)
_floatx = "float32"
_device = "cpu"


def canonical_backend_name(name: str) -> str:
    """Map an alias (``"tf"``, ``"pytorch"``…) to ``"torch"`` or ``"tensorflow"``.

    >>> canonical_backend_name("tf")
    'tensorflow'
    """
    if not isinstance(name, str) or name.strip().lower() not in BACKEND_ALIASES:
        valid = ", ".join(repr(n) for n in BACKEND_ALIASES)
        raise ValueError(f"Expected backend to be one of {valid}. Received: backend={name!r}")
    return BACKEND_ALIASES[name.strip().lower()]


def set_backend(name: str) -> None:
    """Select the backend for this process (imports that framework only).

    >>> import metabridge
    >>> metabridge.set_backend("tf")  # doctest: +SKIP
    """
    global _global_backend
    canonical = canonical_backend_name(name)
    from metabridge import backend as _registry

    _registry.load(canonical)  # fail now, with a clear error, if it is missing
    _global_backend = canonical


def get_backend() -> str:
    """The active backend name: ``"torch"`` or ``"tensorflow"``.

    >>> get_backend() in ("torch", "tensorflow")
    True
    """
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
    from metabridge import backend as _registry

    _registry.load(canonical)
    token = _context_backend.set(canonical)
    try:
        yield canonical
    finally:
        _context_backend.reset(token)


def set_floatx(dtype: str) -> None:
    """Set the float precision of new tensors and parameters.

    >>> set_floatx("float64"); floatx()
    'float64'
    >>> set_floatx("float32")
    """
    global _floatx
    if dtype not in FLOATX_CHOICES:
        raise ValueError(
            f"Expected floatx to be one of {FLOATX_CHOICES}. Received: floatx={dtype!r}"
        )
    _floatx = dtype


def floatx() -> str:
    """The current float precision (``"float32"`` or ``"float64"``)."""
    return _floatx


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
    from metabridge import backend as _registry

    _registry.current().device.configure(name)
    _device = name


def get_device() -> str:
    """The current device name (``"cpu"`` or ``"gpu:N"``)."""
    return _device
