"""Device placement for the TensorFlow backend."""
from __future__ import annotations

import contextlib

import tensorflow as tf

from metabridge import config

# Grow GPU memory on demand instead of reserving all of it (must run before
# the first GPU op), and keep TF32 off: parity is a feature.
for _gpu in tf.config.list_physical_devices("GPU"):
    try:
        tf.config.experimental.set_memory_growth(_gpu, True)
    except RuntimeError:  # already initialised by the user's own code
        pass
tf.config.experimental.enable_tensor_float_32_execution(False)


def configure(name: str) -> None:
    """Check that device ``name`` (``"cpu"`` or ``"gpu:N"``) exists."""
    if name == "cpu":
        return
    index = int(name.split(":")[1])
    count = len(tf.config.list_physical_devices("GPU"))
    if index >= count:
        raise ValueError(
            f"Expected a GPU index < {count} (GPUs visible to TensorFlow). "
            f"Received: device={name!r}"
        )


def native_device() -> str | None:
    """TensorFlow's name of the device new tensors are placed on (``"/CPU:0"``, ``"/GPU:N"``)."""
    name = config.get_device()
    if name == "cpu":
        return "/CPU:0"
    if name.startswith("gpu"):
        return f"/GPU:{name.split(':')[1]}"
    return None


def placement():
    """A context manager placing new tensors on the configured device."""
    device = native_device()
    return tf.device(device) if device is not None else contextlib.nullcontext()
