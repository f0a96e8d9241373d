"""Gradients for the PyTorch backend: ``value_and_grad`` over a params dict.

Nesting works like TensorFlow's nested tapes: an inner call with
``create_graph=True`` keeps the graph of its gradients, so an outer call
differentiates through them (true second order). While any call is active,
graphs are retained, since an inner backward pass must not free buffers the
outer one still needs.

While ``torch.compile`` traces (a whole-step compiled function,
:func:`compile_function` with ``whole_step=True``) gradients come from
``torch.func.grad`` instead: it nests the same way (second order), and unlike
``autograd.grad`` TorchDynamo can capture it, so Inductor sees the
meta-gradient and the optimizer step as one graph.
"""
from __future__ import annotations

import contextvars
import warnings
from typing import Any, Callable

import torch

from metabridge import config
from metabridge.backends.torch import ops

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("mb_torch_grad_depth", default=0)
# config.pinned() holds the backend and floatx for Dynamo, which reads them while it traces.
config._tracing = torch.compiler.is_compiling


def value_and_grad(fn: Callable, create_graph: bool = False, has_aux: bool = False) -> Callable:
    """``fn(params, *args) -> scalar`` becomes ``g(params, *args) -> (value, grads)``.

    With ``has_aux`` ``fn`` returns ``(scalar, aux)`` and ``g`` returns
    ``((value, aux), grads)``.
    """

    def wrapped(params: dict, *args: Any, **kwargs: Any):
        if torch.compiler.is_compiling():
            return _func_value_and_grad(fn, create_graph, has_aux, params, args, kwargs)
        depth = _depth.get()
        inputs = {}
        for key, value in params.items():
            tensor = value if isinstance(value, torch.Tensor) else ops.asarray(value)
            if not tensor.requires_grad:
                tensor = tensor.detach().requires_grad_(True)
            inputs[key] = tensor
        token = _depth.set(depth + 1)
        try:
            with torch.enable_grad():
                out = fn(inputs, *args, **kwargs)
                value, aux = out if has_aux else (out, None)
                grads = torch.autograd.grad(
                    value,
                    list(inputs.values()),
                    create_graph=create_graph,
                    retain_graph=create_graph or depth > 0,
                    allow_unused=True,
                )
        finally:
            _depth.reset(token)
        grad_dict = {
            k: (torch.zeros_like(t) if g is None else g) for (k, t), g in zip(inputs.items(), grads)
        }
        if depth == 0 and not create_graph:
            value = value.detach()
            if aux is not None:
                aux = _detach_tree(aux)
        return ((value, aux) if has_aux else value), grad_dict

    return wrapped


def _func_value_and_grad(fn, create_graph: bool, has_aux: bool, params: dict, args, kwargs):
    """:func:`value_and_grad`'s result through ``torch.func.grad`` (compiled path)."""
    inputs = {k: (v if isinstance(v, torch.Tensor) else ops.asarray(v)) for k, v in params.items()}

    def value_and_out(p):
        out = fn(p, *args, **kwargs)
        return (out[0] if has_aux else out), out

    grads, out = torch.func.grad(value_and_out, has_aux=True)(inputs)
    if not create_graph:
        grads = {k: g.detach() for k, g in grads.items()}
    return out, grads


def grad_of_loss_tensor(loss, params: dict, create_graph: bool = False) -> dict:
    """Gradients of an already computed scalar ``loss`` with respect to ``params``.

    ``params`` are tensors ``loss`` was computed from, with a graph to them
    (inside :func:`value_and_grad`, or leaves with ``requires_grad``). With
    ``create_graph`` the gradients keep their graph (second order). Inside an
    outer ``value_and_grad`` the loss's graph is kept for the outer pass.
    Parameters the loss does not use get zero gradients.
    """
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"Expected a scalar loss tensor. Received: {got}")
    cut = [k for k, t in params.items() if not (isinstance(t, torch.Tensor) and t.requires_grad)]
    if not loss.requires_grad or cut:
        raise ValueError(
            "Expected a loss tensor with a graph back to the parameters (compute it inside "
            "ops.value_and_grad, or pass a loss function instead). Received: "
            + (f"parameters without gradients {cut[:3]}" if cut else "a loss tensor with no graph")
        )
    if torch.compiler.is_compiling():
        raise ValueError("Expected a loss function inside a compiled whole step (torch.compile cannot "
                         "differentiate a finished tensor). Received: a tensor")
    inputs = list(params.values())
    grads = torch.autograd.grad(loss, inputs, create_graph=create_graph,
                                retain_graph=create_graph or _depth.get() > 0, allow_unused=True)
    if all(g is None for g in grads):  # e.g. a stale loss, or one computed from other parameters
        raise ValueError("Expected a loss computed from these parameters (the learner's current ones). "
                         "Received: a loss that uses none of them")
    return {k: (torch.zeros_like(t) if g is None else g) for (k, t), g in zip(params.items(), grads)}


def _detach_tree(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: _detach_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_detach_tree(v) for v in tree)
    return tree


def compile_function(fn: Callable, whole_step: bool = False) -> Callable:
    """The compiled path.

    By default ``fn`` runs eagerly, on purpose: ``torch.compile`` cannot trace
    ``autograd.grad`` (double backward, second-order MAML), compiling costs tens
    of seconds per function and shape, and eager torch already matches a
    hand-written loop (see benchmarks/). ``whole_step=True`` (a training step
    that runs thousands of times) compiles ``fn`` with ``torch.compile``
    (``fullgraph=True``, static shapes), differentiating with ``torch.func``
    while it runs (see the module docstring). The first call compiles: about
    25 s for sinusoid MAML's step, which then runs 3.8x faster (BENCHMARKS.md).

    >>> step = compile_function(train_step, whole_step=True)    # doctest: +SKIP
    """
    if not whole_step:
        return fn
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    state = {"eager": False}

    def run(*args: Any):
        if not state["eager"]:
            try:
                with config.pinned():
                    return compiled(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure; the eager run below re-raises user errors
                out = fn(*args)  # the step's own error, if it has one, comes from here, as without compiling
                state["eager"] = True
                cause = e.__cause__ or e
                warnings.warn(f"torch.compile could not compile the training step; it runs eagerly "
                              f"({type(e).__name__}: {type(cause).__name__}: {str(cause).splitlines()[0][:200]})",
                              RuntimeWarning, stacklevel=2)
                return out
        return fn(*args)

    run.whole_step = True
    return run


def while_loop(cond: Callable, body: Callable, loop_vars: tuple) -> tuple:
    """``while cond(*v): v = body(*v)`` as a Python loop (mirrors the TensorFlow
    backend's ``tf.while_loop``)."""
    while bool(cond(*loop_vars)):
        loop_vars = tuple(body(*loop_vars))
    return loop_vars


def sum_over_tasks(task_fn: Callable, arrays: tuple, n: int):
    """Sum the pytree ``task_fn(*[a[i] for a in arrays])`` over ``i < n``.

    Tasks run one after another, so memory holds one task's graph at a time.
    """
    total = None
    for i in range(n):
        out = task_fn(*[a[i] for a in arrays])
        total = out if total is None else _tree_add(total, out)
    return total


def _tree_add(a, b):
    if isinstance(a, dict):
        return {k: _tree_add(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return type(a)(_tree_add(x, y) for x, y in zip(a, b))
    return a + b
