"""Native Keras models in metabridge, and metabridge models as native Keras.

Mirrors ``backends/torch/native.py`` (torch modules) name for name; the
framework-free front is :mod:`metabridge.native`.

- :class:`Adapter` runs a user's Keras 3 model as a pure function of a params
  dict with ``model.stateless_call``: nothing is assigned to the model's
  variables; batch-norm moving statistics come back as the new state.
- :func:`export` assigns numpy values to a model's variables.
- :func:`build` makes a ``keras.Sequential`` equal to a built-in MLP or Conv4.
- :func:`save` writes a ``.keras`` archive, loadable with ``keras.models.load_model`` alone.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import tempfile
import threading
import warnings
from typing import BinaryIO, Iterator

import keras
import numpy as np
import tensorflow as tf

FRAMEWORK = "keras"
MODES = ("train", "eval_batch", "eval_running")

try:  # where Keras' TensorFlow backend takes batch/layer/group-norm moments from
    from keras.src.backend.tensorflow import nn as _keras_tf_nn

    _NATIVE_MOMENTS = _keras_tf_nn._compute_moments
except (ImportError, AttributeError):  # pragma: no cover - another Keras layout
    _keras_tf_nn = _NATIVE_MOMENTS = None
_moments_lock = threading.Lock()
_moments_users = 0


def _moments_exact(x, axes, keepdims):
    """``tf.nn.moments``' values, differentiable twice: its variance is
    ``mean(squared_difference(x, stop_gradient(mean)))``, whose first derivative
    is right but whose second derivative misses the path through the mean."""
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(x - mean), axes, keepdims=True)
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    return mean, variance


@contextlib.contextmanager
def _exact_moments() -> Iterator[None]:
    """Keras normalization layers use :func:`_moments_exact` inside the block.

    The swap is process-wide while any block is open; other Keras code running
    meanwhile gets the same values, with correct second derivatives.
    """
    global _moments_users
    if _keras_tf_nn is None:  # pragma: no cover
        warnings.warn("This Keras version hides its moments function: second-order gradients through "
                      "Keras normalization layers miss the path through the batch mean.", RuntimeWarning)
        yield
        return
    with _moments_lock:
        if _moments_users == 0:
            _keras_tf_nn._compute_moments = _moments_exact
        _moments_users += 1
    try:
        yield
    finally:
        with _moments_lock:
            _moments_users -= 1
            if _moments_users == 0:
                _keras_tf_nn._compute_moments = _NATIVE_MOMENTS


def is_native(obj) -> bool:
    """Whether ``obj`` is a model of this framework (a ``keras.Model``)."""
    return isinstance(obj, keras.Model)


def variable_names(model: keras.Model) -> tuple[list[str], list[str]]:
    """``(param names, state names)`` as ``variable.path``: trainable variables;
    then floating-point non-trainable ones (batch-norm moving statistics,
    frozen weights; not random seed state)."""
    state = [v for v in model.non_trainable_variables if _is_float(v)]
    return _paths(model.trainable_variables), _paths(state)


class Adapter:
    """A Keras 3 model as ``forward(params, x, state, mode) -> (y, new_state)``.

    ``params`` are ``model.trainable_variables`` by ``variable.path``;
    ``state`` the floating-point non-trainable variables (batch-norm moving
    statistics, frozen weights). Other non-trainable variables (random seed
    state) are passed at their current values and their updates dropped.
    Normalization layers compute their moments with :func:`_moments_exact`
    during a call, so second-order MAML through them is exact.
    """

    def __init__(self, model: keras.Model, input_shape, head: str | None):
        if keras.backend.backend() != "tensorflow":
            raise ValueError(f"Expected Keras on its 'tensorflow' backend for metabridge's tensorflow "
                             f"backend. Received: KERAS_BACKEND={keras.backend.backend()!r}")
        if not model.built:
            raise ValueError(f"Expected a built Keras model (give it an Input or call it once). "
                             f"Received: an unbuilt {type(model).__name__}")
        self.model = self.native = model
        self.param_names, self.state_names = variable_names(model)
        self._state_index = [i for i, v in enumerate(model.non_trainable_variables) if _is_float(v)]
        self.input_shape = _input_shape(model, input_shape)
        self.head_layer, self.head_prefix, self._body = None, None, None
        if head is not None:
            self.head_layer, self._body = _split(model, head)
            self.head_prefix = _layer_prefix(self.head_layer, head)
        self.output_shape = self._probe()

    # ---- values ----------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(v.shape) for n, v in zip(self.param_names, self.model.trainable_variables)}

    def param_values(self) -> dict[str, np.ndarray]:
        return {n: np.array(v.numpy()) for n, v in zip(self.param_names, self.model.trainable_variables)}

    def state_values(self) -> dict[str, np.ndarray]:
        variables = self.model.non_trainable_variables
        return {n: np.array(variables[i].numpy()) for n, i in zip(self.state_names, self._state_index)}

    # ---- forward ---------------------------------------------------------------------------
    def _check_dtype(self, x) -> None:
        own = self.model.trainable_variables[0].dtype if self.model.trainable_variables else x.dtype.name
        if own != x.dtype.name:
            raise ValueError(
                f"Expected a Keras model whose variables are {x.dtype.name} (metabridge.floatx()); build it "
                f"with dtype={x.dtype.name!r} or under keras.config.set_floatx. Received: {own} variables")

    def _call(self, model: keras.Model, params: dict, x, state: dict | None, training: bool):
        missing = [v.path for v in model.trainable_variables if v.path not in params]
        if missing:
            raise ValueError(f"Expected a value for every trainable variable of the model. "
                             f"Received: params without {missing[:3]}")
        trainable = [params[v.path] for v in model.trainable_variables]
        non_trainable = [state[v.path] if state is not None and v.path in state and _is_float(v) else v.value
                         for v in model.non_trainable_variables]
        kwargs = {"training": training} if _takes_training(model) else {}
        with _exact_moments():
            return model.stateless_call(trainable, non_trainable, x, **kwargs)

    def forward(self, params: dict, x, state: dict | None, mode: str):
        """``(y, new_state)``; ``mode`` is one of :data:`MODES`.

        ``"train"``: ``training=True`` (batch norm on batch statistics; the
        updated moving statistics come back as ``new_state``). ``"eval_batch"``:
        ``training=True`` with the updates dropped (Keras passes one training
        flag to every layer, so dropout is active too). ``"eval_running"``:
        ``training=False``, moving statistics from ``state`` (or the model's own).
        """
        self._check_dtype(x)
        y, new_values = self._call(self.model, params, x, state, mode != "eval_running")
        if mode != "train":
            return y, {}
        return y, {n: new_values[i] for n, i in zip(self.state_names, self._state_index)}

    def features(self, params: dict, x):
        """The input of the head layer (``training=True``, batch statistics)."""
        self._check_dtype(x)
        return self._call(self._body, params, x, None, True)[0]

    def head(self, params: dict, features):
        """The head layer on ``features`` (``training=True``)."""
        return self._call(self.head_layer, params, features, None, True)[0]

    def _probe(self) -> tuple[int, ...]:
        """Output shape (without batch) of a forward pass on a small batch; checks
        ``input_shape`` and, with a head, that the head is the last step."""
        dtype = self.model.trainable_variables[0].dtype if self.model.trainable_variables else "float32"
        x = tf.constant(np.random.default_rng(0).standard_normal((2, *self.input_shape)), dtype=dtype)
        params = {n: v.value for n, v in zip(self.param_names, self.model.trainable_variables)}
        try:
            y, _ = self._call(self.model, params, x, None, True)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
            raise ValueError(
                f"Expected input_shape to fit the model (a forward pass on a batch of shape "
                f"{tuple(x.shape)} failed: {str(exc).splitlines()[0]}). Received: "
                f"input_shape={self.input_shape}") from None
        if not tf.is_tensor(y):
            raise ValueError(f"Expected the model to return one tensor. Received: {type(y).__name__}")
        if self.head_layer is not None:
            split = self.head(params, self.features(params, x))
            if tuple(split.shape) != tuple(y.shape) or not np.allclose(split, y, rtol=1e-5, atol=1e-6):
                raise ValueError(
                    f"Expected the head layer {self.head_layer.name!r} to be the model's last step "
                    f"(model(x) == head(input of head)). Received: outputs that differ")
        return tuple(y.shape[1:])


def _is_float(variable) -> bool:
    return str(variable.dtype).startswith(("float", "bfloat"))


def _paths(variables) -> list[str]:
    names = [v.path for v in variables]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"Expected unique variable paths in the Keras model. Received: duplicates {dup[:3]}")
    return names


def _takes_training(layer) -> bool:
    return "training" in inspect.signature(layer.call).parameters


def _input_shape(model: keras.Model, given) -> tuple[int, ...]:
    """``given`` (already checked by the front), or the model's own input shape when it has one."""
    if given is not None:
        return tuple(given)
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs and len(inputs) == 1 and all(isinstance(s, int) for s in inputs[0].shape[1:]):
        return tuple(int(s) for s in inputs[0].shape[1:])
    raise ValueError("Expected input_shape=(...) (without the batch axis): the model has no single input "
                     "of known shape. Received: input_shape=None")


def _split(model: keras.Model, head: str):
    """``(head layer, model from the inputs to the head's input)``."""
    try:
        layer = model.get_layer(head)
    except ValueError:
        names = [lyr.name for lyr in model.layers]
        raise ValueError(f"Expected head to name a layer of the model (layers: {names}). "
                         f"Received: head={head!r}") from None
    if not layer.trainable_variables:
        raise ValueError(f"Expected head to name a layer with trainable weights. Received: head={head!r}")
    try:
        body = keras.Model(model.inputs, layer.input)
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"Expected a Sequential or functional model to split at its head (a subclassed "
                         f"model cannot be). Received: {type(model).__name__} ({exc})") from None
    return layer, body


