"""Data-parallel meta-training: which worker this process is, and the few
collective steps the training loop takes (framework-free; the collectives
themselves are the backends' ``distributed`` modules: ``torch.distributed``
and ``tf.distribute``).

At step ``s`` worker ``r`` of ``W`` computes the mean loss and direction of its
share of the step's tasks (episodes ``s*B + r*B/W ... s*B + (r+1)*B/W - 1``,
the same episodes one process would see), one all-reduce sums the shares and
every worker divides by ``W`` and applies the same outer update. Only worker 0
writes to the run directory.

The group comes from the environment:

* ``torchrun`` (or ``--workers N`` on the torch backend): ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
* ``TF_CONFIG`` with a ``worker`` cluster (or ``--workers N`` on TensorFlow).

>>> from_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
WorldSpec(rank=1, world=2, local_rank=1, engine='torch', source='torchrun variables (RANK/WORLD_SIZE)')
>>> from_env({}) is None
True
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass

import numpy as np

from metabridge import backend as backends
from metabridge import config, ops

TIMEOUT_ENV = "METABRIDGE_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0


class WorkerLost(RuntimeError):
    """A collective failed: another worker died, hung past the timeout or left."""


@dataclass(frozen=True)
class WorldSpec:
    """Where this process sits in a group of workers, read from the environment."""

    rank: int
    world: int
    local_rank: int
    engine: str  # the backend whose collectives the environment configures
    source: str


def _env_int(environ, name: str) -> int:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Expected an integer in the environment variable {name}. Received: {name}={value!r}") \
            from None


def from_env(environ=None) -> WorldSpec | None:
    """The group this process belongs to, or None for a single process."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" in environ and _env_int(environ, "WORLD_SIZE") > 1:
        world, rank = _env_int(environ, "WORLD_SIZE"), _env_int(environ, "RANK")
        local = _env_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not environ.get(name):
                raise ValueError(f"Expected {name} beside WORLD_SIZE={world} (torchrun sets both). "
                                 f"Received: no {name}")
        if not 0 <= rank < world:
            raise ValueError(f"Expected 0 <= RANK < WORLD_SIZE. Received: RANK={rank}, WORLD_SIZE={world}")
        return WorldSpec(rank, world, local, "torch", "torchrun variables (RANK/WORLD_SIZE)")
    raw = environ.get("TF_CONFIG")
    if raw:
        try:
            tf_config = json.loads(raw)
            workers = tf_config["cluster"]["worker"]
            task = tf_config["task"]
            rank = int(task["index"])
        except (ValueError, KeyError, TypeError):
            raise ValueError("Expected TF_CONFIG as JSON with cluster.worker (a list of host:port) and "
                             "task.type/task.index. Received: TF_CONFIG=" + raw[:200]) from None
        if task.get("type") != "worker" or not 0 <= rank < len(workers):
            raise ValueError(f"Expected TF_CONFIG's task to be a worker with 0 <= index < {len(workers)}. "
                             f"Received: task={task}")
        if len(workers) > 1:
            return WorldSpec(rank, len(workers), rank, "tensorflow", "TF_CONFIG")
    return None


def collective_timeout(environ=None) -> float:
    """Seconds a collective may wait for the others (``METABRIDGE_COLLECTIVE_TIMEOUT``, default 300).

    >>> collective_timeout({"METABRIDGE_COLLECTIVE_TIMEOUT": "60"})
    60.0
    """
    raw = (os.environ if environ is None else environ).get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        timeout = float(raw)
    except ValueError:
        timeout = float("nan")
    if not (timeout > 0 and timeout != float("inf")):
        raise ValueError(f"Expected {TIMEOUT_ENV} > 0 (seconds). Received: {TIMEOUT_ENV}={raw!r}")
    return timeout


