"""Koch et al.'s recipe for Siamese networks: pair sampling within alphabets and
with distortions, the free and the centred heads, Koch's initialisation and
optimizer (parity between backends, numpy references), the validation/test
alphabet split, and bad values."""
from __future__ import annotations

import numpy as np
import pytest

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import Siamese
from metabridge.algorithms.siamese import KochSGD
from metabridge.data import ArrayDataset, PairSampler, load_digits
from metabridge.data.augment import koch_affine
from metabridge.nn import KochEncoder, SmallConvEncoder
from metabridge.optim import StepDecay

from conftest import assert_directional_derivatives, expect_value_error, flat, perturbed_init, rel_diff


def _alphabet_data(seed: int = 0):
    """12 classes in 3 'alphabets' of 4, 3 images each, 8x8."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(12), 3)
    x = rng.uniform(size=(len(y), 8, 8, 1)).astype(np.float64)
    return ArrayDataset(x, y), np.array(["abc"[c // 4] for c in y])


# ---- pairs ----------------------------------------------------------------------------------------
def test_pairs_within_alphabet():
    ds, alpha = _alphabet_data()
    row = {tuple(np.round(ds.x[i].ravel(), 12)): i for i in range(len(ds.y))}

    def classes(x):
        return np.array([ds.y[row[tuple(np.round(v.ravel(), 12))]] for v in x])

    for within in (0.0, 0.5, 1.0):
        sampler = PairSampler(ds, 64, seed=3, within_alphabet=within, alphabet_ids=alpha)
        x1, x2, same = sampler.batch(5)
        c1, c2 = classes(x1), classes(x2)
        assert np.all((c1 == c2) == (same == 1)) and same.sum() == 32
        neg_same_alpha = np.mean((c1 // 4 == c2 // 4)[same == 0])
        if within == 1.0:
            assert neg_same_alpha == 1.0
        if within == 0.0:  # any other class: 3 of 11 share the alphabet
            assert neg_same_alpha < 0.6
        b = sampler.batch(5)  # a pure function of (seed, index)
        assert all(np.array_equal(u, v) for u, v in zip((x1, x2, same), b))
    # within_alphabet=0 keeps earlier versions' batches
    old = PairSampler(load_digits("train"), 16, seed=0).batch(2)
    new = PairSampler(load_digits("train"), 16, seed=0, within_alphabet=0.0, augment=False).batch(2)
    assert all(np.array_equal(u, v) for u, v in zip(old, new))


def test_pairs_augmented_with_koch_affine():
    ds, alpha = _alphabet_data()
    plain = PairSampler(ds, 8, seed=4, within_alphabet=0.5, alphabet_ids=alpha)
    aug = PairSampler(ds, 8, seed=4, within_alphabet=0.5, alphabet_ids=alpha, augment=True)
    x1, x2, same = plain.batch(7)
    a1, a2, s = aug.batch(7)
    want = koch_affine(np.concatenate([x1, x2]), seed=4 + 1000, index=7)
    assert np.array_equal(s, same)
    assert np.array_equal(np.concatenate([a1, a2]), want)
    assert not np.array_equal(a1, x1)


def test_all_pairs_batches():
    ds, alpha = _alphabet_data()
    for within in (0.0, 1.0):
        x1, x2, same = PairSampler(ds, 8, seed=2, within_alphabet=within, alphabet_ids=alpha,
                                   all_pairs=True).batch(3)
        row = {tuple(np.round(ds.x[i].ravel(), 12)): i for i in range(len(ds.y))}
        i1 = np.array([row[tuple(np.round(v.ravel(), 12))] for v in x1])
        i2 = np.array([row[tuple(np.round(v.ravel(), 12))] for v in x2])
        assert np.all(same == 1) and np.all(ds.y[i1] == ds.y[i2]) and np.all(i1 != i2)
        assert len(set(ds.y[i1])) == 8  # distinct classes
        if within:  # groups of (up to) 8 from one alphabet: alphabets of 4 give 2 groups
            assert len(set(alpha[i1])) == 2
    for group, alphabets in ((2, 3), (3, 3), (4, 2)):  # 8 classes in groups of `group`; 3 alphabets of 4
        x1, _, _ = PairSampler(ds, 8, seed=2, within_alphabet=0.5, alphabet_ids=alpha, all_pairs=True,
                               alphabet_group=group).batch(1)
        i1 = np.array([row[tuple(np.round(v.ravel(), 12))] for v in x1])
        assert len(set(ds.y[i1])) == 8 and len(set(alpha[i1])) == alphabets, group
        if group == 4:
            assert sorted(np.unique(alpha[i1], return_counts=True)[1]) == [4, 4]
    expect_value_error(lambda: PairSampler(ds, 13, all_pairs=True), "batch_size <= 12", "13")
    expect_value_error(lambda: PairSampler(ds, 8, alphabet_group=0), "alphabet_group", "0")


@pytest.mark.parametrize("loss,distance", [("bce", "l1"), ("contrastive", "l2"), ("softmax", "l1"),
                                           ("softmax", "l2")])
def test_all_pairs_loss_matches_numpy(backend, float64, loss, distance):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1), filters=(4, 8), embedding=16), loss=loss,
                  distance=distance, margin=1.5, pairs="all-in-batch")
    params = perturbed_init(net, seed=4)
    ds = load_digits("train", dtype="float64")
    x1, x2, same = PairSampler(ds, 5, seed=1, all_pairs=True).batch(0)
    e1, e2 = ops.to_numpy(net.embed(params, x1)), ops.to_numpy(net.embed(params, x2))
    k = len(x1)
    if loss == "contrastive":
        d = np.linalg.norm(e1[:, None] - e2[None], axis=-1)
        pos, neg = 0.5 * d ** 2, 0.5 * np.maximum(1.5 - d, 0.0) ** 2
    else:  # the softplus head on the L1 vector or on the scalar L2 distance
        w, b = np.logaddexp(0.0, params["head.kernel"]), params["head.bias"]
        feats = ((lambda u: np.abs(u)) if distance == "l1" else (lambda u: np.linalg.norm(u, keepdims=True)))
        z = np.array([[(b - feats(e1[i] - e2[j]) @ w)[0] for j in range(k)] for i in range(k)])
        pos, neg = np.logaddexp(0.0, -z), np.logaddexp(0.0, z)
    off = ~np.eye(k, dtype=bool)
    want = 0.5 * np.mean(np.diag(pos)) + 0.5 * np.mean(neg[off])
    if loss == "softmax":  # -log p(partner) along rows (x1[i] vs every x2[j]) and columns, averaged
        rows = np.array([np.log(np.sum(np.exp(z[i]))) - z[i, i] for i in range(k)])
        cols = np.array([np.log(np.sum(np.exp(z[:, j]))) - z[j, j] for j in range(k)])
        want = 0.5 * (rows.mean() + cols.mean())
    value, _ = net.value_and_grad(params, x1, x2, same)
    assert abs(float(ops.to_numpy(value)) - want) <= 1e-10 * abs(want)
    expect_value_error(lambda: net.value_and_grad(params, x1, x2, np.zeros_like(same)), "all-in-batch")


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_softmax_loss_gradient_matches_finite_differences(backend, float64, distance):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1), filters=(4,), embedding=8), loss="softmax",
                  pairs="all-in-batch", distance=distance)
    params = perturbed_init(net, seed=5)
    rng = np.random.default_rng(5)
    x1, x2 = rng.uniform(size=(5, 8, 8, 1)), rng.uniform(size=(5, 8, 8, 1))  # no ties in max-pool
    same = np.ones(5)
    _, grads = net.value_and_grad(params, x1, x2, same)
    assert np.max(np.abs(flat(grads))) > 0
    assert float(np.max(np.abs(ops.to_numpy(grads["head.bias"])))) < 1e-15  # the bias cancels in a softmax
    assert_directional_derivatives(lambda p: float(ops.to_numpy(net.pair_loss(p, x1, x2, same))), params, grads,
                                   rng, directions=3)


def _train_softmax(backend: str, steps: int, distance: str = "l1", norm: str = "joint"):
    """The 28x28 recipe's loss in small: softmax over all-in-batch pairs, centred
    softplus head (on the L1 vector or the L2 distance), batch-norm Conv4,
    distorted pairs within 'alphabets', Adam."""
    from metabridge import optim
    from metabridge.nn.siamese_encoders import Conv4Embedding

    with mb.use_backend(backend):
        ds, alpha = _alphabet_data()
        ds = ArrayDataset(np.repeat(np.repeat(ds.x, 2, 1), 2, 2).astype(mb.floatx()), ds.y)
        pairs = PairSampler(ds, 6, seed=1, within_alphabet=0.5, alphabet_ids=alpha, augment=True, all_pairs=True)
        net = Siamese(Conv4Embedding((16, 16, 1), channels=4), loss="softmax", pairs="all-in-batch",
                      probe=pairs.batch(0)[:2], distance=distance, norm=norm)
        # conv biases ahead of batch norm: a true gradient of 0, rounding noise, left out of the first gradient
        losses, params, first = _run_steps(net, pairs, optim.Adam(1e-2), steps,
                                           compare=lambda k: not (k.startswith("conv") and k.endswith(".bias")))

        def fit(p):  # mean loss over the batches trained on
            p = {k: ops.asarray(v) for k, v in p.items()}
            return np.mean([float(ops.to_numpy(net.meta_value_and_grad(p, pairs.batch(s))[0])) for s in range(steps)])
        return losses, params, first, (fit(net.init(0)), fit(params))


def _run_steps(net, pairs, opt, steps, compare=lambda name: True):
    """``steps`` optimizer steps on ``pairs.batch(step)`` from ``net.init(0)``: the losses, the final
    parameters and the first gradient (flattened, the entries whose name passes ``compare``)."""
    params = {k: ops.asarray(v) for k, v in net.init(0).items()}
    state = opt.init(params)
    losses, first = [], None
    for step in range(steps):
        value, grads = net.meta_value_and_grad(params, pairs.batch(step))
        first = flat({k: v for k, v in grads.items() if compare(k)}) if first is None else first
        params, state = opt.update(params, grads, state)
        losses.append(float(ops.to_numpy(value)))
    return np.array(losses), {k: ops.to_numpy(v) for k, v in params.items()}, first


@pytest.mark.parametrize("distance,norm", [("l1", "joint"), ("l2", "joint"), ("l2", "per-set")])
def test_softmax_loss_parity_float64(float64, both_backends, distance, norm):
    lt, pt, gt, (before, after) = _train_softmax("torch", 10, distance, norm)
    lf, pf, gf, _ = _train_softmax("tensorflow", 10, distance, norm)
    assert np.all(np.isfinite(lt)) and after < before  # the batches trained on are fitted better
    assert rel_diff(gt, gf) < 1e-9
    assert np.max(np.abs(lt - lf) / np.abs(lt)) < 1e-9, (lt, lf)
    # conv biases ahead of batch norm: exactly-zero true gradient, rounding noise that Adam scales to lr
    keep = [k for k in pt if not (k.startswith("conv") and k.endswith(".bias"))]
    assert rel_diff(flat({k: pt[k] for k in keep}), flat({k: pf[k] for k in keep})) < 1e-9


@pytest.mark.parametrize("distance,norm", [("l1", "joint"), ("l2", "joint"), ("l2", "per-set")])
def test_softmax_loss_parity_float32(both_backends, distance, norm):
    lt, _, gt, _ = _train_softmax("torch", 3, distance, norm)
    lf, _, gf, _ = _train_softmax("tensorflow", 3, distance, norm)
    assert np.max(np.abs(lt - lf) / np.abs(lt)) < 1e-5, (lt, lf)
    assert rel_diff(gt, gf) < 1e-5


@pytest.mark.parametrize("pairs, optimizer, whole_step", [("all-in-batch", "koch-sgd", True),
                                                          ("independent", "koch-sgd", True),
                                                          ("all-in-batch", "adam", True),
                                                          ("all-in-batch", "adam", False)])
def test_compiled_training_step_equals_gradient_then_update(backend, float64, pairs, optimizer, whole_step):
    """The training loop compiles the pair gradient and the optimizer step as one
    function (``meta_gradient_function`` + ``CompiledUpdate.fused``); it must give
    the eager gradient-then-update numbers. Koch's SGD runs the recipe's batch-norm
    Conv4; Adam a network without batch norm: the conv biases before batch norm have
    a gradient of exactly 0 in exact arithmetic, i.e. rounding noise, which Adam
    scales up to steps of ``lr`` whose sign is the noise's."""
    import warnings

    from metabridge import optim
    from metabridge.nn.siamese_encoders import Conv4Embedding

    ds, alpha = _alphabet_data()
    ds = ArrayDataset(np.repeat(np.repeat(ds.x, 2, 1), 2, 2), ds.y)  # 16x16: Conv4's smallest input
    sampler = PairSampler(ds, 4 if pairs == "all-in-batch" else 8, seed=2, within_alphabet=0.5,
                          alphabet_ids=alpha, augment=True, all_pairs=pairs == "all-in-batch")
    encoder = (Conv4Embedding((16, 16, 1), channels=4) if optimizer == "koch-sgd"
               else SmallConvEncoder(input_shape=(16, 16, 1), filters=(4, 8), embedding=16))
    net = Siamese(encoder, pairs=pairs, probe=sampler.batch(0)[:2],
                  optimizer=optimizer, koch_sgd={"momentum_steps": 3, "l2": {"*": 1e-3}})
    opt = net.outer_optimizer(StepDecay(1e-2, 2, 0.9))
    step = optim.CompiledUpdate(opt, compiled=True, whole_step=whole_step and backend == "tensorflow")
    p_ref = p_fused = {k: ops.asarray(v) for k, v in perturbed_init(net, seed=3).items()}
    s_ref = s_fused = opt.init(p_ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for i in range(3):
            batch = sampler.batch(i)
            loss_ref, grads = net.meta_value_and_grad(p_ref, batch)
            p_ref, s_ref = opt.update(p_ref, grads, s_ref)
            loss, p_fused, s_fused, finite = step.fused(*net.meta_gradient_function(batch), p_fused, s_fused)
            assert finite
            assert abs(float(ops.to_numpy(loss)) - float(ops.to_numpy(loss_ref))) < 1e-12 * float(ops.to_numpy(loss_ref))
    for k, v in p_ref.items():
        assert rel_diff(ops.to_numpy(p_fused[k]), ops.to_numpy(v)) < 1e-12, k
    assert rel_diff(ops.to_numpy(p_fused["conv1.kernel"]), perturbed_init(net, seed=3)["conv1.kernel"]) > 1e-4
    expect_value_error(lambda: net.meta_gradient_function((batch[0], batch[1][:-1], batch[2])), "equal shape")


# ---- heads and initialisation -------------------------------------------------------------------------
def _numpy_logit(params, e1, e2, head):
    d = np.abs(e1 - e2)
    v, b = np.asarray(params["head.kernel"]), np.asarray(params["head.bias"])
    return (b + d @ v)[:, 0] if head == "free" else (b - d @ np.logaddexp(0.0, v))[:, 0]


@pytest.mark.parametrize("head", ["free", "softplus"])
def test_head_loss_matches_numpy(backend, float64, head):
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1), filters=(4, 8), embedding=16), head=head)
    params = perturbed_init(net, seed=1)
    x1, x2, same = PairSampler(load_digits("train", dtype="float64"), batch_size=16, seed=1).batch(0)
    e1, e2 = ops.to_numpy(net.embed(params, x1)), ops.to_numpy(net.embed(params, x2))
    z = _numpy_logit(params, e1, e2, head)
    want = float(np.mean(np.logaddexp(0.0, z) - z * same))
    value, _ = net.value_and_grad(params, x1, x2, same)
    assert abs(float(ops.to_numpy(value)) - want) <= 1e-10 * abs(want)


