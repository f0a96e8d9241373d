"""Siamese networks: parity between backends, losses and gradients against numpy and
finite differences, one-shot predictions, learning on digits, errors."""
from __future__ import annotations

import numpy as np
import pytest

import metabridge as mb
from metabridge import ops, optim
from metabridge.algorithms import Siamese
from metabridge.data import EpisodeSampler, PairSampler, load_digits
from metabridge.nn import MLP, SmallConvEncoder

from conftest import assert_directional_derivatives, expect_value_error, flat, perturbed_init, rel_diff, unflat

COMBOS = [("l1", "bce"), ("l2", "contrastive"), ("cosine", "bce"), ("cosine", "contrastive")]








# ---- parity ------------------------------------------------------------------------------------
def _train(backend: str, distance: str, loss: str, steps: int) -> tuple[np.ndarray, dict, np.ndarray]:
    """Adam on digit pairs; returns per-step losses, final params and the first gradient."""
    with mb.use_backend(backend):
        net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1)), distance=distance, loss=loss)
        pairs = PairSampler(load_digits("train", dtype=mb.floatx()), batch_size=16, seed=0)
        params = {k: ops.asarray(v) for k, v in net.init(seed=0).items()}
        opt = optim.Adam(lr=1e-3)
        state = opt.init(params)
        losses, first_grad = [], None
        for step in range(steps):
            value, grads = net.value_and_grad(params, *pairs.batch(step))
            params, state = opt.update(params, grads, state)
            losses.append(float(ops.to_numpy(value)))
            first_grad = flat(grads) if first_grad is None else first_grad
        return np.array(losses), {k: np.array(ops.to_numpy(v)) for k, v in params.items()}, first_grad


@pytest.mark.parametrize("distance, loss", COMBOS)
def test_parity_float64(distance, loss, float64, both_backends):
    lt, pt, gt = _train("torch", distance, loss, 20)
    lf, pf, gf = _train("tensorflow", distance, loss, 20)
    assert rel_diff(gt, gf) < 1e-9
    assert np.all(np.isfinite(lt)) and lt[-1] < lt[0]
    assert np.max(np.abs(lt - lf) / np.abs(lt)) < 1e-9, (lt, lf)
    assert rel_diff(flat(pt), flat(pf)) < 1e-9


@pytest.mark.parametrize("distance, loss", COMBOS)
def test_parity_float32(distance, loss, both_backends):
    assert mb.floatx() == "float32"
    lt, _, gt = _train("torch", distance, loss, 5)
    lf, _, gf = _train("tensorflow", distance, loss, 5)
    assert np.max(np.abs(lt - lf) / np.abs(lt)) < 1e-5, (lt, lf)
    assert rel_diff(gt, gf) < 1e-5
    # No float32 comparison of the parameters after Adam: Adam divides by sqrt(v), so a
    # gradient entry that is pure float32 rounding noise still moves its weight by ~lr,
    # differently on each framework (float64 compares parameters, above).


# ---- losses and gradients against numpy -------------------------------------------------------------
def _numpy_loss(net: Siamese, params: dict, e1: np.ndarray, e2: np.ndarray, same: np.ndarray) -> float:
    """The documented losses, written directly in numpy."""
    if net.distance == "l1":
        d = np.sum(np.abs(e1 - e2), -1)
    elif net.distance == "l2":
        d = np.sqrt(np.sum((e1 - e2) ** 2, -1))
    else:
        d = 1.0 - np.sum(e1 * e2, -1) / (np.linalg.norm(e1, axis=-1) * np.linalg.norm(e2, axis=-1))
    if net.loss == "bce":
        w, b = np.logaddexp(0.0, np.asarray(params["head.kernel"])), np.asarray(params["head.bias"])
        feats = np.abs(e1 - e2) if net.distance == "l1" else d[:, None]
        z = (b - feats @ w)[:, 0]  # logit b - softplus(v) . d
        return float(np.mean(np.logaddexp(0.0, z) - z * same))  # -y log σ(z) - (1-y) log(1-σ(z))
    return float(0.5 * np.mean(same * d ** 2 + (1 - same) * np.maximum(net.margin - d, 0.0) ** 2))


@pytest.mark.parametrize("distance, loss, margin", [("l1", "bce", 1.0), ("l2", "contrastive", 1.5),
                                                    ("cosine", "bce", 1.0), ("cosine", "contrastive", 0.5)])
