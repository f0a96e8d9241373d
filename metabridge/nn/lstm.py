"""An LSTM cell written once with ops (used by Matching networks' full context
embeddings), so it is the same on both backends."""
from __future__ import annotations

from metabridge import ops


def lstm_param_shapes(prefix: str, inputs: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """Shapes of one cell: ``kernel`` ``[inputs + hidden, 4 * hidden]`` (gates in the
    order input, forget, cell, output) and ``bias`` ``[4 * hidden]``."""
    return {f"{prefix}.kernel": (inputs + hidden, 4 * hidden), f"{prefix}.bias": (4 * hidden,)}


def lstm_cell(params: dict, prefix: str, x, h, c):
    """One step: ``z = [x, h] @ kernel + bias``; ``i, f, g, o = split(z)``;
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``; ``h' = sigmoid(o) * tanh(c')``.
    Returns ``(h', c')``.

    >>> h, c = lstm_cell(params, "fce.fw", x, h, c)      # doctest: +SKIP
    """
    z = ops.matmul(ops.concat([x, h], axis=-1), params[f"{prefix}.kernel"]) + params[f"{prefix}.bias"]
    n = ops.shape(h)[-1]
    i, f, g, o = (z[..., k * n:(k + 1) * n] for k in range(4))
    c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
    return ops.sigmoid(o) * ops.tanh(c), c
