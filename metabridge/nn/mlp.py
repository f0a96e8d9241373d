"""Multi-layer perceptron."""
from __future__ import annotations

from typing import Sequence

from metabridge import ops
from metabridge.nn.base import Model, dense, dense_tasks

_ACTIVATIONS = {"relu": ops.relu, "tanh": ops.tanh, "sigmoid": ops.sigmoid}


class MLP(Model):
    """Dense layers ``sizes[0] -> ... -> sizes[-1]``, activation between them.

    >>> model = MLP([1, 40, 40, 1])
    >>> sorted(model.param_shapes().items())[0]
    ('dense1.bias', (40,))
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu"):
        if (not isinstance(sizes, (list, tuple)) or len(sizes) < 2
                or not all(isinstance(s, int) and s > 0 for s in sizes)):
            raise ValueError(f"Expected sizes to be at least two positive ints. Received: sizes={sizes!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"Expected activation in {tuple(_ACTIVATIONS)}. Received: activation={activation!r}"
            )
        self.sizes = list(sizes)
        self.activation = activation
        self.input_shape = (sizes[0],)

    def param_shapes(self):
        shapes = {}
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), start=1):
            shapes[f"dense{i}.kernel"] = (a, b)
            shapes[f"dense{i}.bias"] = (b,)
        return shapes

    @property
    def head_prefix(self) -> str:
        """Name prefix of the last dense layer, the head (for ANIL)."""
        return f"dense{len(self.sizes) - 1}."

    def features(self, params: dict, x):
        """Activations entering the last dense layer."""
        act = _ACTIVATIONS[self.activation]
        for i in range(1, len(self.sizes) - 1):
            x = act(dense(params, f"dense{i}", x))
        return x

    def head(self, params: dict, features):
        """The last dense layer on ``features``."""
        return dense(params, self.head_prefix[:-1], features)

    def _forward(self, params, x, state, training):
        return self.head(params, self.features(params, x)), {}

    task_batched = True

    def apply_tasks(self, params: dict, x):
        """The MLP for ``T`` parameter sets at once (see :meth:`Model.apply_tasks`):
        ``[T, n, sizes[0]] -> [T, n, sizes[-1]]``, batched matrix products.

        >>> stacked = {k: ops.broadcast_to(ops.asarray(v), (4,) + v.shape) for k, v in p.items()}  # doctest: +SKIP
        >>> model.apply_tasks(stacked, x).shape     # x: [4, n, 1]                 # doctest: +SKIP
        (4, n, 1)
        """
        act = _ACTIVATIONS[self.activation]
        x = ops.asarray(x)
        got = tuple(ops.shape(x))
        if len(got) != 3 or got[2] != self.sizes[0]:
            raise ValueError(f"Expected x of shape (tasks, batch, {self.sizes[0]}) for MLP.apply_tasks. "
                             f"Received: x.shape={got}")
        last = len(self.sizes) - 1
        for i in range(1, last):
            x = act(dense_tasks(params, f"dense{i}", x))
        return dense_tasks(params, f"dense{last}", x)
