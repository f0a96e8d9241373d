"""The PyTorch backend. The only package besides ``backends/tensorflow`` that
imports a framework; it mirrors that package module for module."""
from metabridge.backends.torch import autodiff, device, ops

name = "torch"
# Capability flags, read instead of name checks (Keras 3 style).
SUPPORTS_COMPILED_SECOND_ORDER = False  # torch.compile cannot trace double backward
TENSOR_TYPES = ops.TENSOR_TYPES

__all__ = ["autodiff", "device", "ops", "name"]
