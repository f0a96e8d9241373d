"""Bring your own model: native torch / Keras models in metabridge, and back.

- :func:`wrap` makes a user's ``torch.nn.Module`` (torch backend) or Keras 3
  model (tensorflow backend) a :class:`metabridge.nn.Model`, so every
  algorithm (MAML, Meta-SGD, ANIL, Reptile, ProtoNet, Matching, Siamese)
  trains it.
- :func:`export` writes meta-trained or adapted parameters back into it.
- :func:`to_native` turns a built-in :class:`~metabridge.nn.MLP` or
  :class:`~metabridge.nn.Conv4` into a plain ``torch.nn.Module`` or
  ``keras.Model``; :func:`save_native` saves one for ``torch.jit.load`` /
  ``keras.models.load_model``.

This module imports no framework: the work is done by
``metabridge/backends/<name>/native.py``, loaded through the backend registry.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import numpy as np

from metabridge import backend, config, ops
from metabridge.utils.atomic import atomic_file
from metabridge.nn.base import Model

FRAMEWORKS = {r.native_format: r.name for r in backend.BACKENDS}  # to_native's framework -> backend
EVAL_BN = ("batch", "running")


def _native(name: str) -> ModuleType:
    """The ``native`` module of backend ``name`` (imports that framework)."""
    package = backend.load(name)
    return importlib.import_module(f"{package.__name__}.native")


def _imported_backends() -> list[str]:
    """Backends whose framework is already imported: an object of a framework
    never imported cannot exist, so there is nothing else to ask."""
    return [r.name for r in backend.BACKENDS if r.framework_module in sys.modules]


def _owner(obj) -> ModuleType:
    """The ``native`` module of the framework ``obj`` belongs to, or a clear error."""
    obj = obj.module if isinstance(obj, NativeModel) else obj
    for name in _imported_backends():
        native = _native(name)
        if native.is_native(obj):
            return native
    raise ValueError(f"Expected a torch.nn.Module or a Keras model. Received: {type(obj).__name__}")


def _numpy(value) -> np.ndarray:
    """``value`` (numpy, or a tensor of any loaded backend) as numpy."""
    for name in _imported_backends():
        tensor_ops = backend.load(name).ops
        if tensor_ops.is_tensor(value):
            return tensor_ops.to_numpy(value)
    return np.asarray(value)


def _checked(values: dict | None, shapes: dict[str, tuple], what: str, owner: str) -> dict:
    """``values`` as numpy, with exactly the keys and shapes of ``shapes``."""
    if not isinstance(values, dict):
        raise ValueError(f"Expected {what} as a dict of arrays. Received: {type(values).__name__}")
    missing = [k for k in shapes if k not in values]
    if missing:
        raise ValueError(f"Expected {what} with every key of {owner}. Received: {what} without "
                         f"{missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [k for k in values if k not in shapes]
    if extra:
        raise ValueError(f"Expected {what} with only keys of {owner}. Received: unknown key {extra[0]!r}"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    out = {}
    for key, shape in shapes.items():
        arr = _numpy(values[key])
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"Expected {what}[{key!r}] of shape {tuple(shape)}. "
                             f"Received: shape {tuple(arr.shape)}")
        out[key] = arr
    return out


class NativeModel(Model):
    """A native model as a :class:`~metabridge.nn.Model`; made by :func:`wrap`.

    Parameters carry the framework's own names and layouts (torch
    ``named_parameters`` names, Keras ``variable.path``); ``state`` holds
    batch-norm running statistics (and frozen weights). Batch norm:

    - ``model(params, x)`` and ``apply(..., training=True)`` (what adaptation
      uses): batch statistics. Running statistics are updated on copies and
      returned as ``new_state``; they are never meta-parameters, and the
      native model's own weights and buffers are never touched.
    - ``apply(..., training=False)``: with ``eval_bn="batch"`` batch
      statistics again (transductive, as MAML evaluates); with
      ``eval_bn="running"`` the running statistics of ``state``, or the
      native model's own when ``state`` is None. On torch only the batch-norm
      layers switch to batch statistics for ``"batch"``; Keras has one
      training flag for all layers, so dropout is active there too.

    Randomness inside the native model (dropout) is the framework's own,
    outside metabridge's seeds. Not thread-safe on torch: a call sets the
    module's train/eval flags for its duration (they are restored after).
    """

    def __init__(self, adapter, eval_bn: str, backend_name: str):
        self._adapter, self.eval_bn, self.backend = adapter, eval_bn, backend_name
        self.input_shape = tuple(adapter.input_shape)
        self.output_shape = tuple(adapter.output_shape)
        if len(self.output_shape) == 1:
            # Read by the algorithms: label bounds (MAML family), embedding width (Siamese, Matching).
            self.out_features = self.embedding_dim = self.output_shape[0]

    @property
    def module(self):
        """The wrapped ``torch.nn.Module`` or ``keras.Model`` itself."""
        return self._adapter.native

    @property
    def head_prefix(self) -> str | None:
        """Name prefix of the head's parameters (from ``wrap(..., head=...)``), for ANIL."""
        return self._adapter.head_prefix

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._adapter.param_shapes()

    def init(self, seed: int) -> dict:
        """The native model's current trainable weights as numpy in ``floatx()``.

        ``seed`` is checked but not used: the weights are the module's own
        (initialise or load them natively first), so every seed gives the same.

        >>> params = mb.wrap(net, input_shape=(1, 28, 28)).init(seed=0)   # doctest: +SKIP
        """
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"Expected seed to be a non-negative int. Received: seed={seed!r}")
        dtype = config.floatx()
        return {k: v.astype(dtype) for k, v in self._adapter.param_values().items()}

    def init_state(self) -> dict:
        """The native model's batch-norm running statistics (and frozen weights) as numpy."""
        dtype = config.floatx()
        return {k: v.astype(dtype) for k, v in self._adapter.state_values().items()}

    def _check_backend(self) -> None:
        if config.get_backend() != self.backend:
            raise ValueError(f"Expected the {self.backend!r} backend active for a wrapped "
                             f"{type(self.module).__name__}. Received: backend={config.get_backend()!r}")

    def _forward(self, params, x, state, training):
        self._check_backend()
        params = {k: ops.asarray(v) for k, v in params.items()}
        mode = "train" if training else ("eval_batch" if self.eval_bn == "batch" else "eval_running")
        return self._adapter.forward(params, ops.asarray(x), state, mode)

    def features(self, params: dict, x):
        """The input of the head (batch statistics), for ANIL."""
        if self.head_prefix is None:
            raise ValueError("Expected wrap(..., head='<name of the last layer>') to split the model "
                             "for ANIL. Received: head=None")
        self._check_backend()
        x = ops.asarray(x)
        self.check_input(x)
        return self._adapter.features({k: ops.asarray(v) for k, v in params.items()}, x)

    def head(self, params: dict, features):
        """The head on ``features``, for ANIL."""
        if self.head_prefix is None:
            raise ValueError("Expected wrap(..., head='<name of the last layer>') to split the model "
                             "for ANIL. Received: head=None")
        self._check_backend()
        return self._adapter.head({k: ops.asarray(v) for k, v in params.items()}, ops.asarray(features))


