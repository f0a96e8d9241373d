"""metabridge: meta-learning written once, run on PyTorch or TensorFlow.

>>> import metabridge as mb
>>> mb.set_backend("torch")                  # doctest: +SKIP
>>> model = mb.nn.MLP([1, 40, 40, 1])
>>> params = model.init(seed=0)              # numpy, identical on every backend

Importing metabridge imports no framework; choosing a backend imports that one.
"""
from metabridge import algorithms, data, nn, ops, optim
from metabridge.backend import available as available_backends
from metabridge.config import (
    floatx,
    get_backend,
    get_device,
    set_backend,
    set_device,
    set_floatx,
    use_backend,
    use_floatx,
)
from metabridge.native import export, wrap

from metabridge.version import __version__

__all__ = [
    "algorithms", "data", "nn", "ops", "optim", "available_backends", "floatx",
    "get_backend", "get_device", "set_backend", "set_device", "set_floatx", "use_backend", "use_floatx",
    "export", "wrap", "__version__",
]
