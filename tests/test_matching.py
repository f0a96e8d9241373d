"""Matching networks: attention, the FCE LSTM against numpy, gradients, parity."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import flat, rel_diff, unflat

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import MatchingNet
from metabridge.data import EpisodeSampler, load_digits
from metabridge.nn import MLP, Conv4
from metabridge.nn.lstm import lstm_cell
from metabridge.optim import Adam


def _episode_batch(tasks=2, ways=3, shots=2, queries=2, dtype="float64"):
    ds = load_digits("train", dtype=dtype)
    ds.x = ds.x.reshape(len(ds.x), -1)
    return EpisodeSampler(ds, ways, shots, queries, seed=0).batch(0, tasks)


def _net(fce):
    net = MatchingNet(MLP([64, 12, 6], activation="tanh"), fce=fce, fce_steps=2)
    rng = np.random.default_rng(3)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in net.init(0).items()}
    return net, params


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def np_lstm(params, prefix, x, h, c):
    z = np.concatenate([x, h], -1) @ params[f"{prefix}.kernel"] + params[f"{prefix}.bias"]
    i, f, g, o = np.split(z, 4, axis=-1)
    c = np_sigmoid(f) * c + np_sigmoid(i) * np.tanh(g)
    return np_sigmoid(o) * np.tanh(c), c


def test_lstm_step_matches_numpy(backend, float64):
    rng = np.random.default_rng(0)
    params = {"cell.kernel": rng.standard_normal((5 + 3, 12)), "cell.bias": rng.standard_normal(12)}
    x, h, c = rng.standard_normal((4, 5)), rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    got_h, got_c = lstm_cell({k: ops.asarray(v) for k, v in params.items()}, "cell",
                             ops.asarray(x), ops.asarray(h), ops.asarray(c))
    want_h, want_c = np_lstm(params, "cell", x, h, c)
    assert rel_diff(ops.to_numpy(got_h), want_h) < 1e-14 and rel_diff(ops.to_numpy(got_c), want_c) < 1e-14


@pytest.mark.parametrize("fce", [False, True])
def test_attention_rows_sum_to_one_and_match_numpy(backend, float64, fce):
    net, params = _net(fce)
    b = _episode_batch()
    sx, qx = b.support_x[0], b.query_x[0]
    attn = ops.to_numpy(net.attention(params, sx, qx))
    np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=0, atol=1e-14)
    es, eq = ops.to_numpy(net.model(params, sx)), ops.to_numpy(net.model(params, qx))
    if fce:  # the paper's g and f, in numpy
        d, n = es.shape[1], len(es)
        fw, bw, h, c = [], [None] * n, np.zeros((1, d)), np.zeros((1, d))
        for i in range(n):
            h, c = np_lstm(params, "fce.fw", es[i:i + 1], h, c)
            fw.append(h)
        h, c = np.zeros((1, d)), np.zeros((1, d))
        for i in reversed(range(n)):
            h, c = np_lstm(params, "fce.bw", es[i:i + 1], h, c)
            bw[i] = h
        es = es + np.concatenate(fw) + np.concatenate(bw)
        h, c, r = np.zeros_like(eq), np.zeros_like(eq), np.zeros_like(eq)
        for _ in range(2):
            h, c = np_lstm(params, "fce.att", eq, h + r, c)
            h = h + eq
            a = np.exp(h @ es.T)
            a /= a.sum(-1, keepdims=True)
            r = a @ es
        eq = h
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    cos = unit(eq) @ unit(es).T
    want = np.exp(cos) / np.exp(cos).sum(-1, keepdims=True)
    assert rel_diff(attn, want) < 1e-12


def test_fce_gradient_matches_finite_differences(backend, float64):
    net, params = _net(True)
    batch = _episode_batch()
    _, grads = net.meta_value_and_grad(params, batch)
    g, theta = flat(grads), flat(params)

    def f(vec):
        return float(ops.to_numpy(net.meta_value_and_grad(unflat(vec, params), batch)[0]))

    rng = np.random.default_rng(1)
    for i in rng.choice(theta.size, 10, replace=False):
        e = np.zeros_like(theta)
        e[i] = 1e-6
        assert abs((f(theta + e) - f(theta - e)) / 2e-6 - g[i]) / np.max(np.abs(g)) < 1e-6


def _curve(backend, floatx, steps):
    mb.set_floatx(floatx)
    try:
        with mb.use_backend(backend):
            net = MatchingNet(MLP([64, 16, 8]), fce=True)
            params = {k: ops.asarray(v) for k, v in net.init(0).items()}
            opt, losses = Adam(1e-3), []
            state = opt.init(params)
            ds = load_digits("train", dtype=floatx)
            ds.x = ds.x.reshape(len(ds.x), -1)
            sampler = EpisodeSampler(ds, 5, 1, 3, seed=0)
            for s in range(steps):
                loss, grads = net.meta_value_and_grad(params, sampler.batch(s, 2))
                params, state = opt.update(params, grads, state)
                losses.append(float(ops.to_numpy(loss)))
            return np.array(losses)
    finally:
        mb.set_floatx("float32")


def test_parity_20_steps_float64_and_5_steps_float32(both_backends):
    a, b = _curve("torch", "float64", 20), _curve("tensorflow", "float64", 20)
    assert np.max(np.abs(a - b) / np.abs(a)) < 1e-9
    a, b = _curve("torch", "float32", 5), _curve("tensorflow", "float32", 5)
    assert np.max(np.abs(a - b) / np.abs(a)) < 1e-5


def test_bad_configuration():
    with pytest.raises(ValueError, match="Expected fce_steps >= 1. Received: fce_steps=0"):
        MatchingNet(MLP([4, 2]), fce=True, fce_steps=0)
    assert MatchingNet(Conv4(None, input_shape=(16, 16, 1)), fce=True).width == 64