def wrap(module_or_model, eval_bn: str = "batch", *, input_shape=None,
         head: str | None = None) -> NativeModel:
    """A ``torch.nn.Module`` (torch backend) or Keras 3 model (tensorflow
    backend) as a :class:`metabridge.nn.Model` every algorithm accepts.

    ``input_shape`` (without the batch axis, in the native model's own layout,
    e.g. NCHW images for torch) is read from a Keras model's input or a torch
    module whose first layer is ``nn.Linear``; give it otherwise. ``head``
    names the last layer (torch submodule name, Keras layer name), which ANIL
    adapts alone. ``eval_bn`` is what ``apply(..., training=False)`` uses for
    batch norm: ``"batch"`` or ``"running"`` statistics (see :class:`NativeModel`).

    >>> import torch, metabridge as mb                                        # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(),
    ...                           torch.nn.Linear(40, 1))                     # doctest: +SKIP
    >>> model = mb.wrap(net, head="2")                                        # doctest: +SKIP
    >>> maml = mb.algorithms.MAML(model, inner_lr=0.01, loss="mse")           # doctest: +SKIP
    >>> params = model.init(seed=0)              # the module's own weights   # doctest: +SKIP
    >>> mb.export(params, net)                                                # doctest: +SKIP
    """
    if eval_bn not in EVAL_BN:
        raise ValueError(f"Expected eval_bn in {EVAL_BN}. Received: eval_bn={eval_bn!r}")
    if head is not None and (not isinstance(head, str) or not head):
        raise ValueError(f"Expected head to be a layer name or None. Received: head={head!r}")
    active = config.get_backend()
    native = _native(active)
    if not native.is_native(module_or_model):
        owner = None
        try:
            owner = _owner(module_or_model)
        except ValueError:
            pass
        hint = "" if owner is None else f" matching the active backend ({active!r} wraps {backend.record(active).native_kind})"
        raise ValueError(f"Expected a torch.nn.Module or a Keras model{hint}. "
                         f"Received: {type(module_or_model).__name__}")
    if input_shape is not None and (not isinstance(input_shape, (tuple, list)) or not input_shape
                                    or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                               for d in input_shape)):
        raise ValueError(f"Expected input_shape to be a tuple of positive ints (no batch axis). "
                         f"Received: input_shape={input_shape!r}")
    return NativeModel(native.Adapter(module_or_model, input_shape, head), eval_bn, active)


