"""Native torch models in metabridge, and metabridge models as native torch.

Mirrors ``backends/tensorflow/native.py`` (Keras models) name for name; the
framework-free front is :mod:`metabridge.native`.

- :class:`Adapter` runs a user's ``torch.nn.Module`` as a pure function of a
  params dict with ``torch.func.functional_call``. Buffers are cloned on every
  call, so batch norm in train mode updates the clones (returned as the new
  state), never the module's own buffers.
- :func:`export` writes numpy values into a module's parameters and buffers.
- :func:`build` makes an ``nn.Sequential`` equal to a built-in MLP or Conv4.
- :func:`save` writes TorchScript, loadable with ``torch.jit.load`` alone.
"""
from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from metabridge.backends.torch.device import native_device

FRAMEWORK = "torch"
MODES = ("train", "eval_batch", "eval_running")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def is_native(obj) -> bool:
    """Whether ``obj`` is a model of this framework (a ``torch.nn.Module``)."""
    return isinstance(obj, nn.Module)


def variable_names(module: nn.Module) -> tuple[list[str], list[str]]:
    """``(param names, state names)``: parameters with ``requires_grad``; then
    floating-point buffers (batch-norm running statistics) and frozen parameters."""
    named = list(module.named_parameters())
    params = [n for n, p in named if p.requires_grad]
    state = [n for n, b in module.named_buffers() if b.is_floating_point()]
    return params, state + [n for n, p in named if not p.requires_grad]


class _HeadInput(Exception):
    """Raised by a pre-hook on the head to stop the forward pass at its input."""

    def __init__(self, value):
        super().__init__("head input captured")
        self.value = value


