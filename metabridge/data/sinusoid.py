"""Sinusoid regression tasks, MAML's toy problem (Finn et al. 2017, §5.1)."""
from __future__ import annotations

import numpy as np

from metabridge.data.counter_rng import counter_uniforms
from metabridge.data.episodes import Episode, TaskBatch, _check_int


class SinusoidTasks:
    """``y = A sin(x - φ)`` with ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``, ``x ~ U[-5, 5]``.

    Task ``i`` is a pure function of ``(seed, i)`` (counter-based numbers, see
    :mod:`~metabridge.data.counter_rng`: a meta-batch is drawn in one vectorised
    call). ``shots`` support and ``queries`` query points per task, shaped ``[n, 1]``.

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

    def _draw(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Amplitudes ``[T]``, phases ``[T]`` and inputs ``[T, shots + queries]`` of tasks ``indices``."""
        u = counter_uniforms(self.seed, indices, 2 + self.shots + self.queries)
        (a0, a1), (p0, p1), (x0, x1) = self.amplitude_range, self.phase_range, self.x_range
        return a0 + (a1 - a0) * u[:, 0], p0 + (p1 - p0) * u[:, 1], x0 + (x1 - x0) * u[:, 2:]

    def task_parameters(self, index: int) -> tuple[float, float]:
        """The ``(amplitude, phase)`` of task ``index``."""
        amp, phase, _ = self._draw([_check_int("index", index, 0)])
        return float(amp[0]), float(phase[0])

    def _tasks(self, indices) -> tuple[np.ndarray, ...]:
        amp, phase, x = self._draw(indices)
        y = amp[:, None] * np.sin(x - phase[:, None])
        x, y = x[..., None].astype(self.dtype), y[..., None].astype(self.dtype)
        k = self.shots
        return x[:, :k], y[:, :k], x[:, k:], y[:, k:]

    def episode(self, index: int) -> Episode:
        return Episode(*(a[0] for a in self._tasks([_check_int("index", index, 0)])))

    def batch(self, step: int, meta_batch: int) -> TaskBatch:
        meta_batch = _check_int("meta_batch", meta_batch, 1)
        start = _check_int("step", step, 0) * meta_batch
        return TaskBatch(*self._tasks(np.arange(start, start + meta_batch)))
