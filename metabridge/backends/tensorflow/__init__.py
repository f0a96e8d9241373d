"""The TensorFlow backend. Mirrors ``backends/torch`` module for module."""
from metabridge.backends.tensorflow import autodiff, device, ops

name = "tensorflow"
# Capability flags, read instead of name checks (Keras 3 style).
SUPPORTS_COMPILED_SECOND_ORDER = True  # nested GradientTapes trace inside tf.function
TENSOR_TYPES = ops.TENSOR_TYPES

__all__ = ["autodiff", "device", "ops", "name"]
