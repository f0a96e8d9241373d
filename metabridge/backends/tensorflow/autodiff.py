"""Gradients for the TensorFlow backend: ``value_and_grad`` over a params dict.

Nesting is TensorFlow's own: an inner ``GradientTape`` records inside an outer
one, so with ``create_graph=True`` the outer tape differentiates through the
inner gradient (true second order). ``create_graph=False`` stops the gradient.
"""
from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from metabridge.backends.tensorflow import ops


def value_and_grad(fn: Callable, create_graph: bool = False, has_aux: bool = False) -> Callable:
    """``fn(params, *args) -> scalar`` becomes ``g(params, *args) -> (value, grads)``.

    With ``has_aux`` ``fn`` returns ``(scalar, aux)`` and ``g`` returns
    ``((value, aux), grads)``.
    """

    def wrapped(params: dict, *args: Any, **kwargs: Any):
        inputs = {k: (v if ops.is_tensor(v) else ops.asarray(v)) for k, v in params.items()}
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(list(inputs.values()))
            out = fn(inputs, *args, **kwargs)
            value, aux = out if has_aux else (out, None)
        grads = tape.gradient(
            value, list(inputs.values()), unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        # A gather inside fn yields IndexedSlices; callers get dense tensors, as on torch.
        grads = [tf.convert_to_tensor(g) for g in grads]
        if not create_graph:
            grads = [tf.stop_gradient(g) for g in grads]
        grad_dict = dict(zip(inputs.keys(), grads))
        return ((value, aux) if has_aux else value), grad_dict

    return wrapped


def grad_of_loss_tensor(loss, params: dict, create_graph: bool = False) -> dict:
    """Not possible on TensorFlow: a tape must watch the computation while it
    runs, so a finished loss tensor cannot be differentiated. Always raises a
    ``ValueError`` that says to pass a loss function instead (mirrors the torch
    backend's function of the same name)."""
    raise ValueError(
        "Expected a loss function on the tensorflow backend (TensorFlow cannot differentiate a "
        "finished tensor; pass loss_fn(learner) -> scalar instead). "
        f"Received: a tensor ({type(loss).__name__})"
    )


def compile_function(fn: Callable, whole_step: bool = False) -> Callable:
    """The compiled path: ``tf.function`` (results match eager mode).

    AutoGraph is off: metabridge code has no tensor-dependent Python control
    flow (the task loop is an explicit ``tf.while_loop``), and AutoGraph's
    source rewriting only adds tracing time. Shapes stay static (no
    ``reduce_retracing``): a new meta-batch size traces once more, and the task
    loop keeps a known trip count.

    ``whole_step=True`` (a training step called thousands of times with tensors
    only) calls the traced graph directly: ``tf.function``'s dispatch (matching
    the nested arguments to a trace) took 1.8 of sinusoid MAML's 3.3 ms a call.

    XLA (``jit_compile=True``) was measured and is not used: on CPU, for the
    second-order Conv4 MAML step of ``benchmarks/maml_overhead.py --xla``, it
    compiled for over a minute and ran many times slower per step than the plain
    graph (details in BENCHMARKS.md), and its float32 meta-gradient drifted
    further from eager mode than the plain graph's. For sinusoid MAML (a batched
    MLP meta-batch with the Adam step fused in) it was 4 % faster per step
    (4.93 against 5.15 ms), not worth a second compiler and its drift.

    >>> step = compile_function(train_step, whole_step=True)    # doctest: +SKIP
    """
    function = tf.function(fn, autograph=False)
    if not whole_step:
        return function
    traced: dict = {}

    def run(*args: Any):
        flat = tf.nest.flatten(args)
        if not all(isinstance(t, tf.Tensor) for t in flat):
            return function(*args)  # Python values take part in tracing: the general path
        key = (_structure(args), tuple((t.dtype, _shape(t)) for t in flat))
        concrete = traced.get(key)
        if concrete is None:
            concrete = traced[key] = function.get_concrete_function(*args)
        # ConcreteFunction._call_flat (private; it returns the structured outputs)
        # skips the argument matching: tf.function itself makes this call once
        # it has found the trace. tests/test_speed_paths.py checks it against tf.function.
        return concrete._call_flat(flat, concrete.captured_inputs)

    return run


def _shape(t) -> tuple:
    """An eager tensor's shape as a tuple (``_shape_tuple`` skips building a TensorShape)."""
    fast = getattr(t, "_shape_tuple", None)
    return fast() if fast is not None else tuple(t.shape)


def _structure(tree):
    """A hashable picture of a pytree's nesting (dict keys, sequence lengths)."""
    if isinstance(tree, dict):
        return tuple((k, _structure(tree[k])) for k in sorted(tree))
    if isinstance(tree, (list, tuple)):
        return (type(tree).__name__, tuple(_structure(v) for v in tree))
    return None


def while_loop(cond: Callable, body: Callable, loop_vars: tuple) -> tuple:
    """``while cond(*v): v = body(*v)``: ``tf.while_loop`` in a graph (one
    iteration at a time, so a loop of training steps runs in order), a Python
    loop eagerly."""
    if tf.executing_eagerly():
        while bool(cond(*loop_vars)):
            loop_vars = tuple(body(*loop_vars))
        return loop_vars
    return tuple(tf.while_loop(cond, lambda *v: tuple(body(*v)), loop_vars, parallel_iterations=1))


def sum_over_tasks(task_fn: Callable, arrays: tuple, n: int):
    """Sum the pytree ``task_fn(*[a[i] for a in arrays])`` over ``i < n``.

    Eagerly a Python loop. Inside ``tf.function`` a ``tf.while_loop`` that
    accumulates per-task results, so tracing costs one task, not ``n`` (an
    unrolled loop over 32 second-order MAML tasks takes minutes to trace).
    """
    if tf.executing_eagerly():
        total = None
        for i in range(n):
            out = task_fn(*[a[i] for a in arrays])
            total = out if total is None else tf.nest.map_structure(tf.add, total, out)
        return total
    # Trace one task once, as its own function, and loop over that: tracing the
    # first task outside the loop to learn the accumulator's shapes would trace
    # (and optimise) the whole second-order task twice.
    specs = [tf.TensorSpec(a.shape[1:], a.dtype) for a in arrays]
    one_task = tf.function(task_fn, autograph=False).get_concrete_function(*specs)
    zeros = tf.nest.map_structure(lambda t: tf.zeros(t.shape, t.dtype), one_task.structured_outputs)

    def body(i, acc):
        out = one_task(*[tf.gather(a, i) for a in arrays])
        return i + 1, tf.nest.map_structure(tf.add, acc, out)

    # Tasks may overlap (parallel_iterations); the accumulation stays in task order.
    _, total = tf.while_loop(lambda i, acc: i < n, body, (tf.constant(0), zeros), parallel_iterations=10)
    return total
