"""Task transforms and variable-way, variable-shot episodes: pure functions of (seed, i) (issue 13)."""
from __future__ import annotations

import numpy as np
import pytest

from metabridge.data import ArrayDataset, Episode, EpisodeSampler
from metabridge.data.task_transforms import (
    STREAM, TransformedSampler, compose, flip, remap_labels, rotate90, transform_rng,
)
from metabridge.data.variable_episodes import VariableEpisodeSampler
from conftest import expect_value_error


def image_dataset(classes=8, per_class=10, size=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((classes * per_class, size, size, 2)).astype(np.float32)
    return ArrayDataset(x, np.repeat(np.arange(classes), per_class), name="toy")


def index_dataset(sizes):
    """x[i] holds i (so an episode tells which examples it took); class c has sizes[c] examples."""
    y = np.repeat(np.arange(len(sizes)), sizes)
    return ArrayDataset(np.arange(len(y), dtype=np.float64)[:, None], y, name="indexed")


def assert_episodes_equal(a: Episode, b: Episode):
    for f in ("support_x", "support_y", "query_x", "query_y"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


@pytest.fixture
def base():
    return EpisodeSampler(image_dataset(), ways=4, shots=2, queries=3, seed=11)


def test_streams_are_separate_from_the_sampler(base):
    # no transform: exactly the base episodes; transform streams differ from the sampler's [seed, i]
    assert_episodes_equal(TransformedSampler(base, []).episode(5), base.episode(5))
    a = transform_rng(11, 5, 0).random(4)
    assert not np.allclose(a, np.random.default_rng([11, 5]).random(4))
    np.testing.assert_array_equal(a, np.random.default_rng([11, 5, STREAM, 1]).random(4))


def test_remap_labels_matches_a_numpy_reference(base):
    s = TransformedSampler(base, [remap_labels])
    for i in range(5):
        ep, raw = s.episode(i), base.episode(i)
        perm = np.random.default_rng([11, i, STREAM, 1]).permutation(4)
        np.testing.assert_array_equal(ep.support_y, perm[raw.support_y])
        np.testing.assert_array_equal(ep.query_y, perm[raw.query_y])
        np.testing.assert_array_equal(ep.support_x, raw.support_x)
    assert any(not np.array_equal(s.episode(i).support_y, base.episode(i).support_y) for i in range(5))


@pytest.mark.parametrize("per", ["class", "task"])
def test_rotate90_matches_a_numpy_reference(base, per):
    s = TransformedSampler(base, [rotate90(per=per)])
    for i in range(6):
        ep, raw = s.episode(i), base.episode(i)
        rng = np.random.default_rng([11, i, STREAM, 1])
        k = rng.choice([0, 1, 2, 3], size=4 if per == "class" else 1)
        k = np.broadcast_to(k, (4,))
        for x, rx, y in ((ep.support_x, raw.support_x, raw.support_y), (ep.query_x, raw.query_x, raw.query_y)):
            want = np.stack([np.rot90(img, k[c], axes=(0, 1)) for img, c in zip(rx, y)])
            np.testing.assert_array_equal(x, want)
    assert_episodes_equal(s.episode(3), TransformedSampler(base, [rotate90(per=per)]).episode(3))


@pytest.mark.parametrize("per", ["class", "task", "example"])
def test_flip_matches_a_numpy_reference(base, per):
    s = TransformedSampler(base, [flip(horizontal=True, vertical=True, p=0.5, per=per)])
    for i in range(6):
        ep, raw = s.episode(i), base.episode(i)
        rng = np.random.default_rng([11, i, STREAM, 1])
        n_s, n_q = len(raw.support_x), len(raw.query_x)
        if per == "example":
            draws = rng.random((n_s + n_q, 2)) < 0.5
            ds_, dq_ = draws[:n_s], draws[n_s:]
        else:
            draws = rng.random((4 if per == "class" else 1, 2)) < 0.5
            draws = np.broadcast_to(draws, (4, 2))
            ds_, dq_ = draws[raw.support_y], draws[raw.query_y]
        for x, rx, d in ((ep.support_x, raw.support_x, ds_), (ep.query_x, raw.query_x, dq_)):
            want = []
            for img, (h, v) in zip(rx, d):
                img = img[:, ::-1] if h else img    # axis 1 of one image = width
                img = img[::-1] if v else img
                want.append(img)
            np.testing.assert_array_equal(x, np.stack(want))


def test_compose_batches_and_sharding(base):
    aug = compose(rotate90(), flip(per="example"), remap_labels)
    s = TransformedSampler(base, [aug])
    ep, raw = s.episode(2), base.episode(2)
    c0, c1, c2 = transform_rng(11, 2, 0).spawn(3)
    ref = remap_labels(flip(per="example")(rotate90()(raw, c0), c1), c2)
    assert_episodes_equal(ep, ref)
    b = s.batch(1, 4)
    for j in range(4):
        e = s.episode(4 + j)
        np.testing.assert_array_equal(b.support_x[j], e.support_x)
        np.testing.assert_array_equal(b.query_y[j], e.query_y)
    assert s.ways == 4 and s.shots == 2 and s.seed == 11


def test_transform_errors(base):
    flat = EpisodeSampler(ArrayDataset(np.zeros((40, 4, 6, 1)), np.repeat(np.arange(4), 10)), 2, 1, 1)
    expect_value_error(lambda: TransformedSampler(flat, [rotate90()]).episode(0), "square", "(2, 4, 6, 1)")
    expect_value_error(lambda: rotate90(per="example"), "per in", "example")
    expect_value_error(lambda: flip(p=1.5), "0 <= p <= 1")
    expect_value_error(lambda: flip(horizontal=False), "horizontal or vertical")
    expect_value_error(lambda: TransformedSampler(object(), []), "episode(i)")
    expect_value_error(lambda: TransformedSampler(base, ["rotate"]), "callables")


# ---- variable-way, variable-shot ---------------------------------------------------------------
def reference_variable_episode(ds, seed, i, min_w, max_w, min_k, max_k, q):
    """The documented algorithm, written again: (ways, classes, shots per class, indices)."""
    rng = np.random.default_rng([seed, i])
    ways = int(rng.integers(min_w, max_w + 1))
    chosen = rng.choice(ds.num_classes, size=ways, replace=False)
    shots = rng.integers(min_k, max_k + 1, size=ways)
    s_idx, q_idx, ks = [], [], []
    for c, k in zip(chosen, shots):
        pool = np.flatnonzero(ds.y == c)
        k = min(int(k), len(pool) - q)
        order = rng.permutation(len(pool))
        s_idx += list(pool[order[:k]])
        q_idx += list(pool[order[k:k + q]])
        ks.append(k)
    return ways, chosen, ks, np.array(s_idx), np.array(q_idx)


def test_variable_episodes_match_a_reference_and_vary():
    sizes = [12] * 15 + [5, 6]  # two small classes: their shots are capped at len - queries
    ds = index_dataset(sizes)
    s = VariableEpisodeSampler(ds, min_ways=3, max_ways=10, min_shots=1, max_shots=8, queries=3, seed=4)
    ways_seen, shots_seen = set(), set()
    for i in range(40):
        ep = s.episode(i)
        ways, chosen, ks, s_idx, q_idx = reference_variable_episode(ds, 4, i, 3, 10, 1, 8, 3)
        np.testing.assert_array_equal(ep.support_x[:, 0], s_idx)
        np.testing.assert_array_equal(ep.query_x[:, 0], q_idx)
        np.testing.assert_array_equal(np.bincount(ep.support_y, minlength=ways), ks)
        np.testing.assert_array_equal(ep.query_y, np.repeat(np.arange(ways), 3))
        # every example of label j comes from class chosen[j]; support and query are disjoint
        assert np.all(ds.y[ep.support_x[:, 0].astype(int)] == chosen[ep.support_y])
        assert not set(s_idx) & set(q_idx)
        assert all(k <= sizes[c] - 3 for k, c in zip(ks, chosen))
        ways_seen.add(ways)
        shots_seen.update(ks)
    assert ways_seen == set(range(3, 11)) and {1, 8} <= shots_seen
    assert_episodes_equal(s.episode(7), VariableEpisodeSampler(ds, 3, 10, 1, 8, 3, seed=4).episode(7))
    batch = s.batch(2, 5)
    assert len(batch) == 5
    assert_episodes_equal(batch[1], s.episode(11))


def test_variable_episodes_same_shots_option_and_errors():
    ds = index_dataset([10] * 6)
    s = VariableEpisodeSampler(ds, 2, 6, 1, 5, 2, seed=0, vary_shots_per_class=False)
    for i in range(10):
        assert len(set(np.bincount(s.episode(i).support_y))) == 1
    expect_value_error(lambda: VariableEpisodeSampler(ds, 2, 7, 1, 5, 2), "max_ways <= 6")
    expect_value_error(lambda: VariableEpisodeSampler(ds, 4, 3, 1, 5, 2), "max_ways >= 4")
    expect_value_error(lambda: VariableEpisodeSampler(ds, 2, 3, 5, 9, 6), "min_shots + queries <= 10")
    expect_value_error(lambda: VariableEpisodeSampler(ds, 1, 3, 1, 2, 2), "min_ways >= 2")
