"""Variable-way, variable-shot episodes (Meta-Dataset style) taken by ProtoNet and
Matching networks: a list of episodes of different sizes trains and evaluates
as the mean over its episodes, the same on both backends."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import expect_value_error, flat, rel_diff
from metabridge import ops
from metabridge.algorithms import MatchingNet, ProtoNet
from metabridge.data import TaskBatch, VariableEpisodeSampler, load_digits
from metabridge.nn import MLP


def _episodes():
    ds = load_digits("train", dtype="float64")
    flat_x = type(ds)(ds.x.reshape(len(ds.x), -1), ds.y, name="digits")
    sampler = VariableEpisodeSampler(flat_x, min_ways=2, max_ways=5, min_shots=1, max_shots=4, queries=3, seed=3)
    episodes = sampler.batch(0, 4)
    assert len({(len(ep.support_y), int(ep.support_y.max())) for ep in episodes}) > 1  # sizes really differ
    return episodes


@pytest.mark.parametrize("kind", [ProtoNet, MatchingNet])
def test_list_of_episodes_is_the_mean_over_episodes(backend, float64, kind):
    episodes = _episodes()
    alg = kind(MLP([64, 32, 16]))
    params = alg.init(0)
    loss, grads = alg.meta_value_and_grad(params, episodes)
    singles = [alg.meta_value_and_grad(params, TaskBatch.stack([ep])) for ep in episodes]
    ref_loss = np.mean([float(ops.to_numpy(l)) for l, _ in singles])
    ref_grad = np.mean([flat(g) for _, g in singles], axis=0)
    assert abs(float(ops.to_numpy(loss)) - ref_loss) <= 1e-12 * abs(ref_loss)
    assert rel_diff(flat(grads), ref_grad) < 1e-12
    out = alg.evaluate(params, episodes)
    assert out["accuracy"].shape == (len(episodes),)
    for t, ep in enumerate(episodes):
        assert out["accuracy"][t] == alg.evaluate(params, TaskBatch.stack([ep]))["accuracy"][0]


def test_variable_episodes_parity(both_backends, float64):
    import metabridge as mb

    episodes = _episodes()
    results = {}
    for b in both_backends:
        with mb.use_backend(b):
            alg = ProtoNet(MLP([64, 32, 16]))
            loss, grads = alg.meta_value_and_grad(alg.init(0), episodes)
            results[b] = (float(ops.to_numpy(loss)), flat(grads))
    assert abs(results["torch"][0] - results["tensorflow"][0]) <= 1e-12 * abs(results["torch"][0])
    assert rel_diff(results["torch"][1], results["tensorflow"][1]) < 1e-12


def test_bad_episode_list_is_refused(backend):
    alg = ProtoNet(MLP([64, 32, 16]))
    expect_value_error(lambda: alg.meta_value_and_grad(alg.init(0), []), "non-empty list of metabridge.data.Episode")
    expect_value_error(lambda: alg.meta_value_and_grad(alg.init(0), [1, 2]), "Received: a list of ['int', 'int']")


def _maml_family(kind, model):
    from metabridge.algorithms import ANIL, MAML, MetaSGD

    return {"maml": lambda: MAML(model, 0.3, 2), "fomaml": lambda: MAML(model, 0.3, 1, first_order=True),
            "metasgd": lambda: MetaSGD(model, 0.3), "anil": lambda: ANIL(model, 0.3, 2)}[kind]()


@pytest.mark.parametrize("kind", ["maml", "fomaml", "metasgd", "anil"])
def test_maml_family_uses_the_first_ways_outputs_of_a_larger_head(backend, float64, kind):
    """An episode of w ways on a head of 5 outputs behaves exactly like the same
    network with a head of w outputs (its first w columns); the other columns get
    no gradient from it. Reference: the algorithm on the small network, per episode."""
    episodes = _episodes()
    alg = _maml_family(kind, MLP([64, 32, 5]))
    params = alg.init(0) if kind == "metasgd" else alg.model.init(0)
    head = [k for k in params if k.endswith(("dense2.kernel", "dense2.bias"))]
    loss, grads = alg.meta_value_and_grad(params, episodes)
    ref_loss, ref_grad = 0.0, {k: np.zeros(np.shape(v)) for k, v in params.items()}
    for ep in episodes:
        w = int(ep.support_y.max()) + 1
        small = _maml_family(kind, MLP([64, 32, w]))
        sliced = {k: (v[..., :w] if k in head else v) for k, v in params.items()}
        l, g = small.meta_value_and_grad(sliced, TaskBatch.stack([ep]))
        ref_loss += float(ops.to_numpy(l)) / len(episodes)
        for k, v in g.items():
            part = ops.to_numpy(v) / len(episodes)
            if k in head:
                ref_grad[k][..., :w] += part
            else:
                ref_grad[k] += part
    assert abs(float(ops.to_numpy(loss)) - ref_loss) <= 1e-12 * abs(ref_loss)
    got = np.concatenate([np.ravel(ops.to_numpy(grads[k])) for k in params])
    want = np.concatenate([np.ravel(ref_grad[k]) for k in params])
    assert rel_diff(got, want) < 1e-10
    out = alg.evaluate(params, episodes)
    assert out["accuracy"].shape[0] == len(episodes)
    expect_value_error(lambda: _maml_family(kind, MLP([64, 32, 3])).meta_value_and_grad(params, episodes),
                       "Expected episodes of at most 3 ways")
