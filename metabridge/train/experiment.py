"""One experiment (algorithm × dataset) on one backend, and the same on several.

This is what ``metabridge train`` and ``metabridge compare`` run. Every run
starts from numpy parameters made from the seed and sees the same episodes,
so two backends can be compared number for number.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from metabridge import config
from metabridge.algorithms import ANIL, MAML, MatchingNet, MetaSGD, ProtoNet, Reptile, Siamese
from metabridge.data import TaskBatch
from metabridge.nn import MLP, Conv4, KochEncoder, SmallConvEncoder
from metabridge.optim import StepDecay
from metabridge.train.sources import build_sources

ALGOS = ("maml", "fomaml", "metasgd", "anil", "reptile", "siamese", "protonet", "matching")
DATASETS = ("sinusoid", "digits", "omniglot", "miniimagenet")
SPLITS = ("lake", "vinyals")
ROTATIONS = ("classes", "per-task", "none")
DEFAULT_DATASET = {"maml": "sinusoid", "fomaml": "sinusoid", "metasgd": "sinusoid", "anil": "sinusoid",
                   "reptile": "sinusoid", "siamese": "digits", "protonet": "digits", "matching": "digits"}


@dataclass
class ExperimentConfig:
    """Everything that defines a run. ``None`` fields take per-setting defaults
    (see :meth:`resolved`). Serialisable with ``dataclasses.asdict``."""

    algo: str = "maml"
    dataset: str | None = None
    steps: int | None = None
    meta_batch: int | None = None
    ways: int = 5
    test_ways: int | None = None
    shots: int | None = None
    queries: int | None = None
    test_shots: int | None = None
    test_tasks: int = 600
    inner_lr: float | None = None
    inner_steps: int = 1
    test_inner_steps: int | None = None
    outer_lr: float = 1e-3
    lr_decay_every: int | None = None
    lr_decay: float = 0.5
    seed: int = 0
    floatx: str = "float32"
    compiled: bool = True
    distance: str = "l1"
    siamese_loss: str = "bce"
    data_dir: str | None = None
    download: bool = False
    split: str = "vinyals"
    rotations: str | None = None
    image_size: int | None = None
    fce: bool = False
    transductive: bool = True

    def resolved(self) -> "ExperimentConfig":
        """A copy with defaults filled in and every value checked."""
        if self.algo not in ALGOS:
            raise ValueError(f"Expected algo in {ALGOS}. Received: algo={self.algo!r}")
        c = dataclasses.replace(self)
        c.dataset = c.dataset or DEFAULT_DATASET[c.algo]
        if c.dataset not in DATASETS:
            raise ValueError(f"Expected dataset in {DATASETS}. Received: dataset={c.dataset!r}")
        if c.algo in ("siamese", "protonet", "matching") and c.dataset == "sinusoid":
            raise ValueError(f"Expected a classification dataset for {c.algo} (it needs classes). "
                             f"Received: dataset={c.dataset!r}")
        if c.split not in SPLITS:
            raise ValueError(f"Expected split in {SPLITS}. Received: split={c.split!r}")
        if c.rotations is None:  # MAML rotated per task, ProtoNets made rotations classes, Koch did neither
            rotations = {"maml": "per-task", "fomaml": "per-task", "metasgd": "per-task", "anil": "per-task",
                         "reptile": "classes", "protonet": "classes", "matching": "classes"}
            c.rotations = rotations.get(c.algo, "none") if c.dataset == "omniglot" else "none"
        if c.rotations not in ROTATIONS:
            raise ValueError(f"Expected rotations in {ROTATIONS}. Received: rotations={c.rotations!r}")
        if c.image_size is not None and (not isinstance(c.image_size, int) or c.image_size < 16):
            raise ValueError(f"Expected image_size >= 16. Received: image_size={c.image_size!r}")
        sinusoid = c.dataset == "sinusoid"
        if c.steps is None:
            c.steps = {"sinusoid": 300, "digits": 200}.get(c.dataset, 1000)
        if c.meta_batch is None:
            c.meta_batch = 32 if c.algo == "siamese" else (25 if sinusoid else 8)
        if c.shots is None:
            c.shots = 10 if sinusoid else 1
        if c.queries is None:
            c.queries = 10 if sinusoid else 5
        if c.test_shots is None:
            c.test_shots = c.shots
        if c.test_ways is None:
            c.test_ways = c.ways
        if c.test_inner_steps is None:
            c.test_inner_steps = c.inner_steps
        if c.inner_lr is None:
            c.inner_lr = 0.01 if sinusoid else 0.4
        for name in ("steps", "meta_batch", "shots", "queries", "test_shots", "test_tasks", "inner_steps",
                     "test_inner_steps"):
            value = getattr(c, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Expected {name} >= 1. Received: {name}={value!r}")
        if not sinusoid and (not isinstance(c.ways, int) or c.ways < 2):
            raise ValueError(f"Expected ways >= 2. Received: ways={c.ways!r}")
        if not sinusoid and (not isinstance(c.test_ways, int) or c.test_ways < 2):
            raise ValueError(f"Expected test_ways >= 2. Received: test_ways={c.test_ways!r}")
        if c.test_ways != c.ways and c.algo not in ("protonet", "matching", "siamese"):
            raise ValueError(f"Expected test_ways == ways for {c.algo} (its output layer has one unit per way; "
                             f"only protonet, matching and siamese can change ways). "
                             f"Received: ways={c.ways}, test_ways={c.test_ways}")
        if c.lr_decay_every is not None:
            StepDecay(c.outer_lr, c.lr_decay_every, c.lr_decay)  # validates both
        if not isinstance(c.transductive, bool):
            raise ValueError(f"Expected transductive true or false. Received: transductive={c.transductive!r}")
        if c.algo != "reptile" and not c.transductive:
            raise ValueError(f"Expected transductive = true for {c.algo} (the option is Reptile's). "
                             f"Received: transductive=False")
        if c.algo == "reptile" and c.lr_decay_every is not None:
            raise ValueError("Expected no lr_decay_every for reptile (its outer step size is annealed linearly "
                             f"from 1 to 0 instead). Received: lr_decay_every={c.lr_decay_every}")
        if c.algo in ("siamese", "protonet", "matching") and c.test_inner_steps != c.inner_steps:
            raise ValueError(f"Expected no test_inner_steps for {c.algo} (it has no inner loop). "
                             f"Received: test_inner_steps={c.test_inner_steps}")
        for name in ("inner_lr", "outer_lr"):
            value = getattr(c, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Expected {name} > 0. Received: {name}={value!r}")
        if c.floatx not in config.FLOATX_CHOICES:
            raise ValueError(f"Expected floatx in {config.FLOATX_CHOICES}. Received: floatx={c.floatx!r}")
        return c


@dataclass
class RunResult:
    """What one backend's run produced."""

    backend: str
    losses: list[float]
    metric_name: str
    metric: float
    metric_ci95: float
    seconds_per_step: float
    params: dict
    data: dict | None = None

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    def summary(self) -> dict:
        return {"final_loss": self.final_loss, "metric_name": self.metric_name, "metric": self.metric,
                "metric_ci95": self.metric_ci95, "seconds_per_step": self.seconds_per_step, "data": self.data}


