"""The one protocol every algorithm implements: :class:`Algorithm`.

The training loop, evaluation, run directories and the command line talk to
an algorithm only through these methods, so an algorithm written in one file
(see ``examples/custom_algorithm.py``) trains, checkpoints, resumes and
evaluates like the built-in ones.

================================  ==============================================================
``init(seed)``                    initial meta-parameters (numpy, identical on every backend)
``meta_value_and_grad(p, batch)``  ``(loss, direction)`` of one training batch; the outer
                                  optimizer (:meth:`outer_optimizer`) applies ``direction``
``predict_episode(p, episode)``   query predictions after the algorithm's own adaptation
``evaluate(p, batch)``            per-episode loss and metric (numpy, first axis = episodes)
================================  ==============================================================

Class attributes say what the training loop must give it: ``trains_on`` is
``"episodes"`` (a :class:`~metabridge.data.TaskBatch`) or ``"pairs"`` (a
:class:`~metabridge.data.PairBatch`); ``adapts`` is whether it has an inner
loop (``steps`` then means inner steps at test time); ``any_ways`` is whether
test episodes may have another number of classes than training ones.

>>> class MyAlgorithm(Algorithm):                              # doctest: +SKIP
...     def meta_value_and_grad(self, params, batch): ...
...     def predict_episode(self, params, episode, steps=None): ...
...     def evaluate(self, params, batch, steps=None): ...
"""
from __future__ import annotations

import abc

import numpy as np

from metabridge.data.episodes import Episode, TaskBatch
from metabridge.optim import Adam


class Algorithm(abc.ABC):
    """Base class of every meta-learning algorithm (see the module docstring).

    Subclasses set ``self.model`` (a :class:`metabridge.nn.Model`) and
    ``self.metric_name`` (``"accuracy"`` or ``"mse"``, the key of
    :meth:`evaluate`'s result that the training loop reports).
    """

    trains_on: str = "episodes"
    adapts: bool = True
    any_ways: bool = False
    metric_name: str = "accuracy"

    def init(self, seed: int) -> dict:
        """Initial meta-parameters from ``seed`` (numpy): the model's by default."""
        return self.model.init(seed)

    def outer_optimizer(self, lr):
        """The optimizer that applies :meth:`meta_value_and_grad`'s direction:
        Adam with learning rate (or schedule) ``lr`` unless the algorithm says otherwise."""
        return Adam(lr=lr)

    @abc.abstractmethod
    def meta_value_and_grad(self, params: dict, batch):
        """``(loss, direction)`` for one training batch: a scalar and a dict with
        the keys of ``params`` (the meta-gradient, or the step a Reptile-like
        method takes, negated, for :meth:`outer_optimizer` to apply)."""

    def meta_gradient_function(self, batch):
        """``(fn, args)`` such that ``fn(params, *args)`` is
        ``meta_value_and_grad(params, batch)`` written in tensors only, so the
        training loop can compile it together with the optimizer step
        (``optim.CompiledUpdate.fused``). ``None`` (the default) when there is
        no such form; the loop then calls :meth:`meta_value_and_grad`."""
        return None

    @abc.abstractmethod
    def predict_episode(self, params: dict, episode: Episode, steps: int | None = None):
        """``[queries, outputs]`` predictions (logits, or regression outputs) for
        the episode's queries after adapting to its support set."""

    @abc.abstractmethod
    def evaluate(self, params: dict, batch: TaskBatch, steps: int | None = None) -> dict:
        """Per-episode results as numpy arrays whose first axis is the episode:
        ``"loss"`` and :attr:`metric_name` (a second axis, where present, runs
        over inner steps and its last entry is the result after adaptation)."""

    def batch_coupling(self) -> str | None:
        """Why one training batch's tasks or pairs interact (e.g. batch norm over
        the whole batch), so that a batch split over workers would not give the
        mean of the parts; None when they are independent (the default)."""
        return None

    def episode_metric(self, params: dict, batch: TaskBatch, steps: int | None = None) -> np.ndarray:
        """:attr:`metric_name` of every episode of ``batch`` after adaptation, ``[episodes]``."""
        values = self.evaluate(params, batch, steps)[self.metric_name]
        return values if values.ndim == 1 else values[:, -1]
