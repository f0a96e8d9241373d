"""Conv4: the MAML / Prototypical-network backbone."""
from __future__ import annotations

import numpy as np

from metabridge import config, ops
from metabridge.nn.base import Model, batch_norm, check_image_shape, conv, dense


class Conv4(Model):
    """4 × [3×3 conv ``channels``, batch norm, ReLU, 2×2 max-pool] (+ optional dense head);
    computed as max-pool then ReLU, which gives the same numbers with less work.

    ``strided=True`` is MAML's Omniglot variant: stride-2 ``"same"`` convs, no
    pooling, features averaged over space. ``last_pool=False`` skips the fourth
    max-pool, so the features keep the last layer's spatial map (3×3×64 = 576
    for 28×28 inputs). With ``out_features`` a dense head
    ``head.kernel``/``head.bias`` maps the features to logits; without one the
    model is an embedding (ProtoNet style).

    >>> model = Conv4(out_features=5, input_shape=(28, 28, 1))
    >>> model.feature_dim
    64
    """

    def __init__(self, out_features: int | None = None, input_shape=(28, 28, 1),
                 channels: int = 64, strided: bool = False, last_pool: bool = True):
        self.input_shape = check_image_shape(input_shape, "Conv4")
        if out_features is not None and (not isinstance(out_features, int) or out_features < 1):
            raise ValueError(f"Expected out_features >= 1 or None. Received: out_features={out_features!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"Expected channels >= 1. Received: channels={channels!r}")
        if not isinstance(last_pool, bool) or (strided and not last_pool):
            raise ValueError(f"Expected last_pool true or false, and true with strided=True (no pooling). "
                             f"Received: last_pool={last_pool!r}, strided={strided!r}")
        self.out_features, self.channels, self.strided, self.last_pool = out_features, channels, strided, last_pool
        h, w, _ = self.input_shape
        for _ in range(4):
            h, w = ((h + 1) // 2, (w + 1) // 2) if strided else (h // 2, w // 2)
            if h < 1 or w < 1:
                raise ValueError(
                    f"Expected input_shape large enough for 4 pooling stages (at least 16x16). "
                    f"Received: input_shape={tuple(input_shape)}"
                )
        if not last_pool:
            h, w = self.input_shape[0] // 8, self.input_shape[1] // 8
        self.feature_dim = channels if strided else h * w * channels

    def param_shapes(self):
        shapes, cin = {}, self.input_shape[2]
        for i in range(1, 5):
            shapes[f"conv{i}.kernel"] = (3, 3, cin, self.channels)
            shapes[f"conv{i}.bias"] = (self.channels,)
            shapes[f"bn{i}.scale"] = (self.channels,)
            shapes[f"bn{i}.offset"] = (self.channels,)
            cin = self.channels
        if self.out_features is not None:
            shapes["head.kernel"] = (self.feature_dim, self.out_features)
            shapes["head.bias"] = (self.out_features,)
        return shapes

    def init_state(self):
        dt = config.floatx()
        state = {}
        for i in range(1, 5):
            state[f"bn{i}.running_mean"] = np.zeros(self.channels, dtype=dt)
            state[f"bn{i}.running_var"] = np.ones(self.channels, dtype=dt)
        return state

    @property
    def head_prefix(self) -> str | None:
        """Name prefix of the head's parameters (``None`` for an embedding model)."""
        return "head." if self.out_features is not None else None

    def _body(self, params, x, state, training):
        new_state = {}
        for i in range(1, 5):
            x = conv(params, f"conv{i}", x, stride=2 if self.strided else 1, padding="same")
            x, updates = batch_norm(params, f"bn{i}", x, state, training)
            new_state.update(updates)
            # max-pool then ReLU: the same values and gradients as ReLU then max-pool (ReLU is monotone,
            # so the two commute, ties included), with the ReLU and its backward on a quarter of the
            # entries (they were ~14 % of a second-order MAML step on CPU, BENCHMARKS.md)
            if not self.strided and (i < 4 or self.last_pool):
                x = ops.max_pool2d(x, 2)
            x = ops.relu(x)
        return (ops.mean(x, (1, 2)) if self.strided else ops.flatten(x)), new_state

    def features(self, params: dict, x):
        """Features before the head (batch statistics), ``[n, feature_dim]``."""
        return self._body(params, x, None, True)[0]

    def head(self, params: dict, features):
        """The dense head on ``features``."""
        return dense(params, "head", features)

    def _forward(self, params, x, state, training):
        x, new_state = self._body(params, x, state, training)
        if self.out_features is not None:
            x = self.head(params, x)
        return x, new_state