def _flat(batch: TaskBatch) -> TaskBatch:
    """Digits images ``[B, n, 8, 8, 1]`` flattened to ``[B, n, 64]`` for an MLP learner."""
    def f(a):
        return a.reshape(a.shape[0], a.shape[1], -1)
    return TaskBatch(f(batch.support_x), batch.support_y, f(batch.query_x), batch.query_y)


def siamese_encoder(input_shape: tuple):
    """The Siamese encoder for an input size: the small Keras-example encoder for
    small images, Koch et al.'s (at its paper size for 105×105; narrower kernels
    and a 1024-wide embedding for 28×28) otherwise."""
    if input_shape[0] < 28:
        return SmallConvEncoder(input_shape=input_shape)
    if input_shape[0] >= 105:
        return KochEncoder(input_shape=input_shape)
    return KochEncoder(input_shape=input_shape, filters=(64, 128, 128), kernels=(5, 3, 2), embedding=1024)


class _Setup:
    """The model, algorithm and samplers a resolved config describes."""

    def __init__(self, c: ExperimentConfig, input_shape: tuple | None = None):
        """With ``input_shape`` no data is loaded (``sources`` is None): enough to
        rebuild the model, e.g. to export a checkpoint without the data set."""
        self.c = c
        self.sources = build_sources(c) if input_shape is None else None
        shape = tuple(input_shape) if input_shape is not None else self.sources.input_shape
        self.input_shape = shape
        self.flatten = c.dataset == "digits" and c.algo != "siamese"
        if c.algo == "siamese":
            self.algorithm = Siamese(siamese_encoder(shape), c.distance, c.siamese_loss)
            self.model = self.algorithm
            return
        if c.algo in ("protonet", "matching"):
            self.model = (MLP([64, 64, 64]) if self.flatten
                          else Conv4(None, input_shape=shape, channels=64))
            self.algorithm = (ProtoNet(self.model, compiled=c.compiled) if c.algo == "protonet"
                              else MatchingNet(self.model, fce=c.fce, compiled=c.compiled))
            return
        if c.dataset == "sinusoid":
            self.model, loss = MLP([1, 40, 40, 1]), "mse"
        elif self.flatten:
            self.model, loss = MLP([64, 64, 64, c.ways]), "cross_entropy"
        else:  # MAML's own choices: strided Conv4 on Omniglot, 32 filters on miniImageNet
            strided = c.dataset == "omniglot"
            channels = 64 if strided else 32
            self.model = Conv4(c.ways, input_shape=shape, channels=channels, strided=strided)
            loss = "cross_entropy"
        if c.algo == "reptile":  # the paper's Omniglot set-up: Adam (beta1 = 0) inner loop, epsilon 1 -> 0
            self.algorithm = Reptile(self.model, c.inner_lr, c.inner_steps, loss=loss, outer_stepsize=1.0,
                                     final_outer_stepsize=0.0, total_steps=c.steps, inner_optimizer="adam",
                                     transductive=c.transductive, compiled=c.compiled)
            return
        kind = {"metasgd": MetaSGD, "anil": ANIL}.get(c.algo, MAML)
        self.algorithm = kind(self.model, c.inner_lr, c.inner_steps, first_order=c.algo == "fomaml", loss=loss,
                              compiled=c.compiled)

    def init_params(self, seed: int) -> dict:
        """Initial meta-parameters (Meta-SGD adds its per-entry rates)."""
        if isinstance(self.algorithm, (MetaSGD, MatchingNet)):
            return self.algorithm.init(seed)
        return self.model.init(seed)

    def train_batch(self, step: int) -> TaskBatch:
        """Meta-batch ``step`` of training episodes, shaped for the model."""
        batch = self.sources.train.batch(step, self.c.meta_batch)
        return _flat(batch) if self.flatten else batch

    def train_step_loss_and_grad(self, params, step):
        """``(meta-loss, meta-gradient)`` of training step ``step`` (a function of ``(seed, step)``)."""
        if self.c.algo == "siamese":
            return self.algorithm.value_and_grad(params, *self.sources.train_pairs.batch(step))
        return self.algorithm.meta_value_and_grad(params, self.train_batch(step))

    def predict(self, params, episode) -> np.ndarray:
        """Query predictions (logits, or regression outputs) of one test episode,
        after adaptation where the algorithm adapts."""
        from metabridge import ops

        c, alg = self.c, self.algorithm
        batch = TaskBatch.stack([episode])
        batch = _flat(batch) if self.flatten else batch
        sx, sy, qx = (ops.asarray(a[0]) for a in (batch.support_x, batch.support_y, batch.query_x))
        if c.algo == "siamese":
            raise ValueError("Expected an episodic algorithm for predict (Siamese scores pairs). Received: siamese")
        if c.algo in ("protonet", "matching"):
            return ops.to_numpy(alg.logits(params, sx, sy, qx, c.test_ways))
        if c.algo == "reptile":
            return ops.to_numpy(alg.predict(alg.adapt(params, sx, sy, c.test_inner_steps), sx, qx))
        adapted = alg.adapt(params, sx, sy, steps=c.test_inner_steps, create_graph=False)
        return ops.to_numpy(self.model(adapted, qx))

    @property
    def metric_name(self) -> str:
        return "accuracy" if self.c.dataset != "sinusoid" else "mse"

    def evaluate(self, params, episodes: int | None = None, offset: int = 0,
                 validation: bool = False) -> tuple[str, np.ndarray]:
        """Per-episode test metric over test episodes ``offset .. offset + episodes - 1``
        (default: the config's ``test_tasks`` from 0); ``validation=True`` samples
        the validation classes instead where the data set has them."""
        c = self.c
        test = self.sources.val if validation and self.sources.val is not None else self.sources.test
        episodes = c.test_tasks if episodes is None else episodes
        if c.algo == "siamese":
            accs = [self.algorithm.one_shot_accuracy(params, test.episode(offset + i)) for i in range(episodes)]
            return "accuracy", np.asarray(accs)
        values, name = [], None
        chunk = 50
        for start in range(0, episodes, chunk):
            n = min(chunk, episodes - start)
            batch = TaskBatch.stack([test.episode(offset + start + j) for j in range(n)])
            batch = _flat(batch) if self.flatten else batch
            out = (self.algorithm.evaluate(params, batch) if c.algo in ("protonet", "matching")
                   else self.algorithm.evaluate(params, batch, steps=c.test_inner_steps))
            name = "accuracy" if "accuracy" in out else "mse"
            values.append(out[name] if out[name].ndim == 1 else out[name][:, -1])
        return name, np.concatenate(values)


def run_experiment(cfg: ExperimentConfig, backend: str, quiet: bool = False) -> RunResult:
    """Train and evaluate ``cfg`` on ``backend``; parameters come back as numpy
    (no run directory: see :func:`metabridge.train.loop.train` for one).

    >>> res = run_experiment(ExperimentConfig(steps=10, test_tasks=20), "torch")  # doctest: +SKIP
    >>> res.metric_name
    'mse'
    """
    from metabridge.train.loop import train

    return train(cfg, backend, None, quiet=quiet)


def parity(a: RunResult, b: RunResult) -> dict:
    """Largest absolute difference of final parameters and largest relative
    difference along the loss curves of two runs."""
    max_param = max(float(np.max(np.abs(a.params[k].astype(np.float64) - b.params[k]))) for k in a.params)
    la, lb = np.asarray(a.losses, np.float64), np.asarray(b.losses, np.float64)
    rel = np.abs(la - lb) / np.maximum(np.maximum(np.abs(la), np.abs(lb)), 1e-300)
    return {"max_abs_param_diff": max_param, "max_rel_loss_diff": float(rel.max())}
