"""``torch.utils.data`` datasets as metabridge data sets. Mirrors ``backends/tensorflow/datasets.py``.

>>> from metabridge.backends.torch.datasets import to_array_dataset
>>> ds = to_array_dataset(torchvision_dataset, name="cifar10", layout="NCHW")   # doctest: +SKIP
>>> EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)                       # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from metabridge.data.collect import collect_examples
from metabridge.data.episodes import ArrayDataset

__all__ = ["to_array_dataset", "to_numpy"]


def to_numpy(value: Any) -> np.ndarray:
    """A tensor (any device), PIL image, number or array as a numpy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _items(ds):
    """Map-style datasets are read by index ``0..len-1``; anything else (an
    ``IterableDataset``, a ``DataLoader``) by iterating it."""
    if (isinstance(ds, torch.utils.data.Dataset) and not isinstance(ds, torch.utils.data.IterableDataset)
            and hasattr(ds, "__len__")):
        return (ds[i] for i in range(len(ds)))
    return iter(ds)


def to_array_dataset(ds, name: str = "torch dataset", layout: str = "NHWC",
                     keys: Sequence[str] = ("image", "label")) -> ArrayDataset:
    """Materialise a ``torch.utils.data.Dataset`` (map-style or iterable) or a ``DataLoader``
    of ``(x, y)`` (or dicts with ``keys``) into an :class:`ArrayDataset`.

    Batches (``y`` of shape ``[b]``) are concatenated. ``layout="NCHW"`` for image
    tensors ``[C, H, W]`` (e.g. torchvision's ``ToTensor``) turns them to NHWC.

    >>> ds = to_array_dataset(TensorDataset(torch.rand(100, 3, 8, 8), torch.arange(100) % 5),
    ...                       layout="NCHW")                                      # doctest: +SKIP
    >>> ds.x.shape                                                                # doctest: +SKIP
    (100, 8, 8, 3)
    """
    return collect_examples(_items(ds), name=name, layout=layout, keys=keys, to_numpy=to_numpy)