def test_loss_matches_numpy(backend, float64, distance, loss, margin):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1), filters=(4, 8), embedding=16),
                  distance=distance, loss=loss, margin=margin)
    params = perturbed_init(net, seed=1)
    x1, x2, same = PairSampler(load_digits("train", dtype="float64"), batch_size=16, seed=1).batch(0)
    e1 = ops.to_numpy(net.embed(params, x1))
    e2 = ops.to_numpy(net.embed(params, x2))
    assert e1.shape == (16, 16)
    got = float(ops.to_numpy(net.pair_loss({k: ops.asarray(v) for k, v in params.items()}, x1, x2, same)))
    want = _numpy_loss(net, params, e1, e2, same)
    assert abs(got - want) <= 1e-10 * abs(want), (got, want)
    value, _ = net.value_and_grad(params, x1, x2, same)
    assert abs(float(ops.to_numpy(value)) - want) <= 1e-10 * abs(want)
    if loss == "contrastive":  # both branches of the loss were exercised
        d = np.linalg.norm(e1 - e2, axis=-1) if distance == "l2" else None
        if d is not None:
            assert np.any((same == 0) & (d < margin)) and np.any(same == 1)


@pytest.mark.parametrize("distance, loss", COMBOS)
def test_gradient_matches_finite_differences(backend, float64, distance, loss):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1), filters=(4,), embedding=8),
                  distance=distance, loss=loss, margin=2.0)
    params = perturbed_init(net, seed=2)
    rng = np.random.default_rng(2)
    x1, x2 = rng.uniform(size=(6, 8, 8, 1)), rng.uniform(size=(6, 8, 8, 1))  # no ties in max-pool
    same = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    _, grads = net.value_and_grad(params, x1, x2, same)
    assert list(grads) == list(params)
    g, theta = flat(grads), flat(params)
    assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 0

    def f(vec):
        p = {k: ops.asarray(v) for k, v in unflat(vec, params).items()}
        return float(ops.to_numpy(net.pair_loss(p, x1, x2, same)))

    assert_directional_derivatives(lambda p: float(ops.to_numpy(net.pair_loss(p, x1, x2, same))), params, grads, rng)
    eps = 1e-6
    for i in list(rng.choice(theta.size, size=4, replace=False)) + [int(np.argmax(np.abs(g)))]:
        e = np.zeros_like(theta)
        e[i] = eps
        fd = (f(theta + e) - f(theta - e)) / (2 * eps)
        assert abs(fd - g[i]) / np.max(np.abs(g)) < 1e-6, (i, fd, g[i])


def test_pair_loss_accepts_numpy_params(backend, float64):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1), filters=(4,), embedding=8), distance="l1", loss="bce")
    params = net.init(seed=0)
    x1, x2, same = PairSampler(load_digits("train", dtype="float64"), batch_size=6, seed=0).batch(0)
    want = float(ops.to_numpy(net.value_and_grad(params, x1, x2, same)[0]))
    got = float(ops.to_numpy(net.pair_loss(params, x1, x2, same)))
    assert abs(got - want) <= 1e-12 * abs(want)


# ---- one-shot predictions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("distance", ["l2", "l1", "cosine"])
def test_one_shot_predictions_with_known_embeddings(backend, float64, distance):
    """A linear encoder with identity weights: the embedding is the input itself."""
    net = Siamese(MLP([2, 2]), distance=distance, loss="contrastive")
    params = {"dense1.kernel": np.eye(2), "dense1.bias": np.zeros(2)}
    support_x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -0.2], [4.0, 4.5]])
    support_y = np.array([2, 0, 3, 1])  # labels are not the support indices
    query_x = np.array([[0.9, 0.1], [0.2, 1.1], [-2.0, -0.3], [3.0, 3.1], [0.1, 0.95]])
    pred = net.one_shot_predictions(params, support_x, support_y, query_x)
    np.testing.assert_array_equal(pred, [2, 0, 3, 1, 0])
    np.testing.assert_array_equal(ops.to_numpy(net.embed(params, query_x)), query_x)


