"""Device and precision settings at the public boundary."""
from __future__ import annotations

import numpy as np
import pytest

import metabridge as mb
from metabridge import ops
from metabridge.config import parse_device


@pytest.mark.parametrize("text, expected", [("cpu", ("cpu", 0)), ("gpu", ("gpu", 0)), ("GPU:1", ("gpu", 1)),
                                            ("cuda:2", ("gpu", 2))])
def test_parse_device(text, expected):
    assert parse_device(text) == expected


@pytest.mark.parametrize("bad", ["tpu", "gpu:x", "", None, 3])
def test_bad_device_names(bad):
    with pytest.raises(ValueError, match=r"Expected device to be 'cpu', 'gpu' or 'gpu:N'. Received: device="):
        parse_device(bad)


def test_set_device_cpu_places_tensors_on_cpu(backend):
    mb.set_device("cpu")
    assert mb.get_device() == "cpu"
    x = ops.asarray(np.ones(3))
    assert "cpu" in str(getattr(x, "device", "cpu")).lower()


def test_a_gpu_that_is_not_there_is_a_clear_error(backend):
    # 99 GPUs are not visible anywhere this runs; the error names the count and the request.
    with pytest.raises(ValueError, match=r"Expected a GPU index < \d+ \(GPUs visible to .*\). Received: device='gpu:99'"):
        mb.set_device("gpu:99")
    assert mb.get_device() == "cpu"


def test_floatx_round_trip():
    assert mb.floatx() == "float32"
    mb.set_floatx("float64")
    try:
        assert mb.floatx() == "float64"
    finally:
        mb.set_floatx("float32")
    with pytest.raises(ValueError, match=r"Expected floatx to be one of .*Received: floatx='half'"):
        mb.set_floatx("half")