class Adapter:
    """A ``torch.nn.Module`` as ``forward(params, x, state, mode) -> (y, new_state)``.

    ``params`` are the parameters with ``requires_grad`` (``named_parameters``
    names); ``state`` holds the other floating-point tensors: buffers such as
    batch-norm running statistics and frozen parameters. Integer buffers
    (``num_batches_tracked``) stay outside ``state``; a clone of the module's
    own is passed each call, so torch's cumulative averaging (``momentum=None``)
    counts from the module's count.
    """

    def __init__(self, module: nn.Module, input_shape, head: str | None):
        self.module = self.native = module
        self.param_names, self.state_names = variable_names(module)
        self._constants = [n for n, b in module.named_buffers() if not b.is_floating_point()]
        self.input_shape = _input_shape(module, input_shape)
        self._inferred = input_shape is None
        self.head_module, self.head_prefix = None, None
        if head is not None:
            self.head_module = _submodule(module, head)
            self.head_prefix = head + "."
        self.output_shape = self._probe()

    # ---- values ------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        values = dict(self.module.named_parameters())
        return {n: tuple(values[n].shape) for n in self.param_names}

    def param_values(self) -> dict[str, np.ndarray]:
        values = dict(self.module.named_parameters())
        return {n: values[n].detach().cpu().numpy() for n in self.param_names}

    def state_values(self) -> dict[str, np.ndarray]:
        values = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
        return {n: values[n].detach().cpu().numpy() for n in self.state_names}

    # ---- forward -----------------------------------------------------------------------
    def _tensors(self, params: dict, state: dict | None, dtype, device) -> dict:
        """Everything ``functional_call`` needs, as fresh tensors (clones for buffers)."""
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ValueError(f"Expected a value for every trainable parameter of the module. "
                             f"Received: params without {missing[:3]}")
        own = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
        tensors = {n: params[n] for n in self.param_names}
        for name in self.state_names:
            source = state[name] if state is not None and name in state else own[name]
            tensors[name] = source.detach().to(device=device, dtype=dtype).clone()
        for name in self._constants:
            tensors[name] = own[name].detach().to(device=device).clone()
        return tensors

    def forward(self, params: dict, x, state: dict | None, mode: str):
        """``(y, new_state)``; ``mode`` is one of :data:`MODES`.

        ``"train"``: every module in train mode (batch norm on batch statistics;
        the updated running statistics come back as ``new_state``).
        ``"eval_batch"``: eval mode except batch-norm layers, which use batch
        statistics (their updates are dropped). ``"eval_running"``: eval mode,
        running statistics from ``state`` (or the module's own).
        """
        tensors = self._tensors(params, state, x.dtype, x.device)
        with _modes(self.module, mode):
            y = functional_call(self.module, tensors, (x,))
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"Expected the module to return one tensor. Received: {type(y).__name__}")
        new_state = {n: tensors[n] for n in self.state_names} if mode == "train" else {}
        return y, new_state

    def features(self, params: dict, x):
        """The input of the head submodule (train mode, batch statistics)."""
        def stop(_module, args):
            raise _HeadInput(args[0])

        handle = self.head_module.register_forward_pre_hook(stop)
        try:
            self.forward(params, x, None, "train")
        except _HeadInput as captured:
            return captured.value
        finally:
            handle.remove()
        raise ValueError(f"Expected the module's forward to call its head {self.head_prefix[:-1]!r}. "
                         f"Received: a forward pass that never did")

    def head(self, params: dict, features):
        """The head submodule on ``features`` (train mode)."""
        cut = len(self.head_prefix)
        local = {k[cut:]: v for k, v in params.items() if k.startswith(self.head_prefix)}
        own = dict(self.head_module.named_buffers())
        for name, buf in own.items():
            local[name] = buf.detach().to(device=features.device).clone()
        with _modes(self.head_module, "train"):
            return functional_call(self.head_module, local, (features,))

    def _probe(self) -> tuple[int, ...]:
        """Output shape (without batch) of a forward pass on a small batch; checks
        ``input_shape`` and, with a head, that the head is the last step."""
        try:
            first = next(iter(self.module.parameters()))
            dtype, device = first.dtype, first.device
        except StopIteration:
            dtype, device = torch.get_default_dtype(), native_device()
        x = torch.as_tensor(np.random.default_rng(0).standard_normal((2, *self.input_shape)),
                            dtype=dtype, device=device)
        params = dict(self.module.named_parameters())
        params = {n: params[n].detach() for n in self.param_names}
        with torch.no_grad():
            try:
                tensors = self._tensors(params, None, dtype, device)
                with _modes(self.module, "train"):
                    y = functional_call(self.module, tensors, (x,))
            except (RuntimeError, ValueError, TypeError) as exc:
                how = " (inferred from the first nn.Linear; pass input_shape=...)" if self._inferred else ""
                raise ValueError(
                    f"Expected input_shape to fit the module (a forward pass on a batch of shape "
                    f"{tuple(x.shape)} failed: {str(exc).splitlines()[0]}). Received: "
                    f"input_shape={self.input_shape}{how}") from None
            if not isinstance(y, torch.Tensor):
                raise ValueError(f"Expected the module to return one tensor. Received: {type(y).__name__}")
            if self.head_module is not None:
                split = self.head(params, self.features(params, x))
                if split.shape != y.shape or not torch.allclose(split, y, rtol=1e-5, atol=1e-6):
                    raise ValueError(
                        f"Expected the head {self.head_prefix[:-1]!r} to be the module's last step "
                        f"(module(x) == head(input of head)). Received: outputs that differ")
        return tuple(y.shape[1:])


@contextlib.contextmanager
def _modes(module: nn.Module, mode: str) -> Iterator[None]:
    """Set train/eval flags for ``mode``; restore every module's own flag after."""
    saved = [(m, m.training) for m in module.modules()]
    try:
        module.train(mode == "train")
        if mode == "eval_batch":
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(True)
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _submodule(module: nn.Module, name: str) -> nn.Module:
    try:
        sub = module.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in module.named_children()]
        raise ValueError(f"Expected head to name a submodule of the module (children: {names}). "
                         f"Received: head={name!r}") from None
    if sub is module or not any(True for _ in sub.parameters()):
        raise ValueError(f"Expected head to name a submodule with parameters. Received: head={name!r}")
    return sub


def _input_shape(module: nn.Module, given) -> tuple[int, ...]:
    """``given`` (already checked by the front), or ``(in_features,)`` when the first layer is ``nn.Linear``."""
    if given is not None:
        return tuple(given)
    for m in module.modules():
        if any(True for _ in m.parameters(recurse=False)):
            if isinstance(m, nn.Linear):
                return (m.in_features,)
            raise ValueError(
                f"Expected input_shape=(...) (without the batch axis): it cannot be inferred from a "
                f"first layer {type(m).__name__}. Received: input_shape=None")
    raise ValueError("Expected input_shape=(...) for a module without parameters. Received: input_shape=None")


