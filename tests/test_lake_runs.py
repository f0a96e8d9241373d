"""Lake et al.'s one-shot runs (reader, preprocessing, exact scoring protocol, model
adapters) and the within-alphabet episode sampler, on generated fixtures."""
from __future__ import annotations

import io
import os
import shutil
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import Siamese, embedding_similarity, siamese_similarity
from metabridge.data import (
    Episode,
    LakeRun,
    TaskBatch,
    WithinAlphabetEpisodeSampler,
    load_lake_runs,
    score_episodes,
    score_lake_runs,
)
from metabridge.data.lake_runs import preprocess_omniglot_image
from metabridge.nn import SmallConvEncoder


# ---- fixture: the all_runs layout ------------------------------------------------------------------
def _drawing(rng) -> Image.Image:
    """A 105×105 one-bit image, black strokes on white, like Omniglot's PNGs."""
    im = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        pts = [tuple(int(v) for v in rng.integers(10, 95, size=2)) for _ in range(3)]
        draw.line(pts, fill=0, width=4)
    return im


def _write_runs(base, n_runs: int, ways: int, seed: int = 0, shuffle_lines=()) -> dict:
    """``base/all_runs/runNN``: test item j is the training image of class answers[j]."""
    rng = np.random.default_rng(seed)
    answers = {}
    for r in range(1, n_runs + 1):
        run = f"run{r:02d}"
        for sub in ("training", "test"):
            os.makedirs(os.path.join(base, "all_runs", run, sub))
        drawings = [_drawing(rng) for _ in range(ways)]
        for c, im in enumerate(drawings):
            im.save(os.path.join(base, "all_runs", run, "training", f"class{c + 1:02d}.png"))
        perm = rng.permutation(ways)
        lines = []
        for j in range(ways):
            drawings[perm[j]].save(os.path.join(base, "all_runs", run, "test", f"item{j + 1:02d}.png"))
            lines.append(f"{run}/test/item{j + 1:02d}.png {run}/training/class{perm[j] + 1:02d}.png")
        if r in shuffle_lines:
            lines = [lines[k] for k in rng.permutation(ways)]
        with open(os.path.join(base, "all_runs", run, "class_labels.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        answers[run] = perm
    return answers


def _zip_dir(folder, zip_path, arc_root="all_runs"):
    with zipfile.ZipFile(zip_path, "w") as z:
        for dirpath, _, files in os.walk(folder):
            for name in sorted(files):
                full = os.path.join(dirpath, name)
                z.write(full, os.path.join(arc_root, os.path.relpath(full, folder)))


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """3 runs of 5 classes (run02's label lines shuffled), plain and zipped."""
    base = str(tmp_path_factory.mktemp("lake"))
    answers = _write_runs(base, n_runs=3, ways=5, seed=1, shuffle_lines=(2,))
    zipped = str(tmp_path_factory.mktemp("lakezip"))
    _zip_dir(os.path.join(base, "all_runs"), os.path.join(zipped, "all_runs.zip"))
    return base, zipped, answers


def _neg_pixel_l2(test, train):
    t, s = test.reshape(len(test), -1), train.reshape(len(train), -1)
    return -np.sqrt(((t[:, None, :] - s[None, :, :]) ** 2).sum(-1))


# ---- reading -----------------------------------------------------------------------------------------
def test_read_runs_shapes_answers_and_files(small_runs):
    base, _, answers = small_runs
    runs = load_lake_runs(os.path.join(base, "all_runs"), image_size=28)
    assert [r.name for r in runs] == ["run01", "run02", "run03"]
    for run in runs:
        assert isinstance(run, LakeRun) and run.ways == 5
        assert run.train_images.shape == (5, 28, 28, 1) and run.test_images.shape == (5, 28, 28, 1)
        assert run.train_images.dtype == np.float32
        assert run.train_files == tuple(f"{run.name}/training/class{c:02d}.png" for c in range(1, 6))
        assert run.test_files == tuple(f"{run.name}/test/item{j:02d}.png" for j in range(1, 6))
        np.testing.assert_array_equal(run.answers, answers[run.name])  # run02: lines shuffled, pairs kept
        for j, a in enumerate(run.answers):
            np.testing.assert_array_equal(run.test_images[j], run.train_images[a])
        ep = run.episode()
        assert isinstance(ep, Episode)
        np.testing.assert_array_equal(ep.support_y, np.arange(5))
        np.testing.assert_array_equal(ep.query_y, run.answers)


def test_root_forms_agree(small_runs):
    base, zipped, _ = small_runs
    ref = load_lake_runs(os.path.join(base, "all_runs"), image_size=20)
    for root in (base, zipped, os.path.join(zipped, "all_runs.zip")):
        other = load_lake_runs(root, image_size=20)
        assert [r.name for r in other] == [r.name for r in ref]
        for a, b in zip(ref, other):
            np.testing.assert_array_equal(a.train_images, b.train_images)
            np.testing.assert_array_equal(a.test_images, b.test_images)
            np.testing.assert_array_equal(a.answers, b.answers)
            assert a.train_files == b.train_files and a.test_files == b.test_files
    assert [r.name for r in load_lake_runs(base, runs=[3, 1])] == ["run01", "run03"]


def test_zip_without_folder_prefix(small_runs, tmp_path):
    base, _, answers = small_runs
    path = str(tmp_path / "runs.zip")
    _zip_dir(os.path.join(base, "all_runs"), path, arc_root="")
    runs = load_lake_runs(path, image_size=12)
    assert len(runs) == 3
    np.testing.assert_array_equal(runs[0].answers, answers["run01"])


def test_preprocessing_strokes_one_background_zero(tmp_path):
    white = Image.new("1", (105, 105), 1)
    np.testing.assert_array_equal(preprocess_omniglot_image(white, 28), np.zeros((28, 28, 1), np.float32))
    black = Image.new("1", (105, 105), 0)
    np.testing.assert_array_equal(preprocess_omniglot_image(black, 28), np.ones((28, 28, 1), np.float32))
    im = _drawing(np.random.default_rng(3))
    expected = 1.0 - np.asarray(im.convert("L").resize((28, 28), Image.LANCZOS), np.float32) / 255.0
    got = preprocess_omniglot_image(im, 28)
    np.testing.assert_allclose(got[..., 0], expected, atol=1e-7)
    assert got.dtype == np.float32 and 0.0 <= got.min() and got.max() <= 1.0
    assert 0.0 < got.mean() < 0.5                                   # mostly background
    native = preprocess_omniglot_image(im, None)                    # no resize: exactly 0 and 1
    assert native.shape == (105, 105, 1) and set(np.unique(native)) == {0.0, 1.0}
    path = tmp_path / "a.png"
    im.save(path)
    np.testing.assert_array_equal(preprocess_omniglot_image(str(path), 28), got)
    np.testing.assert_array_equal(preprocess_omniglot_image(path.read_bytes(), 28), got)


def test_preprocessing_matches_the_omniglot_reader():
    """The same recipe as metabridge.data.omniglot (when that reader is present)."""
    omniglot = pytest.importorskip("metabridge.data.omniglot")
    decode = getattr(omniglot, "_decode_png", None)
    if decode is None:
        pytest.skip("metabridge.data.omniglot has no _decode_png")
    buf = io.BytesIO()
    _drawing(np.random.default_rng(4)).save(buf, format="PNG")
    for size in (28, 105):
        ours = preprocess_omniglot_image(buf.getvalue(), size)
        theirs = np.asarray(decode(buf.getvalue(), size)).reshape(size, size)
        np.testing.assert_array_equal(ours[..., 0], theirs)


def test_full_twenty_way_run(tmp_path):
    answers = _write_runs(str(tmp_path), n_runs=1, ways=20, seed=5)
    (run,) = load_lake_runs(str(tmp_path), image_size=28)
    assert run.train_images.shape == (20, 28, 28, 1) and run.test_images.shape == (20, 28, 28, 1)
    np.testing.assert_array_equal(run.answers, answers["run01"])
    assert sorted(run.answers.tolist()) == list(range(20))
    result = score_lake_runs([run], _neg_pixel_l2)
    assert result["per_run_error"].tolist() == [0.0] and result["mean_error"] == 0.0


# ---- the protocol ------------------------------------------------------------------------------------
def test_oracle_and_inverted_similarity(small_runs):
    runs = load_lake_runs(small_runs[0], image_size=28)
    good = score_lake_runs(runs, _neg_pixel_l2)
    np.testing.assert_array_equal(good["per_run_error"], [0.0, 0.0, 0.0])
    assert good["mean_error"] == 0.0 and good["accuracy"] == 100.0 and good["ci95"] == 0.0
    assert good["runs"] == ["run01", "run02", "run03"]
    for run, pred in zip(runs, good["predictions"]):
        np.testing.assert_array_equal(pred, run.answers)
    bad = score_lake_runs(runs, lambda t, s: -_neg_pixel_l2(t, s))  # the farthest image: never itself
    np.testing.assert_array_equal(bad["per_run_error"], [100.0, 100.0, 100.0])
    assert bad["accuracy"] == 0.0


def test_error_counts_ties_and_mean_exactly(small_runs):
    runs = load_lake_runs(small_runs[0], image_size=8)
    wrong = {"run01": 0, "run02": 1, "run03": 3}                    # test items made wrong per run

    def similarity(test, train):
        run = next(r for r in runs if np.array_equal(r.test_images, test))
        scores = np.zeros((len(test), len(train)))
        for j, a in enumerate(run.answers):
            target = a if j >= wrong[run.name] else (a + 1) % len(train)
            scores[j, target] = 1.0
        return scores

    result = score_lake_runs(runs, similarity)
    np.testing.assert_allclose(result["per_run_error"], [0.0, 20.0, 60.0])
    assert result["mean_error"] == pytest.approx(80.0 / 3)
    assert result["accuracy"] == pytest.approx(100.0 - 80.0 / 3)
    ties = score_lake_runs(runs, lambda t, s: np.zeros((len(t), len(s))))  # all tied: index 0 wins
    for run, pred in zip(runs, ties["predictions"]):
        np.testing.assert_array_equal(pred, np.zeros(5))
        assert ties["per_run_error"][runs.index(run)] == 100.0 * np.mean(run.answers != 0)


def test_embedding_similarity_adapter(small_runs):
    runs = load_lake_runs(small_runs[0], image_size=16)
    flat = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731
    for metric in ("l2", "cosine"):
        assert score_lake_runs(runs, embedding_similarity(flat, metric))["mean_error"] == 0.0
    x = np.random.default_rng(0).standard_normal((4, 3))
    y = np.random.default_rng(1).standard_normal((5, 3))
    l2 = embedding_similarity(lambda a: a, "l2")(x, y)
    np.testing.assert_allclose(l2, -np.linalg.norm(x[:, None] - y[None], axis=-1), atol=1e-12)
    cos = embedding_similarity(lambda a: a, "cosine")(x, y)
    ref = (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))
    np.testing.assert_allclose(cos, ref, atol=1e-12)


def test_siamese_adapters_on_backend(small_runs, backend):
    runs = load_lake_runs(small_runs[0], image_size=12)
    net = Siamese(SmallConvEncoder(input_shape=(12, 12, 1), filters=(4, 8), embedding=16),
                  distance="l1", loss="bce")
    params = net.init(seed=0)
    result = score_lake_runs(runs, siamese_similarity(net, params))
    for run, pred in zip(runs, result["predictions"]):
        expected = net.one_shot_predictions(params, run.train_images, np.arange(run.ways), run.test_images)
        np.testing.assert_array_equal(pred, expected)
        assert result["per_run_error"][runs.index(run)] == pytest.approx(
            100.0 * (1.0 - net.one_shot_accuracy(params, run.episode())))
    # embeddings returned as tensors of the active backend
    tensors = {k: ops.asarray(v) for k, v in params.items()}
    by_embedding = score_lake_runs(runs, embedding_similarity(lambda x: net.embed(tensors, ops.asarray(x))))
    assert by_embedding["per_run_error"].shape == (3,)
    assert mb.get_backend() == backend


# ---- errors ------------------------------------------------------------------------------------------
def test_reader_errors(small_runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected root.*Received: root="):
        load_lake_runs(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="Expected root to be all_runs/"):
        load_lake_runs(str(tmp_path))
    not_zip = tmp_path / "x.txt"
    not_zip.write_text("hello")
    with pytest.raises(ValueError, match="Expected root to be a directory or a zip"):
        load_lake_runs(str(not_zip))
    with pytest.raises(ValueError, match="Expected image_size"):
        load_lake_runs(small_runs[0], image_size=0)
    with pytest.raises(ValueError, match=r"Expected runs among.*Received: runs=\[7\]"):
        load_lake_runs(small_runs[0], runs=[7])

    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(small_runs[0], "all_runs"), broken / "all_runs")
    labels = broken / "all_runs" / "run01" / "class_labels.txt"
    original = labels.read_text()
    labels.write_text("run01/test/item01.png\n")
    with pytest.raises(ValueError, match="Expected lines '<test image> <training image>'.*Received: line 1"):
        load_lake_runs(str(broken))
    labels.write_text(original)
    os.remove(broken / "all_runs" / "run01" / "training" / "class02.png")
    with pytest.raises(FileNotFoundError, match="Expected the image 'run01/training/class02.png'"):
        load_lake_runs(str(broken))


def test_scorer_errors(small_runs):
    runs = load_lake_runs(small_runs[0], image_size=8, runs=[1])
    with pytest.raises(ValueError, match=r"Expected similarity_fn.*\(5, 5\).*Received: shape \(5, 4\)"):
        score_lake_runs(runs, lambda t, s: np.zeros((5, 4)))
    with pytest.raises(ValueError, match="Expected finite similarity scores"):
        score_lake_runs(runs, lambda t, s: np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="Expected a non-empty list of LakeRun"):
        score_lake_runs([], _neg_pixel_l2)
    with pytest.raises(ValueError, match="Expected metric"):
        embedding_similarity(lambda x: x, "l1")


# ---- within-alphabet episodes ------------------------------------------------------------------------
def _alphabets(sizes=(6, 3, 14), drawers=5, local_names=False):
    """x[i] = [alphabet, character, drawer, i]; ids per image."""
    rows, chars, alphas = [], [], []
    for a, n_chars in enumerate(sizes):
        for c in range(n_chars):
            for d in range(drawers):
                rows.append([a, c, d, len(rows)])
                chars.append(f"character{c + 1:02d}" if local_names else a * 100 + c)
                alphas.append(f"alphabet{a}")
    return np.array(rows, dtype=np.float32), np.array(chars), np.array(alphas)


def test_within_alphabet_episodes_are_pure_and_within_one_alphabet():
    x, chars, alphas = _alphabets()
    sampler = WithinAlphabetEpisodeSampler(x, chars, alphas, ways=4, shots=2, queries=1, seed=3)
    assert sampler.num_alphabets == 2 and sampler.alphabet_names == ["alphabet0", "alphabet2"]
    again = WithinAlphabetEpisodeSampler(x, chars, alphas, ways=4, shots=2, queries=1, seed=3)
    other_seed = WithinAlphabetEpisodeSampler(x, chars, alphas, ways=4, shots=2, queries=1, seed=4)
    seen_alphabets, differs = set(), False
    for i in (0, 1, 2, 7, 50):
        ep = sampler.episode(i)
        for f in ("support_x", "support_y", "query_x", "query_y"):
            np.testing.assert_array_equal(getattr(ep, f), getattr(sampler.episode(i), f))
            np.testing.assert_array_equal(getattr(ep, f), getattr(again.episode(i), f))
        differs |= not np.array_equal(ep.support_x, other_seed.episode(i).support_x)
        assert ep.support_x.shape == (8, 4) and ep.query_x.shape == (4, 4)
        np.testing.assert_array_equal(ep.support_y, np.repeat(np.arange(4), 2))
        np.testing.assert_array_equal(ep.query_y, np.arange(4))
        alphabet = np.unique(np.concatenate([ep.support_x[:, 0], ep.query_x[:, 0]]))
        assert len(alphabet) == 1 and alphabet[0] != 1             # alphabet1 has only 3 characters
        seen_alphabets.add(int(alphabet[0]))                       # both eligible alphabets are drawn
        s_chars = ep.support_x[:, 1].reshape(4, 2)
        assert np.all(s_chars == s_chars[:, :1]) and len(np.unique(s_chars[:, 0])) == 4
        np.testing.assert_array_equal(ep.query_x[:, 1], s_chars[:, 0])   # labels line up
        s_drawers = ep.support_x[:, 2].reshape(4, 2)
        q_drawers = ep.query_x[:, 2]
        assert np.all(s_drawers == s_drawers[:1]) and np.all(q_drawers == q_drawers[0])  # shared drawers
        assert not set(s_drawers[0]) & set(q_drawers)                     # disjoint drawers
        name, s_idx, q_idx = sampler.episode_indices(i)
        np.testing.assert_array_equal(x[s_idx], ep.support_x)
        assert name == f"alphabet{int(alphabet[0])}"
    seen_alphabets |= {sampler.episode_indices(i)[0] for i in range(40)}
    assert differs and seen_alphabets - {0, 2} == {"alphabet0", "alphabet2"}
    batch = sampler.batch(step=1, meta_batch=3)
    assert isinstance(batch, TaskBatch) and batch.support_x.shape == (3, 8, 4)
    np.testing.assert_array_equal(batch.query_x[0], sampler.episode(3).query_x)


def test_within_alphabet_names_and_explicit_drawers():
    x, chars, alphas = _alphabets(sizes=(5, 5), drawers=4, local_names=True)  # "character01" in both
    drawers = (x[:, 2] + 1) * 10                                              # drawer ids 10..40
    order = np.random.default_rng(0).permutation(len(x))                      # any image order
    sampler = WithinAlphabetEpisodeSampler(x[order], chars[order], alphas[order], ways=5, shots=1,
                                           queries=3, seed=0, drawer_ids=drawers[order])
    ep = sampler.episode(0)
    assert len(np.unique(ep.support_x[:, 1])) == 5 and len(np.unique(ep.support_x[:, 0])) == 1
    assert not set(ep.support_x[:, 2]) & set(ep.query_x[:, 2])


def test_within_alphabet_errors():
    x, chars, alphas = _alphabets()
    with pytest.raises(ValueError) as info:
        WithinAlphabetEpisodeSampler(x, chars, alphas, ways=20, seed=0)
    assert str(info.value) == "Expected ways <= 14 (characters in the largest alphabet). Received: ways=20"
    with pytest.raises(ValueError, match=r"Expected shots \+ queries <= 5 .*Received: shots=3, queries=3"):
        WithinAlphabetEpisodeSampler(x, chars, alphas, ways=5, shots=3, queries=3)
    with pytest.raises(ValueError, match=r"Expected alphabet_ids of shape \[115\] .one per image.. "
                                         r"Received: alphabet_ids.shape=\(114,\)"):
        WithinAlphabetEpisodeSampler(x, chars, alphas[:-1], ways=5)
    with pytest.raises(ValueError, match="Expected one image per \\(character, drawer\\)"):
        WithinAlphabetEpisodeSampler(x, chars, alphas, ways=5, drawer_ids=np.zeros(len(x)))
    with pytest.raises(ValueError, match="Expected ways >= 2"):
        WithinAlphabetEpisodeSampler(x, chars, alphas, ways=1)
    sampler = WithinAlphabetEpisodeSampler(x, chars, alphas, ways=5)
    with pytest.raises(ValueError, match="Expected index >= 0"):
        sampler.episode(-1)


def test_within_alphabet_from_dataset():
    x, chars, alphas = _alphabets(sizes=(5, 6), drawers=4)
    ds = SimpleNamespace(x=x, y=chars.astype(np.int64), alphabet=alphas, drawer=x[:, 2].astype(int) + 1)
    sampler = WithinAlphabetEpisodeSampler.from_dataset(ds, ways=5, shots=1, queries=2, seed=1)
    direct = WithinAlphabetEpisodeSampler(x, chars, alphas, ways=5, shots=1, queries=2, seed=1,
                                          drawer_ids=ds.drawer)
    np.testing.assert_array_equal(sampler.episode(4).query_x, direct.episode(4).query_x)
    with pytest.raises(ValueError, match="Expected a dataset with x, y and alphabet.*without alphabet"):
        WithinAlphabetEpisodeSampler.from_dataset(SimpleNamespace(x=x, y=chars), ways=5)


def test_score_episodes_protocol():
    x, chars, alphas = _alphabets()
    sampler = WithinAlphabetEpisodeSampler(x, chars, alphas, ways=5, seed=0)

    def same_character(q, s):                      # oracle: character identity (alphabet, character)
        return -(np.abs(q[:, None, 0] - s[None, :, 0]) + np.abs(q[:, None, 1] - s[None, :, 1]))

    good = score_episodes(sampler, same_character, num_episodes=6)
    np.testing.assert_array_equal(good["per_run_error"], np.zeros(6))
    assert good["runs"] == list(range(6)) and good["accuracy"] == 100.0
    bad = score_episodes(sampler, lambda q, s: -same_character(q, s), num_episodes=6, start=2)
    assert bad["mean_error"] == 100.0 and bad["runs"] == list(range(2, 8))
