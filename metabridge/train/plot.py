"""Learning curves of run directories (``metabridge plot``), with matplotlib.

>>> plot_runs(["runs/protonet-torch", "runs/protonet-tf"], "curves.png")   # doctest: +SKIP
'curves.png'
"""
from __future__ import annotations

import os

import numpy as np

from metabridge.utils.atomic import atomic_file
from metabridge.train.run_dir import RunDir


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[:window - 1]) / np.arange(1, window)   # growing window at the start
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def _is_monitor(key: str) -> bool:
    return key.startswith(("val_", "monitor_")) and not key.endswith("ci95")


def plot_runs(paths: list[str], output: str, smooth: int = 20) -> str:
    """Training loss (smoothed over ``smooth`` steps) and, where logged, validation
    metric of each run, overlaid; written atomically to ``output``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("Expected matplotlib for `metabridge plot`. Received: it is not installed "
                          "(pip install 'metabridge[plot]')") from None
    if not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"Expected smooth >= 1. Received: smooth={smooth!r}")
    runs = [RunDir.open(p) for p in paths]
    curves = [(r, r.read_metrics()) for r in runs]
    has_val = any(any(_is_monitor(k) for k in m) for _, ms in curves for m in ms)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(10 if has_val else 6, 4), squeeze=False)
    for run, metrics in curves:
        label = f"{os.path.basename(os.path.normpath(run.path))} ({run.config.algo}, {run.backend})"
        steps = np.array([m["step"] for m in metrics if "loss" in m])
        if steps.size == 0:
            raise ValueError(f"Expected logged steps in {run.metrics_path}. Received: none")
        loss = np.array([m["loss"] for m in metrics if "loss" in m])
        axes[0, 0].plot(steps, _smooth(loss, smooth), label=label)
        if has_val:
            val = [(m["step"], v) for m in metrics for k, v in m.items() if _is_monitor(k)]
            if val:
                s, v = zip(*val)
                axes[0, 1].plot(s, v, marker="o", label=label)
    axes[0, 0].set(xlabel="meta-training step", ylabel=f"training loss (moving average, {smooth} steps)")
    if has_val:
        keys = sorted({k for _, ms in curves for m in ms for k in m if _is_monitor(k)})
        axes[0, 1].set(xlabel="meta-training step", ylabel=" / ".join(keys))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fmt = os.path.splitext(output)[1].lstrip(".") or "png"
    with atomic_file(output) as fh:
        fig.savefig(fh, format=fmt, dpi=100)
    plt.close(fig)
    return output
