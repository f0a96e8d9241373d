"""Labelled examples from any iterable of ``(x, y)`` into an :class:`ArrayDataset` (numpy only).

The framework adapters (``metabridge.backends.<name>.datasets.to_array_dataset``)
turn framework tensors into numpy and hand the items to :func:`collect_examples`;
the checks and the stacking live here, once.

>>> ds = collect_examples([(np.zeros((2, 2, 1)), 0), (np.ones((2, 2, 1)), 1)], name="mine")
>>> ds.x.shape, ds.y.tolist()
((2, 2, 2, 1), [0, 1])
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np

from metabridge.data.episodes import ArrayDataset

__all__ = ["collect_examples", "LAYOUTS"]

LAYOUTS = ("NHWC", "NCHW")


def _pair(item, keys: Sequence[str], index: int, name: str):
    if isinstance(item, dict):
        missing = [k for k in keys if k not in item]
        if missing:
            raise ValueError(f"Expected elements with keys {tuple(keys)} in {name}. "
                             f"Received: element {index} has keys {sorted(map(str, item))}")
        return item[keys[0]], item[keys[1]]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise ValueError(f"Expected (x, y) pairs or dicts with keys {tuple(keys)} in {name}. "
                     f"Received: element {index} is {type(item).__name__}")


def collect_examples(items: Iterable[Any], name: str = "dataset", layout: str = "NHWC",
                     keys: Sequence[str] = ("image", "label"),
                     to_numpy: Callable[[Any], np.ndarray] = np.asarray) -> ArrayDataset:
    """Stack ``(x, y)`` elements (or dicts with ``keys``) into an :class:`ArrayDataset`.

    An element whose ``y`` is a scalar is one example; one whose ``y`` is 1-D is a
    batch (``x`` has the same leading size). ``layout="NCHW"`` turns 4-D image
    batches to the canonical NHWC. Labels must be integers.

    >>> collect_examples(zip(images, labels), name="my data").num_classes      # doctest: +SKIP
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Expected layout in {LAYOUTS}. Received: layout={layout!r}")
    xs, ys = [], []
    for index, item in enumerate(items):
        x, y = _pair(item, keys, index, name)
        x, y = to_numpy(x), np.asarray(to_numpy(y))
        if y.ndim == 0:
            x, y = x[None], y[None]
        elif y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"Expected a scalar label (or a batch of labels [b] with x [b, ...]) in {name}. "
                             f"Received: element {index} has y.shape={y.shape}, x.shape={np.shape(x)}")
        if y.dtype.kind == "f" and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        if y.dtype.kind not in "iu":
            raise ValueError(f"Expected integer labels in {name}. Received: element {index} has y.dtype={y.dtype}")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise ValueError(f"Expected every x of {name} to have the shape {xs[0].shape[1:]}. "
                             f"Received: element {index} has {x.shape[1:]}")
        xs.append(x)
        ys.append(y.astype(np.int64))
    if not xs:
        raise ValueError(f"Expected at least one element in {name}. Received: none")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if layout == "NCHW":
        if x.ndim != 4:
            raise ValueError(f"Expected images [n, C, H, W] for layout='NCHW' in {name}. Received: x.shape={x.shape}")
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return ArrayDataset(x, y, name=name)
