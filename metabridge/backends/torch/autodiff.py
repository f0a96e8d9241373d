"""Gradients for the PyTorch backend: ``value_and_grad`` over a params dict.

Nesting works like TensorFlow's nested tapes: an inner call with
``create_graph=True`` keeps the graph of its gradients, so an outer call
differentiates through them (true second order). While any call is active,
graphs are retained, since an inner backward pass must not free buffers the
outer one still needs.
"""
from __future__ import annotations

import contextvars
from typing import Any, Callable

import torch

from metabridge.backends.torch import ops

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("mb_torch_grad_depth", default=0)


def value_and_grad(fn: Callable, create_graph: bool = False, has_aux: bool = False) -> Callable:
    """``fn(params, *args) -> scalar`` becomes ``g(params, *args) -> (value, grads)``.

    With ``has_aux`` ``fn`` returns ``(scalar, aux)`` and ``g`` returns
    ``((value, aux), grads)``.
    """

    def wrapped(params: dict, *args: Any, **kwargs: Any):
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


def compile_function(fn: Callable) -> Callable:
    """The compiled path. On torch this runs ``fn`` eagerly, on purpose:
    ``torch.compile`` cannot trace double backward (second-order MAML), and
    eager torch already matches a hand-written loop (see benchmarks/)."""
    return fn


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