@pytest.mark.parametrize("distance, loss", COMBOS)
def test_one_shot_predictions_match_numpy_nearest_support(backend, float64, distance, loss):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1), filters=(4, 8), embedding=16),
                  distance=distance, loss=loss)
    params = perturbed_init(net, seed=3)
    ep = EpisodeSampler(load_digits("test", dtype="float64"), ways=4, shots=2, queries=5, seed=3).episode(0)
    perm = np.random.default_rng(3).permutation(len(ep.support_y))  # supports not grouped by class
    sx, sy = ep.support_x[perm], ep.support_y[perm]
    pred = net.one_shot_predictions(params, sx, sy, ep.query_x)
    es, eq = ops.to_numpy(net.embed(params, sx)), ops.to_numpy(net.embed(params, ep.query_x))
    if distance == "l1":
        d = np.abs(eq[:, None, :] - es[None, :, :]).sum(-1)
    elif distance == "l2":
        d = np.linalg.norm(eq[:, None, :] - es[None, :, :], axis=-1)
    else:
        d = 1.0 - (eq @ es.T) / np.outer(np.linalg.norm(eq, axis=1), np.linalg.norm(es, axis=1))
    if loss == "bce":
        w, b = np.logaddexp(0.0, params["head.kernel"]), params["head.bias"]
        feats = np.abs(eq[:, None, :] - es[None, :, :]) if distance == "l1" else d[..., None]
        scores = (b - feats @ w)[..., 0]
    else:
        scores = -d
    assert pred.shape == (len(ep.query_y),)
    np.testing.assert_array_equal(pred, sy[np.argmax(scores, axis=1)])
    assert net.one_shot_accuracy(params, ep) == np.mean(
        net.one_shot_predictions(params, ep.support_x, ep.support_y, ep.query_x) == ep.query_y)


# ---- learning ------------------------------------------------------------------------------------------------
def test_learns_one_shot_on_held_out_digits(backend):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1)), distance="l1", loss="bce")
    pairs = PairSampler(load_digits("train"), batch_size=32, seed=0)
    params = {k: ops.asarray(v) for k, v in net.init(seed=0).items()}
    opt = optim.Adam(lr=1e-3)
    state = opt.init(params)
    seen = EpisodeSampler(load_digits("train"), ways=5, shots=1, queries=5, seed=1)
    before = np.mean([net.one_shot_accuracy(params, seen.episode(i)) for i in range(20)])
    for step in range(150):
        _, grads = net.value_and_grad(params, *pairs.batch(step))
        params, state = opt.update(params, grads, state)
    # It learned: one-shot episodes of the training classes (measured: ~0.70 before, ~0.99 after).
    after = np.mean([net.one_shot_accuracy(params, seen.episode(i)) for i in range(20)])
    assert after >= 0.9 and after > before + 0.15, (before, after)
    # And it transfers: classes 5-9 were never seen in training; chance is 0.2.
    held_out = EpisodeSampler(load_digits("test"), ways=5, shots=1, queries=5, seed=1)
    acc = np.mean([net.one_shot_accuracy(params, held_out.episode(i)) for i in range(50)])
    assert acc >= 0.5, acc


# ---- errors ------------------------------------------------------------------------------------------------------


def test_bad_configuration():
    enc = SmallConvEncoder(input_shape=(8, 8, 1), filters=(4,), embedding=8)
    expect_value_error(lambda: Siamese(enc, distance="euclidean"), "distance", "'euclidean'")
    expect_value_error(lambda: Siamese(enc, loss="triplet"), "loss", "'triplet'")
    for margin in (0, 0.0, -1.0, float("nan"), float("inf")):
        expect_value_error(lambda: Siamese(enc, loss="contrastive", margin=margin), "margin > 0")
    expect_value_error(lambda: Siamese(object()), "Model")


def test_bad_pairs(backend):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1), filters=(4,), embedding=8))
    params = net.init(seed=0)
    x1, x2, same = PairSampler(load_digits("train"), batch_size=6, seed=0).batch(0)
    expect_value_error(lambda: net.value_and_grad(params, x1, x2[:5], same), "x2.shape=(5, 8, 8, 1)")
    expect_value_error(lambda: net.value_and_grad(params, x1, x2[..., :4, :], same), "x1")
    expect_value_error(lambda: net.value_and_grad(params, x1, x2, same[:4]), "same.shape=(4,)")
    expect_value_error(lambda: net.value_and_grad(params, x1, x2, same[:, None]), "same")
    for bad in (0.5, 2.0, -1.0, np.nan):
        s = same.copy()
        s[2] = bad
        expect_value_error(lambda: net.value_and_grad(params, x1, x2, s), "same")
    for bad in (np.nan, np.inf):
        x = x2.copy()
        x[1, 4, 4, 0] = bad
        expect_value_error(lambda: net.value_and_grad(params, x1, x, same), "finite", "x2")
        expect_value_error(lambda: net.value_and_grad(params, x, x2, same), "finite", "x1")
