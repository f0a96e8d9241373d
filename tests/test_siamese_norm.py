"""Siamese networks with a batch-norm encoder: the two sets of a pair batch (an
episode's support and query sets) normalised jointly or per set, and one-shot
evaluation with shifted copies — the loss, its gradient and one-shot predictions
against numpy, and bad values."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_directional_derivatives, expect_value_error, perturbed_init
from test_nn import np_conv4

from metabridge import ops
from metabridge.algorithms import Siamese
from metabridge.nn.siamese_encoders import Conv4Embedding


def _net(norm: str, **kw) -> Siamese:
    return Siamese(Conv4Embedding((16, 16, 1), channels=4, last_pool=False), loss="softmax", distance="l2",
                   pairs="all-in-batch", norm=norm, **kw)


def _setup(norm: str, seed: int, n1: int, n2: int, **kw):
    """A network, perturbed parameters, a generator and two random sets of 16x16 images."""
    net = _net(norm, **kw)
    rng = np.random.default_rng(seed)
    return net, perturbed_init(net, seed=seed), rng, rng.uniform(size=(n1, 16, 16, 1)), \
        rng.uniform(size=(n2, 16, 16, 1))


def _np_embed_both(p, a, b, norm):
    """numpy Conv4 (batch statistics) of the two sets, jointly or one set at a time."""
    if norm == "per-set":
        return np_conv4(p, a, head=False, last_pool=False), np_conv4(p, b, head=False, last_pool=False)
    e = np_conv4(p, np.concatenate([a, b]), head=False, last_pool=False)
    return e[:len(a)], e[len(a):]


def _np_softmax_loss(p, x1, x2, norm):
    e1, e2 = _np_embed_both(p, x1, x2, norm)
    w, b = np.logaddexp(0.0, p["head.kernel"][0, 0]), p["head.bias"][0]
    z = b - w * np.linalg.norm(e1[:, None] - e2[None], axis=-1)
    rows = np.log(np.exp(z).sum(1)) - np.diag(z)
    cols = np.log(np.exp(z).sum(0)) - np.diag(z)
    return 0.5 * (rows.mean() + cols.mean())


@pytest.mark.parametrize("norm", ["joint", "per-set"])
def test_softmax_loss_matches_numpy(backend, float64, norm):
    net, params, _, x1, x2 = _setup(norm, 3, 6, 6)
    value, _ = net.value_and_grad(params, x1, x2, np.ones(6))
    want = _np_softmax_loss(params, x1, x2, norm)
    assert abs(float(ops.to_numpy(value)) - want) <= 1e-10 * abs(want)


def test_per_set_statistics_change_the_loss(backend, float64):
    """The two modes differ when the sets' statistics do (here: the second set is brighter)."""
    params = perturbed_init(_net("joint"), seed=4)
    rng = np.random.default_rng(4)
    x1, x2 = rng.uniform(size=(6, 16, 16, 1)), 0.5 + rng.uniform(size=(6, 16, 16, 1))
    joint, per_set = (float(ops.to_numpy(_net(n).pair_loss(params, x1, x2, np.ones(6)))) for n in ("joint", "per-set"))
    assert abs(joint - per_set) > 1e-3 * abs(joint)


def test_per_set_gradient_matches_finite_differences(backend, float64):
    net, params, rng, x1, x2 = _setup("per-set", 5, 5, 5)
    _, grads = net.value_and_grad(params, x1, x2, np.ones(5))
    assert_directional_derivatives(lambda p: float(ops.to_numpy(net.pair_loss(p, x1, x2, np.ones(5)))), params,
                                   grads, rng, directions=3)


@pytest.mark.parametrize("norm", ["joint", "per-set"])
def test_one_shot_predictions_match_numpy(backend, float64, norm):
    net, params, _, support, query = _setup(norm, 6, 8, 12)
    labels = np.arange(8) + 10
    es, eq = _np_embed_both(params, support, query, norm)
    want = labels[np.linalg.norm(eq[:, None] - es[None], axis=-1).argmin(1)]
    got = net.one_shot_predictions(params, support, labels, query)
    np.testing.assert_array_equal(got, want)


def _np_shift(x, dy, dx):
    """One-pixel shift, the vacated row or column repeating the edge (numpy's edge padding)."""
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return padded[:, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


@pytest.mark.parametrize("norm", ["joint", "per-set"])
def test_shift_augmented_predictions_match_numpy(backend, float64, norm):
    net, params, rng, support, query = _setup(norm, 7, 8, 12, test_augment="shifts")
    labels = np.arange(8)
    shifts = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    pairs = [_np_embed_both(params, _np_shift(support, *d), _np_shift(query, *d), norm) for d in shifts]
    es, eq = np.mean([p[0] for p in pairs], 0), np.mean([p[1] for p in pairs], 0)
    got_es, got_eq = (ops.to_numpy(e) for e in net.embed_episode(params, support, query))
    np.testing.assert_allclose(got_es, es, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_eq, eq, rtol=1e-10, atol=1e-12)
    want = labels[np.linalg.norm(eq[:, None] - es[None], axis=-1).argmin(1)]
    np.testing.assert_array_equal(net.one_shot_predictions(params, support, labels, query), want)
    # training is unchanged by the option
    x1, x2 = rng.uniform(size=(4, 16, 16, 1)), rng.uniform(size=(4, 16, 16, 1))
    plain = _net(norm)
    assert float(ops.to_numpy(net.pair_loss(params, x1, x2, np.ones(4)))) == \
        float(ops.to_numpy(plain.pair_loss(params, x1, x2, np.ones(4))))


def test_bad_norm():
    from metabridge.train.experiment import ExperimentConfig

    expect_value_error(lambda: _net("batch"), "norm in", "'batch'")
    expect_value_error(lambda: ExperimentConfig(algo="siamese", dataset="omniglot", split="lake",
                                                siamese_norm="apart").resolved(), "siamese_norm in", "'apart'")
    expect_value_error(lambda: _net("joint", test_augment="flips"), "test_augment in", "'flips'")
    expect_value_error(lambda: ExperimentConfig(algo="siamese", dataset="omniglot", split="lake",
                                                siamese_test_augment="crop").resolved(),
                       "siamese_test_augment in", "'crop'")