def test_centred_head_starts_near_even_odds(backend):
    """The old start made every pair 'different' (p ~ 0.97) on Omniglot; the centred one
    starts at even odds, with the bias minus the mean initial logit over the probe."""
    from metabridge.data import load_embedded_omniglot

    enc = KochEncoder(input_shape=(28, 28, 1), filters=(64, 128, 128), kernels=(5, 3, 2), embedding=1024)
    x1, x2, _ = PairSampler(load_embedded_omniglot("background"), 32, seed=0).batch(0)
    for net, lo, hi in ((Siamese(enc, probe=(x1, x2)), 0.4, 0.6), (Siamese(enc), 0.9, 1.0)):
        params = {k: ops.asarray(v) for k, v in net.init(0).items()}
        z = ops.to_numpy(net.pair_scores(params, *net.embed_both(params, x1, x2)))
        p_different = float(np.mean(1.0 / (1.0 + np.exp(z))))
        assert lo <= p_different <= hi, (net.head_init, p_different)
    centred, plain = Siamese(enc, probe=(x1, x2)).init(0), Siamese(enc).init(0)
    assert all(np.array_equal(centred[k], plain[k]) for k in plain if k != "head.bias")
    e1, e2 = (ops.to_numpy(e) for e in Siamese(enc).embed_both({k: ops.asarray(v) for k, v in plain.items()}, x1, x2))
    mean_logit = np.mean(-np.abs(e1 - e2) @ np.logaddexp(0.0, plain["head.kernel"].astype(np.float64)))
    assert abs(centred["head.bias"][0] + mean_logit) < 2e-3 and plain["head.bias"][0] == 0
    assert centred["head.bias"][0] == round(float(centred["head.bias"][0]), 3)