def _layer_prefix(layer, head: str) -> str:
    paths = [v.path for v in layer.trainable_variables]
    prefix = os.path.commonprefix([p.rsplit("/", 1)[0] + "/" for p in paths])
    if not prefix.endswith("/"):
        raise ValueError(f"Expected the head's variables under one path. "
                         f"Received: head={head!r} with {paths}")
    return prefix


# ---- export ----------------------------------------------------------------------------------
def export(model: keras.Model, values: dict[str, np.ndarray]) -> None:
    """Assign numpy ``values`` (already checked by the caller) to ``model``'s
    variables of the same paths, in place, in their own dtype."""
    own = {v.path: v for v in model.variables}
    for name, value in values.items():
        own[name].assign(np.asarray(value, dtype=own[name].dtype))


def current_values(model: keras.Model, names) -> dict[str, np.ndarray]:
    """The model's variables ``names`` as numpy."""
    own = {v.path: v for v in model.variables}
    return {n: np.array(own[n].numpy()) for n in names}


# ---- built-in model -> keras.Model ----------------------------------------------------------------
def build(spec: dict, params: dict[str, np.ndarray], state: dict | None) -> keras.Model:
    """A ``keras.Sequential`` computing the built-in model ``spec`` with ``params``.

    Conv4 takes NHWC images. Its batch norm is ``BatchNormalization``
    (epsilon 1e-5, momentum 0.9): called with ``training=True``, batch
    statistics, as metabridge's ``model(params, x)``; with ``training=False``
    (Keras' default, ``predict``) the moving statistics from ``state`` (zeros
    and ones without one).
    """
    dtype = str(next(iter(params.values())).dtype)
    if spec["kind"] == "mlp":
        model = keras.Sequential([keras.Input((spec["sizes"][0],), dtype=dtype)], name="mlp")
        n = len(spec["sizes"]) - 1
        for i in range(1, n + 1):
            model.add(keras.layers.Dense(spec["sizes"][i], activation=spec["activation"] if i < n else None,
                                         dtype=dtype, name=f"dense{i}"))
            model.get_layer(f"dense{i}").set_weights([params[f"dense{i}.kernel"], params[f"dense{i}.bias"]])
        return model
    model = keras.Sequential([keras.Input(spec["input_shape"], dtype=dtype)], name="conv4")
    for i in range(1, 5):
        kernel = params[f"conv{i}.kernel"]
        model.add(keras.layers.Conv2D(kernel.shape[3], kernel.shape[:2], strides=spec["stride"],
                                      padding="same", dtype=dtype, name=f"conv{i}"))
        model.add(keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=dtype, name=f"bn{i}"))
        model.add(keras.layers.ReLU(dtype=dtype, name=f"relu{i}"))
        if spec["pools"][i - 1]:
            model.add(keras.layers.MaxPooling2D(2, dtype=dtype, name=f"pool{i}"))
        mean = state[f"bn{i}.running_mean"] if state is not None else np.zeros(kernel.shape[3], dtype)
        var = state[f"bn{i}.running_var"] if state is not None else np.ones(kernel.shape[3], dtype)
        model.get_layer(f"conv{i}").set_weights([kernel, params[f"conv{i}.bias"]])
        model.get_layer(f"bn{i}").set_weights([params[f"bn{i}.scale"], params[f"bn{i}.offset"], mean, var])
    if spec["strided"]:
        model.add(keras.layers.GlobalAveragePooling2D(dtype=dtype, name="mean"))
    else:
        model.add(keras.layers.Flatten(dtype=dtype, name="flatten"))
    if "head.kernel" in params:
        model.add(keras.layers.Dense(params["head.kernel"].shape[1], dtype=dtype, name="head"))
        model.get_layer("head").set_weights([params["head.kernel"], params["head.bias"]])
    return model


# ---- saving --------------------------------------------------------------------------------------------
def save(model: keras.Model, fh: BinaryIO) -> None:
    """A ``.keras`` archive of ``model`` written to the open binary file ``fh``
    (``keras.models.load_model`` reads it back without metabridge)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)  # the public saver takes a path, not a file object
        with open(path, "rb") as src:
            shutil.copyfileobj(src, fh)
