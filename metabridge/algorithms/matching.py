"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016).

A query's class distribution is an attention-weighted sum of the support
labels: ``P(y | x) = sum_i a(x, x_i) y_i`` with ``a`` the softmax over the
support of cosine similarities of embeddings. With ``fce=True`` (full context
embeddings) support embeddings pass through a bidirectional LSTM over the
support set (``g(x_i) = h_fw_i + h_bw_i + g'(x_i)``) and each query through an
attention LSTM run for ``fce_steps`` steps over the support (paper, appendix);
the LSTMs are written once with ops (:mod:`metabridge.nn.lstm`).
"""
from __future__ import annotations

import numpy as np

from metabridge import ops
from metabridge.algorithms.common import l2_normalize
from metabridge.algorithms.protonet import ProtoNet
from metabridge.nn.base import Model
from metabridge.nn.lstm import lstm_cell, lstm_param_shapes

_EPS = 1e-12


class MatchingNet(ProtoNet):
    """Matching networks over an embedding :class:`Model` with ``embedding_dim``
    or ``feature_dim`` (its output width). Training, evaluation and the
    compiled path are ProtoNet's, with these logits.

    >>> from metabridge.nn import Conv4
    >>> net = MatchingNet(Conv4(None, input_shape=(28, 28, 1)), fce=True)
    >>> params = net.init(seed=0)                 # encoder + LSTM parameters
    """

    def __init__(self, model: Model, fce: bool = False, fce_steps: int = 1, compiled: bool = False):
        super().__init__(model, distance="cosine", compiled=compiled)
        if not isinstance(fce_steps, int) or isinstance(fce_steps, bool) or fce_steps < 1:
            raise ValueError(f"Expected fce_steps >= 1. Received: fce_steps={fce_steps!r}")
        width = getattr(model, "embedding_dim", None) or getattr(model, "feature_dim", None)
        if width is None and hasattr(model, "sizes"):
            width = model.sizes[-1]
        if fce and width is None:
            raise ValueError(f"Expected an embedding model with a known width for fce=True. "
                             f"Received: {type(model).__name__}")
        self.fce, self.fce_steps, self.width = bool(fce), fce_steps, width

    def param_shapes(self) -> dict:
        shapes = dict(self.model.param_shapes())
        if self.fce:
            d = self.width
            shapes.update(lstm_param_shapes("fce.fw", d, d))
            shapes.update(lstm_param_shapes("fce.bw", d, d))
            shapes.update(lstm_param_shapes("fce.att", d, d))
        return shapes

    def init(self, seed: int) -> dict:
        """Encoder parameters from ``seed``; LSTM kernels Glorot-uniform, biases zero."""
        params = self.model.init(seed)
        if self.fce:
            from metabridge import config
            from metabridge.nn.base import glorot_uniform

            rng = np.random.default_rng([seed, 7])
            for name, shape in self.param_shapes().items():
                if name.startswith("fce."):
                    value = (np.zeros(shape) if name.endswith("bias")
                             else glorot_uniform(rng, shape, shape[0], shape[1]))
                    params[name] = value.astype(config.floatx())
        return params

    def _support_context(self, params, es):
        """Bidirectional LSTM over the support embeddings (in episode order)."""
        n, d = ops.shape(es)
        zero = ops.zeros((1, d))
        outs_fw, outs_bw = [], [None] * n
        h, c = zero, zero
        for i in range(n):
            h, c = lstm_cell(params, "fce.fw", es[i:i + 1], h, c)
            outs_fw.append(h)
        h, c = zero, zero
        for i in reversed(range(n)):
            h, c = lstm_cell(params, "fce.bw", es[i:i + 1], h, c)
            outs_bw[i] = h
        return es + ops.concat(outs_fw, 0) + ops.concat(outs_bw, 0)

    def _query_context(self, params, eq, gs):
        """Attention LSTM: ``fce_steps`` reads of the support for every query."""
        h, c = ops.zeros_like(eq), ops.zeros_like(eq)
        r = ops.zeros_like(eq)
        for _ in range(self.fce_steps):
            h, c = lstm_cell(params, "fce.att", eq, h + r, c)
            h = h + eq
            attn = ops.softmax(ops.matmul(h, ops.transpose(gs, (1, 0))), -1)
            r = ops.matmul(attn, gs)
        return h

    def attention(self, params: dict, support_x, query_x):
        """``[queries, support]`` attention weights (each row sums to 1)."""
        params = {k: ops.asarray(v) for k, v in params.items()}
        es, eq = self.model(params, support_x), self.model(params, query_x)
        if self.fce:
            es = self._support_context(params, es)
            eq = self._query_context(params, eq, es)
        return ops.softmax(ops.matmul(l2_normalize(eq), ops.transpose(l2_normalize(es), (1, 0))), -1)

    def logits(self, params: dict, support_x, support_y, query_x, ways: int):
        """Log class probabilities ``log(attention @ onehot(support_y))``."""
        probs = ops.matmul(self.attention(params, support_x, query_x), ops.one_hot(support_y, ways))
        return ops.log(probs + _EPS)