def test_koch_initialisation():
    enc = KochEncoder(input_shape=(28, 28, 1), filters=(64, 128, 128), kernels=(5, 3, 2), embedding=1024,
                      init="koch")
    p = Siamese(enc, head="free", head_init="koch").init(3)
    assert np.array_equal(p["conv1.kernel"], enc.init(3)["conv1.kernel"])
    for name, mean, std in (("conv2.kernel", 0.0, 0.01), ("embed.kernel", 0.0, 0.2), ("conv2.bias", 0.5, 0.01),
                            ("embed.bias", 0.5, 0.01), ("head.kernel", 0.0, 0.2)):
        assert abs(p[name].mean() - mean) < 4 * std / np.sqrt(p[name].size) + 1e-12, name
        assert abs(p[name].std() / std - 1) < 0.15, name
    assert np.array_equal(Siamese(enc, head="free", head_init="koch").init(3)["head.kernel"], p["head.kernel"])


# ---- Koch's optimizer ------------------------------------------------------------------------------------
def _numpy_koch_sgd(params, grads_seq, lr, layer_lr, mom_end, mom_start, mom_steps, l2):
    p = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    for t, grads in enumerate(grads_seq):
        for k in p:
            layer = k.split(".")[0]
            mu = mom_start + min(t / mom_steps, 1.0) * (mom_end.get(layer, mom_end["*"]) - mom_start)
            g = grads[k] + l2.get(layer, l2["*"]) * p[k]
            buf[k] = mu * buf[k] + g
            p[k] = p[k] - lr(t) * layer_lr.get(layer, layer_lr["*"]) * buf[k]
    return p


