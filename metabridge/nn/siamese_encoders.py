"""Encoders for Siamese networks: the small Keras-example one and Koch et al.'s."""
from __future__ import annotations

from typing import Sequence

from metabridge import ops
from metabridge.nn.base import Model, check_image_shape, conv, dense
from metabridge.nn.conv4 import Conv4


def _spatial_after(h: int, w: int, kernel: int, padding: str) -> tuple[int, int]:
    if padding == "same":
        return h, w
    return h - kernel + 1, w - kernel + 1


class SmallConvEncoder(Model):
    """conv32 – pool – conv64 – pool – dense128, the classic Keras Siamese example.

    3×3 ReLU convs (``"same"`` padding by default so small images such as 8×8
    digits fit), 2×2 max-pools, a ReLU dense embedding of size ``embedding``.

    >>> enc = SmallConvEncoder(input_shape=(8, 8, 1))
    >>> enc.embedding_dim
    128
    """

    def __init__(self, input_shape=(28, 28, 1), filters: Sequence[int] = (32, 64),
                 embedding: int = 128, padding: str = "same"):
        self.input_shape = check_image_shape(input_shape, "SmallConvEncoder")
        if padding not in ("same", "valid"):
            raise ValueError(f"Expected padding 'same' or 'valid'. Received: padding={padding!r}")
        if not filters or not all(isinstance(f, int) and f > 0 for f in filters):
            raise ValueError(f"Expected filters to be positive ints. Received: filters={filters!r}")
        if not isinstance(embedding, int) or embedding < 1:
            raise ValueError(f"Expected embedding >= 1. Received: embedding={embedding!r}")
        self.filters, self.embedding_dim, self.padding = tuple(filters), embedding, padding
        h, w, _ = self.input_shape
        for _ in self.filters:
            h, w = _spatial_after(h, w, 3, padding)
            h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"Expected input_shape large enough for {len(self.filters)} conv+pool stages. "
                    f"Received: input_shape={tuple(input_shape)}"
                )
        self._flat = h * w * self.filters[-1]

    def param_shapes(self):
        shapes, cin = {}, self.input_shape[2]
        for i, f in enumerate(self.filters, start=1):
            shapes[f"conv{i}.kernel"] = (3, 3, cin, f)
            shapes[f"conv{i}.bias"] = (f,)
            cin = f
        shapes["embed.kernel"] = (self._flat, self.embedding_dim)
        shapes["embed.bias"] = (self.embedding_dim,)
        return shapes

    def _forward(self, params, x, state, training):
        for i in range(1, len(self.filters) + 1):
            x = ops.max_pool2d(ops.relu(conv(params, f"conv{i}", x, padding=self.padding)), 2)
        return ops.relu(dense(params, "embed", ops.flatten(x))), {}


class KochEncoder(Model):
    """Koch, Zemel & Salakhutdinov (2015): ReLU convs with max-pools between
    them, then a sigmoid dense embedding (4096 in the paper, at 105×105).

    Widths, kernel sizes and embedding size are configurable so the same
    architecture fits 28×28 inputs. ``init="koch"`` is the paper's
    initialisation: conv kernels N(0, 0.01), dense kernel N(0, 0.2), biases
    N(0.5, 0.01) (drawn from ``numpy.random.default_rng(seed)``); ``"glorot"``
    (default) is the library's generic one.

    >>> enc = KochEncoder(input_shape=(28, 28, 1), filters=(8, 16), kernels=(5, 3), embedding=32)
    >>> enc.embedding_dim
    32
    """

    def __init__(self, input_shape=(105, 105, 1), filters: Sequence[int] = (64, 128, 128, 256),
                 kernels: Sequence[int] = (10, 7, 4, 4), embedding: int = 4096, init: str = "glorot"):
        self.input_shape = check_image_shape(input_shape, "KochEncoder")
        if init not in ("glorot", "koch"):
            raise ValueError(f"Expected init 'glorot' or 'koch'. Received: init={init!r}")
        self.init_scheme = init
        if len(filters) != len(kernels) or not filters:
            raise ValueError(
                f"Expected as many kernels as filters. Received: filters={filters!r}, kernels={kernels!r}"
            )
        if not all(isinstance(v, int) and v > 0 for v in (*filters, *kernels)):
            raise ValueError(f"Expected positive ints. Received: filters={filters!r}, kernels={kernels!r}")
        if not isinstance(embedding, int) or embedding < 1:
            raise ValueError(f"Expected embedding >= 1. Received: embedding={embedding!r}")
        self.filters, self.kernels, self.embedding_dim = tuple(filters), tuple(kernels), embedding
        h, w, _ = self.input_shape
        for i, k in enumerate(self.kernels):
            h, w = _spatial_after(h, w, k, "valid")
            if i < len(self.kernels) - 1:
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"Expected input_shape large enough for kernels {self.kernels}. "
                    f"Received: input_shape={tuple(input_shape)}"
                )
        self._flat = h * w * self.filters[-1]

    def param_shapes(self):
        shapes, cin = {}, self.input_shape[2]
        for i, (f, k) in enumerate(zip(self.filters, self.kernels), start=1):
            shapes[f"conv{i}.kernel"] = (k, k, cin, f)
            shapes[f"conv{i}.bias"] = (f,)
            cin = f
        shapes["embed.kernel"] = (self._flat, self.embedding_dim)
        shapes["embed.bias"] = (self.embedding_dim,)
        return shapes

    def _init_value(self, rng, name: str, shape: tuple):
        if self.init_scheme == "glorot":
            return Model._init_value(self, rng, name, shape)
        if name.endswith(".bias"):
            return rng.normal(0.5, 0.01, size=shape)
        return rng.normal(0.0, 0.01 if len(shape) == 4 else 0.2, size=shape)

    def _forward(self, params, x, state, training):
        n = len(self.filters)
        for i in range(1, n + 1):
            x = ops.relu(conv(params, f"conv{i}", x, padding="valid"))
            if i < n:
                x = ops.max_pool2d(x, 2)
        return ops.sigmoid(dense(params, "embed", ops.flatten(x))), {}


class Conv4Embedding(Conv4):
    """Conv4 with batch norm and no head (64 channels by default), as a Siamese
    encoder: its flattened features are the embedding (``embedding_dim`` of them);
    ``last_pool=False`` keeps the last layer's spatial map (see :class:`Conv4`).

    >>> Conv4Embedding((28, 28, 1)).embedding_dim, Conv4Embedding((28, 28, 1), last_pool=False).embedding_dim
    (64, 576)
    """

    def __init__(self, input_shape=(28, 28, 1), channels: int = 64, last_pool: bool = True):
        super().__init__(None, input_shape=input_shape, channels=channels, last_pool=last_pool)
        self.embedding_dim = self.feature_dim
