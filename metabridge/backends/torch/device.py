"""Device placement for the PyTorch backend."""
from __future__ import annotations

import torch

from metabridge import config

# Parity is a feature: TF32 would change float32 matmul/conv results on GPUs.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def configure(name: str) -> None:
    """Check that device ``name`` (``"cpu"`` or ``"gpu:N"``) exists."""
    if name == "cpu":
        return
    index = int(name.split(":")[1])
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise ValueError(
            f"Expected a GPU index < {count} (GPUs visible to torch). Received: device={name!r}"
        )


def native_device() -> torch.device:
    """The ``torch.device`` new tensors are placed on."""
    name = config.get_device()
    if name == "cpu":
        return torch.device("cpu")
    return torch.device(f"cuda:{name.split(':')[1]}")


def placement():
    """A context manager placing new tensors on the configured device."""
    return native_device()  # a torch.device is a context manager that sets the default device