def test_koch_sgd_matches_numpy(backend, float64):
    rng = np.random.default_rng(0)
    params = {"conv1.kernel": rng.normal(size=(3, 3)), "head.bias": rng.normal(size=(1,))}
    grads_seq = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(6)]
    layer_lr, mom, l2 = {"head": 10.0, "*": 1.0}, {"conv1": 0.8, "*": 0.95}, {"conv1": 0.01, "*": 0.0}
    opt = KochSGD(StepDecay(0.1, 2, 0.99), layer_lr=layer_lr, momentum=mom, momentum_start=0.5,
                  momentum_steps=4, l2=l2)
    p = {k: ops.asarray(v) for k, v in params.items()}
    state = opt.init(p)
    for g in grads_seq:
        p, state = opt.update(p, {k: ops.asarray(v) for k, v in g.items()}, state)
    want = _numpy_koch_sgd(params, grads_seq, StepDecay(0.1, 2, 0.99), layer_lr, mom, 0.5, 4, l2)
    for k in params:
        np.testing.assert_allclose(ops.to_numpy(p[k]), want[k], rtol=1e-12, atol=1e-14)
    assert state["step"] == 6


def _train_koch(backend: str, steps: int):
    """Free head, Koch's init and SGD, distorted pairs within 'alphabets'."""
    with mb.use_backend(backend):
        ds, alpha = _alphabet_data()
        ds = ArrayDataset(ds.x.astype(mb.floatx()), ds.y)
        enc = KochEncoder(input_shape=(8, 8, 1), filters=(4, 8), kernels=(3, 2), embedding=16, init="koch")
        net = Siamese(enc, head="free", head_init="koch", optimizer="koch-sgd",
                      koch_sgd={"layer_lr": {"head": 2.0, "*": 1.0}, "momentum": 0.9, "momentum_steps": 5,
                                "l2": {"*": 1e-3}})
        pairs = PairSampler(ds, 8, seed=0, within_alphabet=0.5, alphabet_ids=alpha, augment=True)
        return _run_steps(net, pairs, net.outer_optimizer(StepDecay(0.05, 3, 0.99)), steps)