def export(params: dict, module_or_model, state: dict | None = None) -> None:
    """Write ``params`` (numpy or tensors, e.g. meta-trained or adapted) and,
    optionally, ``state`` (batch-norm running statistics) into the native
    model, in place, cast to its own dtypes. Keys and shapes must be exactly
    those of ``wrap(module_or_model).init(...)`` / ``.init_state()``.

    >>> mb.export(params, net)       # net now predicts what metabridge did   # doctest: +SKIP
    """
    native = _owner(module_or_model)
    target = module_or_model.module if isinstance(module_or_model, NativeModel) else module_or_model
    param_names, state_names = native.variable_names(target)
    owner = f"the {type(target).__name__}"
    current = native.current_values(target, param_names + state_names)
    values = _checked(params, {k: current[k].shape for k in param_names}, "params", owner)
    if state is not None:
        values.update(_checked(state, {k: current[k].shape for k in state_names}, "state", owner))
    native.export(target, values)


def _spec(model) -> dict:
    """A framework-free description of a built-in model for the backends' ``build``."""
    from metabridge.nn import MLP, Conv4

    if isinstance(model, MLP):
        return {"kind": "mlp", "sizes": list(model.sizes), "activation": model.activation}
    if isinstance(model, Conv4):
        stride = 2 if model.strided else 1
        h, w, _ = model.input_shape
        pads = []
        pools = [not model.strided and (i < 3 or model.last_pool) for i in range(4)]
        for pool in pools:
            pads.append(ops.resolve_padding("same", (h, w), (3, 3), (stride, stride)))
            h, w = -(-h // stride), -(-w // stride)
            if pool:
                h, w = h // 2, w // 2
        return {"kind": "conv4", "input_shape": tuple(model.input_shape), "stride": stride,
                "strided": model.strided, "pools": pools, "pads": pads, "final_hwc": (h, w, model.channels)}
    raise ValueError(f"Expected a metabridge.nn.MLP or Conv4. Received: {type(model).__name__}")


def to_native(model: Model, params: dict, framework: str, state: dict | None = None):
    """A built-in MLP or Conv4 with ``params`` as a plain ``torch.nn.Module``
    (``framework="torch"``) or ``keras.Model`` (``"keras"``), on any active backend.

    It predicts what metabridge's ``model(params, x)`` predicts: the torch
    module is returned in train mode and the Keras model is called with
    ``training=True``, so batch norm uses batch statistics. In eval mode /
    ``training=False`` they use the running statistics of ``state``
    (metabridge's ``apply(params, x, state=state, training=False)``; zeros and
    ones without ``state``). Layouts: torch Conv4 takes NCHW images, Keras NHWC.

    >>> net = mb.native.to_native(Conv4(5), params, "keras")         # doctest: +SKIP
    >>> logits = net(images, training=True)                           # doctest: +SKIP
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"Expected framework in {tuple(FRAMEWORKS)}. Received: framework={framework!r}")
    spec = _spec(model)
    values = _checked(params, model.param_shapes(), "params", type(model).__name__)
    dtypes = {str(v.dtype) for v in values.values()}
    if len(dtypes) != 1 or not dtypes <= {"float32", "float64"}:
        raise ValueError(f"Expected params of one dtype, float32 or float64. Received: {sorted(dtypes)}")
    state_values = None
    if state is not None:
        shapes = {k: v.shape for k, v in model.init_state().items()}
        dtype = dtypes.pop()
        checked = _checked(state, shapes, "state", type(model).__name__)
        state_values = {k: v.astype(dtype) for k, v in checked.items()}
    return _native(FRAMEWORKS[framework]).build(spec, values, state_values)


def save_native(module_or_model, path: str | os.PathLike) -> None:
    """Save a native model atomically: TorchScript for a ``torch.nn.Module``
    (read back with ``torch.jit.load``), a ``.keras`` archive for a Keras model
    (``keras.models.load_model``); neither needs metabridge to load.

    >>> mb.native.save_native(net, "conv4.pt")                         # doctest: +SKIP
    """
    native = _owner(module_or_model)
    target = module_or_model.module if isinstance(module_or_model, NativeModel) else module_or_model
    path = os.fspath(path)
    if native.FRAMEWORK == "keras" and not path.endswith(".keras"):
        raise ValueError(f"Expected a path ending in '.keras' for a Keras model. Received: path={path!r}")
    with atomic_file(path) as fh:
        native.save(target, fh)
