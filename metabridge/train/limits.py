"""Up-front memory estimates: a config that cannot fit is refused before any data loads.

The estimate is the input arrays of one training meta-batch and of one chunk of
50 test episodes: ``meta_batch × ways × (shots + queries) × example bytes``
(an example of an image data set: ``image_size² × 3`` values of ``floatx``,
84 pixels when no size is given; of a regression data set: 1 value). Networks
need several times this for activations, so a config whose *inputs* alone
exceed half of the machine's memory can never run.

>>> check_memory(ExperimentConfig(algo="maml", dataset="sinusoid").resolved())   # doctest: +SKIP
>>> input_bytes(ExperimentConfig(algo="maml", dataset="sinusoid", meta_batch=10**9).resolved()) > 10**12  # doctest: +SKIP
True
"""
from __future__ import annotations

import os

from metabridge.recipes import get_dataset

EVAL_CHUNK = 50          # test episodes evaluated at once (Experiment.evaluate)
DEFAULT_IMAGE_SIDE = 84  # the largest default image side of the built-in image data sets


def memory_limit() -> int:
    """Bytes a config's inputs may take: half of physical memory
    (``METABRIDGE_MEMORY_LIMIT`` in bytes overrides it)."""
    env = os.environ.get("METABRIDGE_MEMORY_LIMIT")
    if env:
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"Expected METABRIDGE_MEMORY_LIMIT in bytes. Received: {env!r}") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def input_bytes(c) -> int:
    """Estimated bytes of one training meta-batch plus one evaluation chunk of a resolved config."""
    itemsize = 8 if c.floatx == "float64" else 4
    if getattr(get_dataset(c.dataset), "task", "classification") == "classification":
        side = c.image_size or DEFAULT_IMAGE_SIDE
        example = side * side * 3 * itemsize
    else:
        example = itemsize
    ways, test_ways = max(c.ways or 1, 1), max(c.test_ways or 1, 1)
    train = c.meta_batch * ways * (c.shots + c.queries) * example
    test = EVAL_CHUNK * test_ways * (c.test_shots + c.queries) * example
    return int(train + test)


def check_memory(c) -> None:
    """Raise a clear error naming the sizes when a resolved config's inputs cannot fit.

    >>> check_memory(ExperimentConfig(meta_batch=10**9).resolved())   # doctest: +SKIP
    ValueError: Expected a config whose inputs fit in memory ...
    """
    need, limit = input_bytes(c), memory_limit()
    if need > limit:
        raise ValueError(
            f"Expected a config whose inputs fit in memory (at most {limit / 2**30:.1f} GiB, half of this "
            f"machine's). Received: meta_batch={c.meta_batch} × ways={c.ways} × (shots={c.shots} + "
            f"queries={c.queries}) with image_size={c.image_size} needs about {need / 2**30:.3g} GiB for its inputs "
            f"alone")