def test_koch_recipe_parity_float64(float64, both_backends):
    lt, pt, gt = _train_koch("torch", 10)
    lf, pf, gf = _train_koch("tensorflow", 10)
    assert np.all(np.isfinite(lt))
    assert rel_diff(gt, gf) < 1e-9
    assert np.max(np.abs(lt - lf) / np.abs(lt)) < 1e-9, (lt, lf)
    assert rel_diff(flat(pt), flat(pf)) < 1e-9


def test_koch_recipe_parity_float32(both_backends):
    lt, _, gt = _train_koch("torch", 4)
    lf, _, gf = _train_koch("tensorflow", 4)
    assert np.max(np.abs(lt - lf) / np.abs(lt)) < 1e-5, (lt, lf)
    assert rel_diff(gt, gf) < 1e-5


# ---- the validation / test alphabets ------------------------------------------------------------------
def test_koch_alphabet_split_is_disjoint():
    from metabridge.recipes.datasets import koch_alphabet_split

    names = [f"a{i:02d}" for i in range(20)]
    val, test = koch_alphabet_split(np.repeat(names, 3), 10)
    assert len(val) == len(test) == 10 and not set(val) & set(test) and set(val) | set(test) == set(names)
    assert val == names[0::2]
    assert koch_alphabet_split(names, 0) == ([], names)


