"""The clone-and-adapt object API (learn2learn style) over the MAML family.

``maml.clone(params)`` returns a :class:`Learner` holding a params dict; each
``learner.adapt(loss)`` takes ONE inner step with the algorithm's own update
(``inner_keys`` / ``inner_update``: all parameters for MAML, ``lr.<name>``
rates for Meta-SGD, the head for ANIL); ``learner(x)`` runs the model with
the adapted parameters. Nothing is modified in place, so inside
:func:`metabridge.ops.value_and_grad` the meta-gradient flows through every
``adapt`` (second order unless the algorithm is first order).

>>> from metabridge import ops
>>> from metabridge.algorithms import MAML
>>> from metabridge.nn import MLP
>>> maml = MAML(MLP([1, 40, 1]), inner_lr=0.01, loss="mse")
>>> def task_loss(params, sx, sy, qx, qy):                      # doctest: +SKIP
...     learner = maml.clone(params)
...     learner.adapt(lambda l: ops.mse(l(sx), sy))
...     return ops.mse(learner(qx), qy)
>>> loss, grads = ops.value_and_grad(task_loss)(params, sx, sy, qx, qy)   # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Union

from metabridge import backend, config, ops
from metabridge.algorithms.common import stop_unless

if TYPE_CHECKING:
    from metabridge.algorithms.maml import MAML

LossFn = Callable[["Learner"], object]


class Learner:
    """A model with its own (adaptable) parameters, made by ``maml.clone(params)``.

    >>> learner = maml.clone(params)                          # doctest: +SKIP
    >>> learner.adapt(lambda l: ops.cross_entropy(l(sx), sy))  # one inner step
    >>> logits = learner(qx)                                   # adapted forward
    >>> learner.params                                         # the adapted dict
    """

    def __init__(self, algorithm: "MAML", params: Mapping):
        for hook in ("model", "inner_keys", "inner_update", "first_order"):
            if not hasattr(algorithm, hook):
                raise ValueError(
                    "Expected a MAML-family algorithm (MAML, MetaSGD, ANIL) with inner_keys and "
                    f"inner_update. Received: {type(algorithm).__name__}"
                )
        if not isinstance(params, Mapping):
            raise ValueError(f"Expected params to be a dict of name -> tensor (e.g. model.init(seed)). "
                             f"Received: {type(params).__name__}")
        shapes = algorithm.model.param_shapes()
        missing = [k for k in shapes if k not in params]
        if missing:
            raise ValueError(f"Expected params with every parameter of {type(algorithm.model).__name__}. "
                             f"Received: params missing {missing[:3]}"
                             + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        tensors = {k: ops.asarray(v) for k, v in params.items()}
        for k, shape in shapes.items():
            got = tuple(ops.shape(tensors[k]))
            if got != tuple(shape):
                raise ValueError(f"Expected params[{k!r}] of shape {tuple(shape)}. Received: shape {got}")
        algorithm.inner_keys(tensors)  # the algorithm's own checks (Meta-SGD's rates)
        self.algorithm = algorithm
        self._params = tensors

    @classmethod
    def _unchecked(cls, algorithm: "MAML", params: dict) -> "Learner":
        """A learner over already checked tensors (clones and the views ``adapt`` passes)."""
        learner = cls.__new__(cls)
        learner.algorithm, learner._params = algorithm, params
        return learner

    @property
    def params(self) -> dict:
        """The current (adapted) parameters, a new dict of tensors (Meta-SGD's ``lr.*`` included)."""
        return dict(self._params)

    @property
    def model(self):
        """The algorithm's model."""
        return self.algorithm.model

    def __call__(self, x):
        """The model's output for batch ``x`` with the current parameters (batch statistics).

        >>> logits = learner(query_x)        # doctest: +SKIP
        """
        return self.algorithm.model(self._params, x)

    def clone(self) -> "Learner":
        """An independent learner starting from this one's current parameters.

        >>> start = learner.clone(); start.adapt(loss_fn)   # learner itself is unchanged  # doctest: +SKIP
        """
        return Learner._unchecked(self.algorithm, dict(self._params))

    def adapt(self, loss: Union[LossFn, object], first_order: bool | None = None) -> "Learner":
        """One inner step of the algorithm on ``loss``; returns ``self``.

        ``loss`` is a function ``loss_fn(learner) -> scalar`` (both backends), or
        on PyTorch also a scalar loss tensor computed from this learner (as in
        learn2learn; its gradient comes from ``torch.autograd.grad``).
        ``first_order`` overrides the algorithm's setting for this step.

        >>> learner.adapt(lambda l: ops.cross_entropy(l(support_x), support_y))   # doctest: +SKIP
        >>> learner.adapt(ops.cross_entropy(learner(support_x), support_y))   # torch  # doctest: +SKIP
        """
        if first_order is not None and not isinstance(first_order, bool):
            raise ValueError(f"Expected first_order True, False or None. "
                             f"Received: first_order={first_order!r}")
        create_graph = not (self.algorithm.first_order if first_order is None else first_order)
        keys = self.algorithm.inner_keys(self._params)
        if ops.is_tensor(loss):
            if not backend.record(config.get_backend()).loss_tensor_grads:
                raise ValueError(f"Expected a loss function on the {config.get_backend()} backend (it cannot "
                                 "differentiate a finished tensor; pass loss_fn(learner) -> scalar instead). "
                                 f"Received: a tensor ({type(loss).__name__})")
            _check_scalar(loss, "the loss tensor")
            adapted = {k: self._params[k] for k in keys}
            grads = ops.grad_of_loss_tensor(loss, adapted, create_graph=create_graph)
        elif callable(loss):
            grads = self._grads_of_function(loss, keys, create_graph)
        else:
            raise ValueError("Expected a loss function loss_fn(learner) -> scalar, or a loss tensor (torch). "
                             f"Received: {type(loss).__name__}")
        grads = stop_unless(grads, create_graph)
        self._params = {**self._params, **self.algorithm.inner_update(self._params, grads)}
        return self

    def _grads_of_function(self, loss_fn: LossFn, keys: list, create_graph: bool) -> dict:
        frozen, algorithm = self._params, self.algorithm

        def loss_of_adapted(sub: dict):
            value = loss_fn(Learner._unchecked(algorithm, {**frozen, **sub}))
            _check_scalar(value, "loss_fn(learner)")
            return value

        return ops.value_and_grad(loss_of_adapted, create_graph=create_graph)({k: frozen[k] for k in keys})[1]

    def __repr__(self) -> str:
        return f"Learner({type(self.algorithm).__name__}, {len(self._params)} parameters)"


def _check_scalar(value, what: str) -> None:
    if not ops.is_tensor(value):
        raise ValueError(f"Expected {what} to be a scalar tensor. Received: {type(value).__name__}")
    if tuple(ops.shape(value)) != ():
        raise ValueError(f"Expected {what} to be a scalar tensor. Received: shape {tuple(ops.shape(value))}")
