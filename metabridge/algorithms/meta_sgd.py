"""Meta-SGD (Li, Zhou, Chen & Li 2017): MAML whose inner learning rates are
learned, one per parameter entry, together with the initialisation."""
from __future__ import annotations

import numpy as np

from metabridge.algorithms.maml import MAML

LR_PREFIX = "lr."


class MetaSGD(MAML):
    """Meta-parameters are the model's plus ``lr.<name>`` of the same shapes.

    The inner step is ``p - lr_p * grad`` (elementwise). ``inner_lr`` is the
    initial value of every rate.

    >>> from metabridge.nn import MLP
    >>> meta_sgd = MetaSGD(MLP([1, 40, 40, 1]), inner_lr=0.01, loss="mse")
    >>> meta_params = meta_sgd.init(seed=0)       # weights and per-entry rates
    >>> sorted(meta_params)[:2]
    ['dense1.bias', 'dense1.kernel']
    """

    def init(self, seed: int) -> dict:
        """Model parameters from ``seed`` plus every rate set to ``inner_lr``."""
        params = self.model.init(seed)
        params.update({LR_PREFIX + k: np.full_like(v, self.inner_lr) for k, v in params.items()})
        return params

    def inner_keys(self, params: dict) -> list[str]:
        missing = [k for k in params if not k.startswith(LR_PREFIX) and LR_PREFIX + k not in params]
        if missing:
            raise ValueError(f"Expected a learning rate 'lr.<name>' for every parameter (see MetaSGD.init). "
                             f"Received: no rate for {missing[:3]}")
        return [k for k in params if not k.startswith(LR_PREFIX)]

    def inner_update(self, params: dict, grads: dict) -> dict:
        return {k: params[k] - params[LR_PREFIX + k] * g for k, g in grads.items()}
