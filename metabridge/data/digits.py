"""The 8×8 handwritten digits that scikit-learn ships, as a few-shot dataset."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from metabridge.data.episodes import ArrayDataset

TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)


def load_digits(split: str = "train", classes: Sequence[int] | None = None,
                dtype: str = "float32") -> ArrayDataset:
    """Digits as NHWC images ``[n, 8, 8, 1]`` scaled to [0, 1], integer labels.

    ``split="train"`` keeps classes 0-4 and ``"test"`` the held-out 5-9 (few-shot
    evaluation is on classes never seen in training); ``classes`` overrides.
    Labels keep their digit value. Needs scikit-learn (no download: the data
    ships inside the package).

    >>> ds = load_digits("test")
    >>> ds.x.shape[1:], ds.num_classes
    ((8, 8, 1), 5)
    """
    if classes is None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"Expected split in ('train', 'test', 'all'). Received: split={split!r}")
        classes = {"train": TRAIN_CLASSES, "test": TEST_CLASSES, "all": tuple(range(10))}[split]
    bad = [c for c in classes if c not in range(10)]
    if bad or not classes:
        raise ValueError(f"Expected classes within 0..9. Received: classes={tuple(classes)!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("The digits dataset needs scikit-learn: pip install scikit-learn") from exc
    raw = _sk_load_digits()
    keep = np.isin(raw.target, list(classes))
    x = (raw.images[keep] / 16.0).astype(dtype)[..., None]
    return ArrayDataset(x, raw.target[keep].astype(np.int64), name=f"digits[{split}]")
