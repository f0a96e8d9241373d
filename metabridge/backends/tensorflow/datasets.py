"""``tf.data`` datasets as metabridge data sets. Mirrors ``backends/torch/datasets.py``.

>>> from metabridge.backends.tensorflow.datasets import to_array_dataset
>>> ds = to_array_dataset(tfds.load("cifar10", split="train", as_supervised=True))   # doctest: +SKIP
>>> EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)                         # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from metabridge.data.collect import collect_examples
from metabridge.data.episodes import ArrayDataset

__all__ = ["to_array_dataset", "to_numpy"]


def to_numpy(value: Any) -> np.ndarray:
    """A tensor, number or array as a numpy array."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.numpy()
    return np.asarray(value)


def _items(ds):
    """A ``tf.data.Dataset`` is read with ``as_numpy_iterator()``; anything else by iterating it."""
    if isinstance(ds, tf.data.Dataset):
        return ds.as_numpy_iterator()
    return iter(ds)


def to_array_dataset(ds, name: str = "tf.data dataset", layout: str = "NHWC",
                     keys: Sequence[str] = ("image", "label")) -> ArrayDataset:
    """Materialise a ``tf.data.Dataset`` (or any iterable) of ``(x, y)`` (or dicts with
    ``keys``, as TensorFlow Datasets gives without ``as_supervised``) into an
    :class:`ArrayDataset`.

    Batches (``y`` of shape ``[b]``) are concatenated. ``layout="NCHW"`` for images
    ``[C, H, W]`` turns them to NHWC.

    >>> ds = to_array_dataset(tf.data.Dataset.from_tensor_slices((images, labels)).batch(64))  # doctest: +SKIP
    """
    return collect_examples(_items(ds), name=name, layout=layout, keys=keys, to_numpy=to_numpy)
