"""Models and optimizers: forward passes against numpy, parity, optimizer maths."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import rel_diff
from numpy_reference import np_batch_norm, np_conv2d, np_pool

import metabridge as mb
from metabridge import ops
from metabridge.nn import MLP, Conv4, KochEncoder, SmallConvEncoder
from metabridge.optim import SGD, Adam


def np_dense(p, name, x):
    return x @ p[f"{name}.kernel"] + p[f"{name}.bias"]


def np_conv(p, name, x, stride=1, padding="same"):
    return np_conv2d(x, p[f"{name}.kernel"], stride, padding) + p[f"{name}.bias"]


def np_conv4(p, x, strided=False, head=True, last_pool=True):
    for i in range(1, 5):
        x = np_conv(p, f"conv{i}", x, stride=2 if strided else 1)
        x = np_batch_norm(x, p[f"bn{i}.scale"], p[f"bn{i}.offset"])[0]
        x = np.maximum(x, 0)
        if not strided and (i < 4 or last_pool):
            x = np_pool(x, 2, 2, "valid", "max")
    x = x.mean(axis=(1, 2)) if strided else x.reshape(len(x), -1)
    return np_dense(p, "head", x) if head else x


def np_small_encoder(p, x, n_conv):
    for i in range(1, n_conv + 1):
        x = np_pool(np.maximum(np_conv(p, f"conv{i}", x), 0), 2, 2, "valid", "max")
    return np.maximum(np_dense(p, "embed", x.reshape(len(x), -1)), 0)


def np_koch(p, x, n_conv):
    for i in range(1, n_conv + 1):
        x = np.maximum(np_conv(p, f"conv{i}", x, padding="valid"), 0)
        if i < n_conv:
            x = np_pool(x, 2, 2, "valid", "max")
    return 1 / (1 + np.exp(-np_dense(p, "embed", x.reshape(len(x), -1))))


def _perturbed(params, seed=1):
    """Non-trivial batch-norm scales/offsets and biases (init makes them 1 and 0)."""
    rng = np.random.default_rng(seed)
    return {k: v + 0.1 * rng.normal(size=v.shape) for k, v in params.items()}


MODELS = [
    ("mlp", lambda: MLP([3, 7, 5, 2], activation="tanh"), (4, 3),
     lambda p, x: np_dense(p, "dense3", np.tanh(np_dense(p, "dense2", np.tanh(np_dense(p, "dense1", x)))))),
    ("conv4", lambda: Conv4(3, input_shape=(16, 16, 2), channels=4), (5, 16, 16, 2),
     lambda p, x: np_conv4(p, x)),
    ("conv4-strided", lambda: Conv4(3, input_shape=(17, 15, 1), channels=4, strided=True), (5, 17, 15, 1),
     lambda p, x: np_conv4(p, x, strided=True)),
    ("conv4-embedding", lambda: Conv4(None, input_shape=(16, 16, 1), channels=3), (4, 16, 16, 1),
     lambda p, x: np_conv4(p, x, head=False)),
    ("conv4-no-last-pool", lambda: Conv4(2, input_shape=(20, 20, 1), channels=3, last_pool=False), (4, 20, 20, 1),
     lambda p, x: np_conv4(p, x, last_pool=False)),
    ("small-encoder", lambda: SmallConvEncoder(input_shape=(8, 8, 1), filters=(3, 4), embedding=6),
     (3, 8, 8, 1), lambda p, x: np_small_encoder(p, x, 2)),
    ("koch", lambda: KochEncoder(input_shape=(20, 20, 1), filters=(3, 4, 5), kernels=(5, 3, 2), embedding=6),
     (3, 20, 20, 1), lambda p, x: np_koch(p, x, 3)),
]


@pytest.mark.parametrize("name, make, xshape, ref", MODELS, ids=[m[0] for m in MODELS])
def test_forward_matches_numpy(backend, float64, name, make, xshape, ref):
    model = make()
    params = _perturbed(model.init(seed=0))
    x = np.random.default_rng(2).normal(size=xshape)
    got = ops.to_numpy(model(params, x))
    assert rel_diff(got, ref(params, x)) < 1e-12


@pytest.mark.parametrize("name, make, xshape, ref", MODELS, ids=[m[0] for m in MODELS])
def test_forward_and_gradient_parity(both_backends, float64, name, make, xshape, ref):
    model = make()
    params = _perturbed(model.init(seed=0))
    x = np.random.default_rng(2).normal(size=xshape)
    out = {}
    for b in both_backends:
        with mb.use_backend(b):
            loss, grads = ops.value_and_grad(lambda p: ops.sum(ops.square(model(p, x))))(params)
            out[b] = (float(ops.to_numpy(loss)), np.concatenate([ops.to_numpy(grads[k]).ravel() for k in params]))
    assert out["torch"][0] == pytest.approx(out["tensorflow"][0], rel=1e-12)
    assert rel_diff(out["torch"][1], out["tensorflow"][1]) < 1e-12


def test_init_is_a_function_of_the_seed_with_canonical_names_and_layouts():
    model = Conv4(5, input_shape=(28, 28, 1))
    a, b, c = model.init(0), model.init(0), model.init(1)
    assert list(a)[:4] == ["conv1.kernel", "conv1.bias", "bn1.scale", "bn1.offset"]
    assert a["conv1.kernel"].shape == (3, 3, 1, 64)       # HWIO
    assert a["head.kernel"].shape == (64, 5)              # [in, out]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.kernel"], c["conv1.kernel"])
    assert a["conv1.kernel"].dtype == np.float32
    mb.set_floatx("float64")
    try:
        assert model.init(0)["conv1.kernel"].dtype == np.float64
    finally:
        mb.set_floatx("float32")


def test_batch_norm_running_statistics(backend, float64):
    model = Conv4(None, input_shape=(16, 16, 1), channels=3)
    params = _perturbed(model.init(0))
    state = model.init_state()
    x = np.random.default_rng(3).normal(size=(6, 16, 16, 1))
    _, new_state = model.apply(params, x, state=state, training=True)
    h = np_conv(params, "conv1", x)
    mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    assert rel_diff(ops.to_numpy(new_state["bn1.running_mean"]), 0.1 * mean) < 1e-12
    assert rel_diff(ops.to_numpy(new_state["bn1.running_var"]), 0.9 + 0.1 * var) < 1e-12
    # Evaluation with running statistics normalises with them, not with the batch's.
    frozen = {k: ops.to_numpy(v) for k, v in new_state.items()}
    y_eval, untouched = model.apply(params, x, state=frozen, training=False)
    assert untouched == {}
    y_train, _ = model.apply(params, x, state=frozen, training=True)
    assert rel_diff(ops.to_numpy(y_eval), ops.to_numpy(y_train)) > 1e-3


@pytest.mark.parametrize("make, message", [
    (lambda: MLP([3]), "Expected sizes to be at least two positive ints"),
    (lambda: MLP([3, 4], activation="gelu"), "Expected activation in"),
    (lambda: Conv4(5, input_shape=(8, 8, 1)), "Expected input_shape large enough"),
    (lambda: Conv4(0), "Expected out_features >= 1"),
    (lambda: Conv4(5, strided=True, last_pool=False), "Expected last_pool true or false, and true with strided"),
    (lambda: Conv4(5, last_pool=1), "Expected last_pool true or false"),
    (lambda: Conv4(5, input_shape=(28, 28)), "Expected input_shape (height, width, channels)"),
    (lambda: KochEncoder(input_shape=(28, 28, 1)), "Expected input_shape large enough for kernels"),
    (lambda: KochEncoder(filters=(4, 8), kernels=(3,)), "Expected as many kernels as filters"),
    (lambda: SmallConvEncoder(padding="full"), "Expected padding 'same' or 'valid'"),
])
def test_bad_model_configuration(make, message):
    with pytest.raises(ValueError, match="Received") as info:
        make()
    assert message in str(info.value)


def test_wrong_input_shape_is_named(backend):
    model = Conv4(5, input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match=r"Expected input of shape \(batch, 28, 28, 1\) for Conv4. "
                                         r"Received: x.shape=\(2, 32, 32, 1\)"):
        model(model.init(0), np.zeros((2, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match="Expected a non-negative int|Expected seed"):
        model.init(-1)


# ---- optimizers ------------------------------------------------------------------------------
def np_sgd(params, grads_seq, lr, momentum):
    p, buf = {k: v.copy() for k, v in params.items()}, {k: np.zeros_like(v) for k, v in params.items()}
    for g in grads_seq:
        for k in p:
            buf[k] = momentum * buf[k] + g[k]
            p[k] = p[k] - lr * (buf[k] if momentum else g[k])
    return p


def np_adam(params, grads_seq, lr, b1=0.9, b2=0.999, eps=1e-8):
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g in enumerate(grads_seq, start=1):
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            p[k] = p[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
    return p


@pytest.mark.parametrize("opt, ref", [
    (SGD(lr=0.1), lambda p, g: np_sgd(p, g, 0.1, 0.0)),
    (SGD(lr=0.1, momentum=0.9), lambda p, g: np_sgd(p, g, 0.1, 0.9)),
    (Adam(lr=0.01), lambda p, g: np_adam(p, g, 0.01)),
], ids=["sgd", "sgd-momentum", "adam"])
def test_optimizers_match_numpy(backend, float64, opt, ref):
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    grads_seq = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(4)]
    p, state = {k: ops.asarray(v) for k, v in params.items()}, opt.init(params)
    for g in grads_seq:
        p, state = opt.update(p, {k: ops.asarray(v) for k, v in g.items()}, state)
    expected = ref(params, grads_seq)
    assert state["step"] == 4
    for k in params:
        assert rel_diff(ops.to_numpy(p[k]), expected[k]) < 1e-14


@pytest.mark.parametrize("make, message", [
    (lambda: SGD(lr=0.0), "Expected lr > 0. Received: lr=0.0"),
    (lambda: SGD(lr=0.1, momentum=1.5), "Expected momentum < 1. Received: momentum=1.5"),
    (lambda: Adam(lr=-1), "Expected lr > 0. Received: lr=-1"),
    (lambda: Adam(beta1=1.0), "Expected 0 <= beta1 < 1. Received: beta1=1.0"),
])
def test_bad_optimizer_configuration(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_optimizer_rejects_mismatched_grads(backend):
    opt = SGD(lr=0.1)
    params = {"a": ops.asarray(np.zeros(2))}
    with pytest.raises(ValueError, match="Expected grads with the keys of params"):
        opt.update(params, {"b": ops.asarray(np.zeros(2))}, opt.init(params))


def test_conv4_without_last_pool_keeps_the_spatial_map():
    from metabridge.nn.siamese_encoders import Conv4Embedding

    assert Conv4(None, input_shape=(28, 28, 1), last_pool=False).feature_dim == 3 * 3 * 64
    assert Conv4(2, input_shape=(20, 20, 1), channels=3, last_pool=False).param_shapes()["head.kernel"] == (12, 2)
    assert Conv4Embedding((28, 28, 1), last_pool=False).embedding_dim == 576
    from metabridge.recipes.algorithms import siamese_encoder

    enc = siamese_encoder((28, 28, 1), "conv4-spatial")
    assert isinstance(enc, Conv4Embedding) and enc.embedding_dim == 576 and not enc.last_pool