# ---- errors ---------------------------------------------------------------------------------------------
def test_bad_values():
    ds, alpha = _alphabet_data()
    enc = SmallConvEncoder(input_shape=(8, 8, 1), filters=(4,), embedding=8)
    expect_value_error(lambda: Siamese(enc, head="relu"), "head in", "'relu'")
    expect_value_error(lambda: Siamese(enc, head_init="zeros"), "head_init in", "'zeros'")
    expect_value_error(lambda: Siamese(enc, optimizer="rmsprop"), "optimizer in", "'rmsprop'")
    expect_value_error(lambda: Siamese(enc, loss="softmax"), "pairs='all-in-batch'", "pairs='independent'")
    expect_value_error(lambda: Siamese(enc, head_init="centred"), "probe", "probe=None")
    expect_value_error(lambda: Siamese(enc, optimizer="koch-sgd", koch_sgd={"momentum": 1.0}), "momentum", "1.0")
    expect_value_error(lambda: KochSGD(0.1, l2={"conv1": -1.0}), "l2 >= 0", "-1.0")
    expect_value_error(lambda: KochSGD(0.1, layer_lr=0.0), "layer_lr > 0")
    expect_value_error(lambda: KochSGD(-0.1), "lr > 0", "-0.1")
    expect_value_error(lambda: KochSGD(0.1, momentum_steps=0), "momentum_steps >= 1", "0")
    expect_value_error(lambda: KochSGD(0.1, momentum_start=1.5), "momentum_start", "1.5")
    expect_value_error(lambda: KochEncoder(input_shape=(28, 28, 1), init="he"), "init", "'he'")
    for bad in (-0.1, 1.5, True):
        expect_value_error(lambda: PairSampler(ds, 8, within_alphabet=bad, alphabet_ids=alpha), "within_alphabet")
    expect_value_error(lambda: PairSampler(ds, 8, within_alphabet=0.5), "alphabet_ids")
    expect_value_error(lambda: PairSampler(ds, 8, within_alphabet=0.5, alphabet_ids=alpha[:5]), "alphabet_ids",
                       "(5,)")
    expect_value_error(lambda: PairSampler(ds, 8, augment="yes"), "augment", "'yes'")


def test_bad_config_values():
    from metabridge.train.experiment import ExperimentConfig

    def cfg(**kw):
        return ExperimentConfig(algo="siamese", dataset="omniglot", split="lake", **kw).resolved()

    expect_value_error(lambda: cfg(siamese_head="relu"), "siamese_head in", "'relu'")
    expect_value_error(lambda: cfg(siamese_init="he"), "siamese_init in", "'he'")
    expect_value_error(lambda: cfg(siamese_encoder="resnet"), "siamese_encoder in", "'resnet'")
    expect_value_error(lambda: cfg(siamese_optimizer="lamb"), "siamese_optimizer in", "'lamb'")
    expect_value_error(lambda: cfg(siamese_loss="hinge"), "siamese_loss in", "'hinge'")
    expect_value_error(lambda: cfg(alphabet_group=0), "alphabet_group >= 1", "0")
    expect_value_error(lambda: cfg(siamese_loss="softmax"), "siamese_pairs='all-in-batch'", "'independent'")
    expect_value_error(lambda: cfg(within_alphabet=2.0), "within_alphabet", "2.0")
    expect_value_error(lambda: cfg(val_alphabets=20), "val_alphabets", "20")
    expect_value_error(lambda: cfg(layer_lr="head:10"), "layer_lr", "'head:10'")
    expect_value_error(lambda: cfg(siamese_optimizer="koch-sgd", momentum=1.2), "momentum", "1.2")
    expect_value_error(lambda: cfg(momentum_steps=0), "momentum_steps >= 1", "0")
    c = cfg(siamese_optimizer="koch-sgd", layer_lr="head=10, embed=2")
    assert c.layer_lr == "head=10, embed=2"
