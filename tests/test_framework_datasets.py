"""A torch.utils.data.Dataset and a tf.data.Dataset feed episode samplers whose episodes equal
those sampled from the same arrays directly (issue 13)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from metabridge.data import ArrayDataset, EpisodeSampler
from conftest import expect_value_error


def arrays(n_classes=6, per_class=9, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(y)
    x = rng.standard_normal((len(y), 5, 5, 3)).astype(np.float32)
    return x, y


def sources(backend, x, y):
    """The same examples as framework datasets: {description: (dataset, layout)}."""
    if backend == "torch":
        import torch
        from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

        class Pairs(Dataset):
            def __len__(self):
                return len(y)

            def __getitem__(self, i):
                return torch.from_numpy(x[i]), int(y[i])

        class Stream(IterableDataset):
            def __iter__(self):
                return ({"image": torch.from_numpy(a), "label": torch.tensor(b)} for a, b in zip(x, y))

        nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return {"map-style": (Pairs(), "NHWC"), "iterable dicts": (Stream(), "NHWC"),
                "DataLoader batches": (DataLoader(Pairs(), batch_size=7, shuffle=False), "NHWC"),
                "TensorDataset NCHW": (TensorDataset(nchw, torch.from_numpy(y)), "NCHW")}
    import tensorflow as tf

    pairs = tf.data.Dataset.from_tensor_slices((x, y))
    return {"pairs": (pairs, "NHWC"), "batched": (pairs.batch(7), "NHWC"),
            "dicts": (tf.data.Dataset.from_tensor_slices({"image": x, "label": y}), "NHWC"),
            "NCHW": (tf.data.Dataset.from_tensor_slices((x.transpose(0, 3, 1, 2), y)), "NCHW")}


def test_adapted_datasets_give_the_same_episodes(backend):
    module = importlib.import_module(f"metabridge.backends.{backend}.datasets")
    x, y = arrays()
    direct = EpisodeSampler(ArrayDataset(x, y, name="arrays"), ways=4, shots=2, queries=3, seed=5)
    for what, (source, layout) in sources(backend, x, y).items():
        ds = module.to_array_dataset(source, name=what, layout=layout)
        np.testing.assert_array_equal(ds.x, x, err_msg=what)
        np.testing.assert_array_equal(ds.y, y, err_msg=what)
        adapted = EpisodeSampler(ds, ways=4, shots=2, queries=3, seed=5)
        for step in range(3):
            a, b = adapted.batch(step, 4), direct.batch(step, 4)
            for f in ("support_x", "support_y", "query_x", "query_y"):
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f"{what} {f}")


def test_both_backends_have_the_same_public_names():
    names = {}
    for b in ("torch", "tensorflow"):
        try:
            names[b] = set(importlib.import_module(f"metabridge.backends.{b}.datasets").__all__)
        except ImportError:
            pytest.skip(f"{b} not installed")
    assert names["torch"] == names["tensorflow"] == {"to_array_dataset", "to_numpy"}


def test_bad_elements_are_named(backend):
    module = importlib.import_module(f"metabridge.backends.{backend}.datasets")
    x, y = arrays()
    expect_value_error(lambda: module.to_array_dataset([(x[0], 0.5)], name="mine"), "integer labels", "mine")
    expect_value_error(lambda: module.to_array_dataset([x[0]], name="mine"), "(x, y) pairs", "element 0")
    expect_value_error(lambda: module.to_array_dataset([(x[0], 0), (x[0, :3], 1)], name="mine"), "element 1")
    expect_value_error(lambda: module.to_array_dataset([], name="mine"), "at least one element")
    expect_value_error(lambda: module.to_array_dataset([(x[0], 0)], layout="CHW"), "layout in")
    expect_value_error(lambda: module.to_array_dataset([{"img": x[0]}], name="mine"), "keys", "img")
