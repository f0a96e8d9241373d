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

from metabridge import config, ops
from metabridge.data import Episode, PairBatch, TaskBatch
from metabridge.data.omniglot_splits import OMNIGLOT_ROTATIONS, OMNIGLOT_SPLITS
from metabridge.optim import ParameterAverage, StepDecay, check_decay
from metabridge.train.distributed import split_check
from metabridge.train.limits import check_memory
from metabridge.train.stepper import MAX_BATCH_BYTES, STEPS_PER_CALL
from metabridge.recipes import DEFAULT_ALGO, get_dataset, get_recipe, recipes_with

SPLITS = OMNIGLOT_SPLITS
TORCH_COMPILE_CHOICES = ("auto", "on", "off")
# torch.compile takes 20-40 s for a training step and saves 1-4 ms a step on the
# small models where it helps: "auto" compiles runs at least this long.
TORCH_COMPILE_MIN_STEPS = 10_000
ROTATIONS = OMNIGLOT_ROTATIONS


@dataclass
class ExperimentConfig:
    """Everything that defines a run. ``None`` fields take per-setting defaults
    (see :meth:`resolved`). Serialisable with ``dataclasses.asdict``."""

    algo: str = DEFAULT_ALGO
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
    # Exponential moving average of the parameters (optim.ParameterAverage), evaluated instead of them.
    ema_decay: float | None = None
    seed: int = 0
    floatx: str = "float32"
    compiled: bool = True
    # torch only: torch.compile the whole training step ("auto": runs of >= TORCH_COMPILE_MIN_STEPS steps).
    torch_compile: str = "auto"
    distance: str = "l1"
    siamese_loss: str = "bce"
    data_dir: str | None = None
    download: bool = False
    split_file: str | None = None
    allow_pickle: bool = False
    split: str = "vinyals"
    rotations: str | None = None
    image_size: int | None = None
    fce: bool = False
    transductive: bool = True
    # Siamese networks (Koch et al. 2015): head, initialisation, encoder, optimizer, pairs, validation.
    siamese_head: str = "softplus"
    siamese_init: str = "default"
    siamese_encoder: str = "auto"
    siamese_optimizer: str = "adam"
    momentum: float = 0.9
    momentum_steps: int | None = None
    l2: float = 0.0
    layer_lr: str | None = None
    within_alphabet: float = 0.5
    alphabet_group: int = 8
    augment: bool = False
    val_alphabets: int = 10
    siamese_pairs: str = "independent"
    siamese_norm: str = "joint"
    siamese_test_augment: str = "none"

    def resolved(self) -> "ExperimentConfig":
        """A copy with defaults filled in and every value checked. Defaults come
        from the algorithm's and the data set's recipes (see :mod:`metabridge.recipes`)."""
        recipe = get_recipe(self.algo)
        c = dataclasses.replace(self)
        c.dataset = c.dataset or recipe.default_dataset
        dataset = get_dataset(c.dataset)
        if dataset.task not in recipe.tasks:
            raise ValueError(f"Expected a {' or '.join(recipe.tasks)} dataset for {c.algo} (it needs "
                             f"{'classes' if 'classification' in recipe.tasks else 'targets'}). "
                             f"Received: dataset={c.dataset!r}")
        if c.split not in SPLITS:
            raise ValueError(f"Expected split in {SPLITS}. Received: split={c.split!r}")
        defaults = recipe.defaults_for(dataset)
        if c.rotations is None:
            c.rotations = defaults.get("rotations", "none")
        if c.rotations not in ROTATIONS:
            raise ValueError(f"Expected rotations in {ROTATIONS}. Received: rotations={c.rotations!r}")
        if c.image_size is not None and (not isinstance(c.image_size, int) or c.image_size < 16):
            raise ValueError(f"Expected image_size >= 16. Received: image_size={c.image_size!r}")
        for name in ("steps", "meta_batch", "shots", "queries", "inner_lr"):
            if getattr(c, name) is None:
                setattr(c, name, defaults[name])
        if c.test_shots is None:
            c.test_shots = c.shots
        if c.test_ways is None:
            c.test_ways = c.ways
        if c.test_inner_steps is None:
            c.test_inner_steps = c.inner_steps
        for name in ("steps", "meta_batch", "shots", "queries", "test_shots", "test_tasks", "inner_steps",
                     "test_inner_steps"):
            value = getattr(c, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Expected {name} >= 1. Received: {name}={value!r}")
        classes = dataset.task == "classification"
        if classes and (not isinstance(c.ways, int) or c.ways < 2):
            raise ValueError(f"Expected ways >= 2. Received: ways={c.ways!r}")
        if classes and (not isinstance(c.test_ways, int) or c.test_ways < 2):
            raise ValueError(f"Expected test_ways >= 2. Received: test_ways={c.test_ways!r}")
        if c.test_ways != c.ways and not recipe.any_ways:
            able = ", ".join(recipes_with(lambda r: r.any_ways))
            raise ValueError(f"Expected test_ways == ways for {c.algo} (its output layer has one unit per way; "
                             f"only {able} can change ways). Received: ways={c.ways}, test_ways={c.test_ways}")
        if c.lr_decay_every is not None:
            StepDecay(c.outer_lr, c.lr_decay_every, c.lr_decay)  # validates both
        if c.ema_decay is not None:
            check_decay("ema_decay", c.ema_decay)
        if not isinstance(c.transductive, bool):
            raise ValueError(f"Expected transductive true or false. Received: transductive={c.transductive!r}")
        if not c.transductive and "transductive" not in recipe.options:
            able = ", ".join(recipes_with(lambda r: "transductive" in r.options))
            raise ValueError(f"Expected transductive = true for {c.algo} (only {able} takes the option). "
                             f"Received: transductive=False")
        if not (isinstance(c.within_alphabet, (int, float)) and not isinstance(c.within_alphabet, bool)
                and 0 <= c.within_alphabet <= 1):
            raise ValueError(f"Expected 0 <= within_alphabet <= 1. Received: within_alphabet={c.within_alphabet!r}")
        if not isinstance(c.alphabet_group, int) or isinstance(c.alphabet_group, bool) or c.alphabet_group < 1:
            raise ValueError(f"Expected alphabet_group >= 1. Received: alphabet_group={c.alphabet_group!r}")
        if not isinstance(c.val_alphabets, int) or isinstance(c.val_alphabets, bool) or not 0 <= c.val_alphabets <= 19:
            raise ValueError(f"Expected 0 <= val_alphabets <= 19. Received: val_alphabets={c.val_alphabets!r}")
        if recipe.validate is not None:
            recipe.validate(c)
        if not recipe.adapts and c.test_inner_steps != c.inner_steps:
            raise ValueError(f"Expected no test_inner_steps for {c.algo} (it has no inner loop). "
                             f"Received: test_inner_steps={c.test_inner_steps}")
        for name in ("inner_lr", "outer_lr"):
            value = getattr(c, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Expected {name} > 0. Received: {name}={value!r}")
        if c.torch_compile not in TORCH_COMPILE_CHOICES:
            raise ValueError(f"Expected torch_compile in {TORCH_COMPILE_CHOICES}. "
                             f"Received: torch_compile={c.torch_compile!r}")
        if c.floatx not in config.FLOATX_CHOICES:
            raise ValueError(f"Expected floatx in {config.FLOATX_CHOICES}. Received: floatx={c.floatx!r}")
        check_memory(c)
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
    #: The step whose parameters the test evaluated (the last, or with keep_best the best validated).
    tested_step: int | None = None

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    def summary(self) -> dict:
        return {"final_loss": self.final_loss, "metric_name": self.metric_name, "metric": self.metric,
                "metric_ci95": self.metric_ci95, "seconds_per_step": self.seconds_per_step, "data": self.data,
                "tested_step": self.tested_step}


def _flat_rows(a):
    """``[B, n, ...]`` → ``[B, n, features]`` (``[n, ...]`` → ``[n, features]`` with ``lead=1``)."""
    return a.reshape(a.shape[0], a.shape[1], -1)


class Experiment:
    """The model, algorithm and samplers that a resolved config describes,
    built from its recipes, with the few operations the training loop needs.

    ``input_shape`` given: no data is loaded (``sources`` is None), which is
    enough to rebuild the model, e.g. to export a checkpoint without the data.

    >>> exp = Experiment(ExperimentConfig(algo="protonet", steps=10).resolved())   # doctest: +SKIP
    >>> params = exp.init_params(0)                                              # doctest: +SKIP
    >>> loss, grads = exp.loss_and_grad(params, step=0)                          # doctest: +SKIP
    >>> name, values = exp.evaluate(params, episodes=100)                       # doctest: +SKIP
    """

    def __init__(self, c: ExperimentConfig, input_shape: tuple | None = None):
        self.c = c
        self.recipe = get_recipe(c.algo)
        self.dataset = get_dataset(c.dataset)
        self.sources = self.dataset.sources(c, self.recipe.trains_on) if input_shape is None else None
        shape = tuple(input_shape) if input_shape is not None else tuple(self.sources.input_shape)
        self.input_shape = shape
        self.algorithm = self.recipe.algorithm(c, self.recipe.model(c, shape, self.dataset), self.dataset)
        self.model = self.algorithm.model
        # A network of flat vectors (an MLP) on image data: examples are flattened at the boundary.
        self.flatten = len(tuple(self.model.input_shape)) == 1 and len(shape) > 1

    @property
    def metric_name(self) -> str:
        """The evaluation metric (``"accuracy"`` or ``"mse"``)."""
        return self.algorithm.metric_name

    @property
    def test_steps(self) -> int | None:
        """Inner steps at test time (None for algorithms that do not adapt)."""
        return self.c.test_inner_steps if self.algorithm.adapts else None

    def init_params(self, seed: int) -> dict:
        """Initial meta-parameters (numpy), e.g. Meta-SGD's weights and per-entry rates."""
        return self.algorithm.init(seed)

    def optimizer(self):
        """The outer optimizer: the algorithm's, with the config's learning rate (or step decay),
        keeping an average of the parameters with ``ema_decay``."""
        c = self.c
        lr = c.outer_lr if c.lr_decay_every is None else StepDecay(c.outer_lr, c.lr_decay_every, c.lr_decay)
        opt = self.algorithm.outer_optimizer(lr)
        return opt if c.ema_decay is None else ParameterAverage(opt, c.ema_decay)

    def train_batch(self, step: int, share: tuple[int, int] = (0, 1)):
        """Training batch ``step`` (a function of ``(seed, step)``), shaped for the model.

        ``share=(r, W)``: worker ``r``'s equal part of it. For episodes that is
        episodes ``step*B + r*B/W ...`` of the same sequence, i.e. the sampler's
        batch ``step*W + r`` of ``B/W`` tasks; for pairs, the ``r``-th slice of
        the step's pairs (drawn, and distorted, whole on every worker)."""
        rank, world = share
        if self.recipe.trains_on == "pairs":
            x1, x2, same = self.sources.train.batch(step)
            if world > 1:
                per = len(same) // world
                x1, x2, same = (a[rank * per:(rank + 1) * per] for a in (x1, x2, same))
            if self.flatten:
                x1, x2 = x1.reshape(len(x1), -1), x2.reshape(len(x2), -1)
            return PairBatch(x1, x2, same)
        per = self.c.meta_batch // world
        return self._flat(self.sources.train.batch(step * world + rank, per))

    def check_split(self, world: int) -> None:
        """A clear error when a training batch cannot be split over ``world``
        workers with the same result as one process."""
        if world <= 1:
            return
        per_step = self.c.meta_batch
        if self.recipe.trains_on == "pairs":
            sampler = self.sources.train
            per_step = sampler.batch_size if hasattr(sampler, "batch_size") else len(sampler.batch(0)[2])
        split_check(per_step, world, "meta_batch")
        reason = self.algorithm.batch_coupling()
        if reason is not None:
            raise ValueError(f"Expected a training batch whose tasks or pairs are independent for workers > 1. "
                             f"Received: {reason}, so a batch split over {world} workers would train a different "
                             f"model; run it as one process")

    def loss_and_grad(self, params, step: int, share: tuple[int, int] = (0, 1)):
        """``(loss, direction)`` of training step ``step`` (worker ``share[0]``'s
        part of it, of ``share[1]``) for the outer optimizer."""
        return self.algorithm.meta_value_and_grad(params, self.train_batch(step, share))

    def whole_step_compiled(self, backend: str) -> bool:
        """Whether the training step is compiled as one whole function
        (``optim.CompiledUpdate(whole_step=True)``). TensorFlow: always with
        ``compiled`` (the traced step is then called directly, which costs
        nothing extra). torch: ``torch_compile = "on"``, or ``"auto"`` for runs of
        at least ``TORCH_COMPILE_MIN_STEPS`` steps of a model that batches tasks
        (an MLP) on small batches, where a step is mostly per-op overhead
        (``torch.compile`` takes 20-40 s, and for a larger network's step eager
        torch already matches a hand-written loop)."""
        c = self.c
        if not c.compiled:
            return False
        if backend != "torch":
            return True
        if c.torch_compile != "auto":
            return c.torch_compile == "on"
        return (c.steps >= TORCH_COMPILE_MIN_STEPS and getattr(self.model, "task_batched", False)
                and self._small_batches())

    def _small_batches(self) -> bool:
        """Whether a training batch of episodes takes at most ``stepper.MAX_BATCH_BYTES``."""
        if self.recipe.trains_on == "pairs" or self.sources is None:
            return False
        batch = self.train_batch(0)
        size = sum(getattr(getattr(batch, f, None), "nbytes", 0) for f in ("support_x", "support_y", "query_x",
                                                                            "query_y"))
        return 0 < size <= MAX_BATCH_BYTES

    def steps_per_call(self, backend: str) -> int:
        """How many training steps one compiled call may run (see
        :mod:`metabridge.train.stepper`): several on TensorFlow's whole-step path
        when a training batch is small, else 1."""
        if backend != "tensorflow" or not self.whole_step_compiled(backend):
            return 1
        return STEPS_PER_CALL if self._small_batches() else 1

    def train_steps(self, params: dict, state: dict, step: int, count: int, update):
        """Steps ``step .. step + count - 1`` as one compiled call
        (``CompiledUpdate.fused_steps``): ``(losses, checks, done, new params,
        new state)``, or ``None`` when the algorithm has no compiled step
        function for these batches."""
        fused = []
        for s in range(step, step + count):
            f = self.algorithm.meta_gradient_function(self.train_batch(s))
            if f is None or (fused and f[0] != fused[0][0]):
                return None
            fused.append(f)
        stacked = tuple(ops.stack([f[1][j] for f in fused]) for j in range(len(fused[0][1])))
        return update.fused_steps(fused[0][0], stacked, params, state)

    def train_step(self, params: dict, state: dict, step: int, update):
        """One training step on one process: ``(loss, new params, new state, all
        finite)`` for batch ``step``, the meta-gradient and the optimizer step
        ``update`` (an ``optim.CompiledUpdate``) compiled together where the
        algorithm allows (:meth:`Algorithm.meta_gradient_function`)."""
        batch = self.train_batch(step)
        fused = self.algorithm.meta_gradient_function(batch) if hasattr(update, "fused") else None
        if fused is None:
            loss, direction = self.algorithm.meta_value_and_grad(params, batch)
            return (loss, *update(params, direction, state))
        return update.fused(*fused, params, state)

    def _flat(self, batch: TaskBatch) -> TaskBatch:
        """``batch`` with examples flattened when the model takes flat vectors."""
        if not self.flatten:
            return batch
        return TaskBatch(_flat_rows(batch.support_x), batch.support_y, _flat_rows(batch.query_x), batch.query_y)

    def _shaped(self, episodes: list) -> TaskBatch:
        return self._flat(TaskBatch.stack(episodes))

    def predict(self, params, episode: Episode) -> np.ndarray:
        """Query predictions (logits, or regression outputs) of one test episode,
        after adaptation where the algorithm adapts (numpy)."""
        b = self._shaped([episode])
        shaped = Episode(b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0])
        return ops.to_numpy(self.algorithm.predict_episode(params, shaped, self.test_steps))

    def evaluate(self, params, episodes: int | None = None, offset: int = 0,
                 validation: bool = False, workers=None) -> tuple[str, np.ndarray]:
        """Per-episode test metric over test episodes ``offset .. offset + episodes - 1``
        (default: the config's ``test_tasks`` from 0); ``validation=True`` samples
        the validation classes instead where the data set has them.

        ``workers`` (a :class:`~metabridge.train.distributed.Workers`): chunk
        ``k`` of 50 episodes is evaluated by worker ``k mod W``, exactly as one
        process evaluates it, and every worker gets all the values."""
        test = self.sources.val if validation and self.sources.val is not None else self.sources.test
        episodes = self.c.test_tasks if episodes is None else episodes
        rank, world = (0, 1) if workers is None else (workers.rank, workers.world)
        values, mine, chunk = [], [], 50
        for k, start in enumerate(range(0, episodes, chunk)):
            if k % world != rank:
                continue
            n = min(chunk, episodes - start)
            batch = self._shaped([test.episode(offset + start + j) for j in range(n)])
            values.append(self.algorithm.episode_metric(params, batch, self.test_steps))
            mine.append(np.arange(start, start + n))
        if workers is None:
            return self.metric_name, np.concatenate(values)
        values = np.concatenate(values) if values else np.zeros(0)
        positions = np.concatenate(mine) if mine else np.zeros(0, np.int64)
        return self.metric_name, workers.gather(values, positions, episodes)


def parity(a: RunResult, b: RunResult) -> dict:
    """Largest absolute difference of final parameters and largest relative
    difference along the loss curves of two runs."""
    max_param = max(float(np.max(np.abs(a.params[k].astype(np.float64) - b.params[k]))) for k in a.params)
    la, lb = np.asarray(a.losses, np.float64), np.asarray(b.losses, np.float64)
    rel = np.abs(la - lb) / np.maximum(np.maximum(np.abs(la), np.abs(lb)), 1e-300)
    return {"max_abs_param_diff": max_param, "max_rel_loss_diff": float(rel.max())}
