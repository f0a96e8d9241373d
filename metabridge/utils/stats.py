"""Evaluation statistics: mean ± 95% confidence interval over test tasks."""
from __future__ import annotations

import numpy as np


def mean_ci95(values) -> tuple[float, float]:
    """``(mean, half-width of the 95% CI)`` using the normal approximation
    ``1.96 * std / sqrt(n)`` (sample std, ``ddof=1``), as few-shot papers report.

    >>> mean_ci95([1.0, 2.0, 3.0])
    (2.0, 1.1316065276531284)
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("Expected at least one value. Received: an empty array")
    if arr.size == 1:
        return float(arr[0]), 0.0
    return float(arr.mean()), float(1.96 * arr.std(ddof=1) / np.sqrt(arr.size))