class Workers:
    """This process's place in a data-parallel group and the collective steps
    of training, over the backend's own engine.

    >>> group = Workers.connect(from_env(), "torch")     # doctest: +SKIP
    >>> loss, direction = group.mean(loss, direction)    # doctest: +SKIP
    """

    def __init__(self, spec: WorldSpec, collective):
        self.spec = spec
        self.collective = collective
        self.rank, self.world = spec.rank, spec.world
        self.engine = collective.engine

    @property
    def is_main(self) -> bool:
        """Worker 0: the one that writes to the run directory and the terminal."""
        return self.rank == 0

    @classmethod
    def connect(cls, spec: WorldSpec, backend: str) -> "Workers":
        """Join the group of ``spec`` on ``backend``'s engine (blocks until all have joined)."""
        name = backends.canonical_name(backend)
        if spec.engine != name:
            raise ValueError(f"Expected the {name} backend's launcher variables "
                             f"({'TF_CONFIG' if name == 'tensorflow' else 'torchrun: RANK/WORLD_SIZE'}) for "
                             f"{spec.world} {name} workers. Received: {spec.source}, which configures "
                             f"{spec.engine} workers")
        timeout = collective_timeout()
        backends.load(name)
        if config.get_device() != "cpu":  # one GPU per worker of a node: the one of its local rank
            config.set_device(f"gpu:{spec.local_rank}")
        module = importlib.import_module(f"{backends.record(name).package}.distributed")
        try:
            collective = module.Collective(spec.rank, spec.world, timeout)
        except Exception as exc:
            raise WorkerLost(f"Could not join the group of {spec.world} workers as worker {spec.rank} "
                             f"({spec.source}): {_first_line(exc)}") from exc
        return cls(spec, collective)

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            raise WorkerLost(f"Lost the group during {what} (this is worker {self.rank} of {self.world}, "
                             f"{self.engine}): {_first_line(exc)}") from exc

    def mean(self, loss, direction: dict, step: int) -> tuple:
        """Loss and direction averaged over the workers' equal shares of a step."""
        keys = sorted(direction)
        loss = ops.asarray(loss)
        parts = [ops.reshape(loss, (1,))] + [direction[k] for k in keys]
        summed = self._call(f"the all-reduce of step {step}", self.collective.all_reduce_sum, parts)
        inv = 1.0 / self.world
        return ops.reshape(summed[0], ()) * inv, {k: v * inv for k, v in zip(keys, summed[1:])}

    def broadcast_state(self, params: dict, state: dict, start: int, seconds: float) -> tuple:
        """Worker 0's parameters, optimizer state and position on every worker."""
        keys = sorted(params)  # sorted: a loaded checkpoint's order need not be a fresh state's
        slots = sorted(k for k in state if k != "step")
        tensors = self._call("the start-up broadcast", self.collective.broadcast,
                             [params[k] for k in keys] + [state[k] for k in slots])
        got = self._broadcast_numbers([start, int(state["step"]), seconds])
        new_params = dict(zip(keys, tensors[:len(keys)]))
        new_state = {"step": int(got[1]), **dict(zip(slots, tensors[len(keys):]))}
        return new_params, new_state, int(got[0]), float(got[2])

    def _broadcast_numbers(self, numbers: list) -> np.ndarray:
        """Worker 0's ``numbers`` (steps, seconds, flags: exact in float64) on every worker."""
        with config.use_floatx("float64"):
            out = self._call("the start-up broadcast", self.collective.broadcast,
                             [ops.asarray(np.asarray(numbers, dtype=np.float64))])
        return ops.to_numpy(out[0])

    def broadcast_best(self, best, params: dict):
        """Worker 0's kept best validation ``(value, step, params)`` (or None) on every worker."""
        keys = sorted(params)
        mine = best[2] if best is not None else params
        tensors = self._call("the start-up broadcast", self.collective.broadcast, [mine[k] for k in keys])
        got = self._broadcast_numbers([0.0, 0.0, 0.0] if best is None else [1.0, best[0], best[1]])
        return None if got[0] == 0 else (float(got[1]), int(got[2]), dict(zip(keys, tensors)))

    def gather(self, values: np.ndarray, mine: np.ndarray, total: int) -> np.ndarray:
        """Every worker's per-episode values as one array of ``total``: worker
        ``r`` holds ``values`` at positions ``mine``; the others add zeros."""
        full = np.zeros(total, dtype=np.float64)
        full[mine] = values
        with config.use_floatx("float64"):
            out = self._call("the gathering of evaluation results", self.collective.all_reduce_sum,
                             [ops.asarray(full)])
        return ops.to_numpy(out[0])

    def close(self) -> None:
        self.collective.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if "task" in ln.lower() or "peer" in ln.lower() or "connection" in ln.lower()]
    return f"{type(exc).__name__}: {(keep or lines or [''])[0].strip()[:300]}"


def split_check(batch_size: int, world: int, what: str = "meta_batch") -> int:
    """Tasks per worker; a clear error when ``batch_size`` does not split evenly.

    >>> split_check(32, 4)
    8
    """
    if world > batch_size:
        raise ValueError(f"Expected workers <= {what} (each worker takes at least one of the step's "
                         f"{'tasks' if what == 'meta_batch' else 'items'}). Received: workers={world}, "
                         f"{what}={batch_size}")
    if batch_size % world:
        raise ValueError(f"Expected {what} divisible by the number of workers (each takes an equal share, so "
                         f"the mean over shares is the mean over the batch). Received: {what}={batch_size}, "
                         f"workers={world}")
    return batch_size // world