# ---- export ---------------------------------------------------------------------------------
def export(module: nn.Module, values: dict[str, np.ndarray]) -> None:
    """Copy numpy ``values`` (already checked by the caller) into ``module``'s
    parameters and buffers of the same names, in place, in their own dtype."""
    own = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    with torch.no_grad():
        for name, value in values.items():
            target = own[name]
            target.copy_(torch.as_tensor(np.asarray(value), dtype=target.dtype, device=target.device))


def current_values(module: nn.Module, names) -> dict[str, np.ndarray]:
    """The module's parameters/buffers ``names`` as numpy."""
    own = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {n: own[n].detach().cpu().numpy() for n in names}


# ---- built-in model -> nn.Module --------------------------------------------------------------
def build(spec: dict, params: dict[str, np.ndarray], state: dict | None) -> nn.Module:
    """An ``nn.Sequential`` computing the built-in model ``spec`` with ``params``.

    Conv4 takes NCHW images (torch's layout). Its batch norm is ``nn.BatchNorm2d``
    (epsilon 1e-5, momentum 0.1): in train mode (the module's mode on return)
    batch statistics, as metabridge's ``model(params, x)``; in eval mode the
    running statistics from ``state`` (zeros and ones without one). The head's
    weight columns are reordered so that torch's channel-first flatten sees
    metabridge's height-width-channel feature order.
    """
    dtype = _DTYPES[str(next(iter(params.values())).dtype)]
    if spec["kind"] == "mlp":
        layers = _mlp_layers(spec, params, dtype)
    else:
        layers = _conv4_layers(spec, params, state, dtype)
    return nn.Sequential(*layers).to(device=native_device()).train()


def _tensor(value) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(value))


def _linear(kernel: np.ndarray, bias: np.ndarray, dtype: torch.dtype) -> nn.Linear:
    layer = nn.Linear(kernel.shape[0], kernel.shape[1], dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(_tensor(kernel.T))
        layer.bias.copy_(_tensor(bias))
    return layer


def _mlp_layers(spec: dict, params: dict, dtype: torch.dtype) -> list[nn.Module]:
    layers: list[nn.Module] = []
    n = len(spec["sizes"]) - 1
    for i in range(1, n + 1):
        layers.append(_linear(params[f"dense{i}.kernel"], params[f"dense{i}.bias"], dtype))
        if i < n:
            layers.append(_ACTIVATIONS[spec["activation"]]())
    return layers


def _conv4_layers(spec: dict, params: dict, state: dict | None, dtype: torch.dtype) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, ((top, bottom), (left, right)) in enumerate(spec["pads"], start=1):
        kernel = params[f"conv{i}.kernel"]
        symmetric = top == bottom and left == right
        if not symmetric:  # TensorFlow's "same" pads more at the bottom/right for stride 2
            layers.append(nn.ZeroPad2d((left, right, top, bottom)))
        conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], stride=spec["stride"],
                         padding=(top, left) if symmetric else 0, dtype=dtype)
        bn = nn.BatchNorm2d(kernel.shape[3], eps=1e-5, momentum=0.1, dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(_tensor(kernel.transpose(3, 2, 0, 1)))  # HWIO -> OIHW
            conv.bias.copy_(_tensor(params[f"conv{i}.bias"]))
            bn.weight.copy_(_tensor(params[f"bn{i}.scale"]))
            bn.bias.copy_(_tensor(params[f"bn{i}.offset"]))
            if state is not None:
                bn.running_mean.copy_(_tensor(state[f"bn{i}.running_mean"]))
                bn.running_var.copy_(_tensor(state[f"bn{i}.running_var"]))
        layers += [conv, bn, nn.ReLU()]
        if spec["pools"][i - 1]:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if spec["strided"] else [nn.Flatten()]
    if "head.kernel" in params:
        kernel = params["head.kernel"]
        if not spec["strided"]:
            h, w, c = spec["final_hwc"]
            kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
        layers.append(_linear(kernel, params["head.bias"], dtype))
    return layers


# ---- saving ---------------------------------------------------------------------------------------
def save(module: nn.Module, fh: BinaryIO) -> None:
    """TorchScript of ``module`` written to the open binary file ``fh``
    (``torch.jit.load`` reads it back without metabridge)."""
    try:
        scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    except Exception as exc:  # TorchScript raises several unrelated types
        raise ValueError(
            f"Expected a module torch.jit.script can compile (or one already traced with "
            f"torch.jit.trace). Received: {type(module).__name__} ({str(exc).splitlines()[0]})") from None
    torch.jit.save(scripted, fh)
