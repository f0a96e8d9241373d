"""Sinusoid regression tasks, MAML's toy problem (Finn et al. 2017, §5.1)."""
from __future__ import annotations

import numpy as np

from metabridge.data.episodes import Episode, TaskBatch, _check_int


class SinusoidTasks:
    """``y = A sin(x - φ)`` with ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``, ``x ~ U[-5, 5]``.

    Task ``i`` is a pure function of ``(seed, i)``. ``shots`` support and
    ``queries`` query points per task, shaped ``[n, 1]``.

    >>> tasks = SinusoidTasks(shots=10, queries=10, seed=0)
    >>> ep = tasks.episode(0)
    >>> ep.support_x.shape, ep.query_y.shape
    ((10, 1), (10, 1))
    """

    amplitude_range = (0.1, 5.0)
    phase_range = (0.0, np.pi)
    x_range = (-5.0, 5.0)

    def __init__(self, shots: int = 10, queries: int = 10, seed: int = 0, dtype: str = "float32"):
        self.shots = _check_int("shots", shots, 1)
        self.queries = _check_int("queries", queries, 1)
        self.seed = _check_int("seed", seed, 0)
        self.dtype = dtype

    def task_parameters(self, index: int) -> tuple[float, float]:
        """The ``(amplitude, phase)`` of task ``index``."""
        rng = np.random.default_rng([self.seed, _check_int("index", index, 0)])
        return float(rng.uniform(*self.amplitude_range)), float(rng.uniform(*self.phase_range))

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, _check_int("index", index, 0)])
        amp, phase = rng.uniform(*self.amplitude_range), rng.uniform(*self.phase_range)
        x = rng.uniform(*self.x_range, size=(self.shots + self.queries, 1))
        y = amp * np.sin(x - phase)
        x, y = x.astype(self.dtype), y.astype(self.dtype)
        k = self.shots
        return Episode(x[:k], y[:k], x[k:], y[k:])

    def batch(self, step: int, meta_batch: int) -> TaskBatch:
        meta_batch = _check_int("meta_batch", meta_batch, 1)
        start = _check_int("step", step, 0) * meta_batch
        return TaskBatch.stack([self.episode(start + j) for j in range(meta_batch)])
