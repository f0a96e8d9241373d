"""ImageFolder: your own images, one folder per class (issue 13)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from metabridge.data import ArrayDataset, EpisodeSampler
from metabridge.data.image_folder import ImageFolder, read_split_file, scan_class_folders, split_classes
from metabridge.data.lazy_images import LazyImages
from conftest import expect_value_error


def make_tree(root, supers=("alpha", "beta"), classes=4, per_class=6, size=(20, 24), seed=0, fmt="png"):
    """``root/<super>/char<c>/<k>.<fmt>`` with random RGB images; returns {path: uint8 array}."""
    rng = np.random.default_rng(seed)
    written = {}
    for s in supers:
        for c in range(classes):
            folder = os.path.join(root, s, f"char{c}")
            os.makedirs(folder, exist_ok=True)
            for k in range(per_class):
                arr = rng.integers(0, 256, size + (3,), dtype=np.uint8)
                path = os.path.join(folder, f"{k}.{fmt}")
                Image.fromarray(arr).save(path)
                written[path] = arr
    return written


def reference(path, size=None, grey=False, invert=False):
    """Independent decode: Pillow open, convert, LANCZOS resize, /255 in float64."""
    im = Image.open(path).convert("L" if grey else "RGB")
    if size is not None:
        im = im.resize((size[1], size[0]), Image.LANCZOS)
    a = np.asarray(im, dtype=np.float64)
    a = a[:, :, None] if grey else a
    return (255.0 - a if invert else a) / 255.0


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    make_tree(root)
    return root


def test_values_layout_and_labels(tree):
    ds = ImageFolder(tree, image_size=16, split="all")
    assert ds.class_names == sorted(f"{s}/char{c}" for s in ("alpha", "beta") for c in range(4))
    assert ds.num_classes == 8 and len(ds) == 48 and ds.x.shape == (48, 16, 16, 3)
    # labels follow the sorted class names; files are under their class folder
    for i, (path, label) in enumerate(zip(ds.files, ds.y)):
        assert os.path.dirname(path) == ds.class_folders[label]
    got = ds.x[np.arange(len(ds))]
    want = np.stack([reference(p, (16, 16)) for p in ds.files])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    # an int, a slice and a 2-D index behave like indexing the array
    np.testing.assert_allclose(ds.x[3], want[3], atol=1e-6)
    np.testing.assert_allclose(ds.x[2:7], want[2:7], atol=1e-6)
    np.testing.assert_allclose(ds.x[np.array([[1, 2], [5, 1]])], want[[[1, 2], [5, 1]]], atol=1e-6)


def test_grey_invert_normalise_and_original_size(tree):
    ds = ImageFolder(tree, image_size=None, channels=1, invert=True, split="all", mean=[0.5], std=[0.25])
    assert ds.x.shape == (48, 20, 24, 1)
    want = (np.stack([reference(p, grey=True, invert=True) for p in ds.files[:10]]) - 0.5) / 0.25
    np.testing.assert_allclose(ds.x[np.arange(10)], want, atol=1e-5)
    u8 = ImageFolder(tree, image_size=(10, 12), split="all", dtype="uint8")
    assert u8.x[0].dtype == np.uint8 and u8.x[0].shape == (10, 12, 3)
    np.testing.assert_array_equal(u8.x[0], np.round(reference(u8.files[0], (10, 12)) * 255).astype(np.uint8))


def test_episodes_equal_those_of_the_materialised_arrays(tree):
    ds = ImageFolder(tree, image_size=12, split="all")
    dense = ArrayDataset(np.asarray(ds.x), ds.y, name="dense")
    lazy_s, dense_s = ds.episode_sampler(5, 2, 3, seed=7), EpisodeSampler(dense, 5, 2, 3, seed=7)
    for step in range(3):
        a, b = lazy_s.batch(step, 4), dense_s.batch(step, 4)
        for f in ("support_x", "support_y", "query_x", "query_y"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_seeded_split_is_a_classwise_partition(tree):
    names = sorted(scan_class_folders(tree))
    parts = split_classes(names, seed=3, ratios=(0.5, 0.25, 0.25))
    assert [len(parts[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert sorted(sum(parts.values(), [])) == names
    assert parts == split_classes(names, seed=3, ratios=(0.5, 0.25, 0.25))
    seen = {tuple(split_classes(names, seed=s)["train"]) for s in range(6)}
    assert len(seen) > 1  # the seed matters
    datasets = {s: ImageFolder(tree, 8, split=s, seed=3, split_ratios=(0.5, 0.25, 0.25)) for s in parts}
    for s, ds in datasets.items():
        assert ds.class_names == parts[s] and len(ds) == 6 * len(parts[s])
    by_super = split_classes(names, seed=0, ratios=(0.5, 0.5, 0.0), split_by="superclass")
    assert {n.split("/")[0] for n in by_super["train"]}.isdisjoint({n.split("/")[0] for n in by_super["val"]})
    assert len(by_super["train"]) == 4 and by_super["test"] == []


def test_split_files_json_and_csv(tree, tmp_path):
    names = sorted(scan_class_folders(tree))
    js = tmp_path / "split.json"
    js.write_text(json.dumps({"train": ["alpha"], "val": ["beta/char0", "beta/char1"], "test": ["beta/char3"]}))
    got = read_split_file(js, names)
    assert got == {"train": [f"alpha/char{c}" for c in range(4)], "val": ["beta/char0", "beta/char1"],
                   "test": ["beta/char3"]}
    cs = tmp_path / "split.csv"
    cs.write_text("split,folder\n# comment\ntrain,alpha/char0\ntrain,alpha/char1\n\nval,beta\n")
    ds = ImageFolder(tree, 8, split="val", split_file=cs)
    assert ds.class_names == [f"beta/char{c}" for c in range(4)]
    assert ImageFolder(tree, 8, split="train", split_file=js).num_classes == 4
    bad = tmp_path / "bad.csv"
    bad.write_text("train,alpha/char0\ntrain,gamma\n")
    expect_value_error(lambda: read_split_file(bad, names), "'gamma'", str(bad), "line 2")
    twice = tmp_path / "twice.csv"
    twice.write_text("train,alpha\nval,alpha/char2\n")
    expect_value_error(lambda: read_split_file(twice, names), "alpha/char2", "train and val")
    short = tmp_path / "short.csv"
    short.write_text("train,alpha/char0\nval,alpha/char1\n")
    expect_value_error(lambda: ImageFolder(tree, 8, split="val", split_file=short), "split 'val'", "Received: 1")
    with pytest.raises(FileNotFoundError):
        ImageFolder(tree, 8, split_file=tmp_path / "missing.json")


def test_bad_trees_name_the_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ImageFolder(tmp_path / "nope")
    make_tree(tmp_path / "a", supers=("s",), classes=3)
    os.makedirs(tmp_path / "a" / "s" / "empty")
    (tmp_path / "a" / "s" / "empty" / "notes.txt").write_text("not an image")
    expect_value_error(lambda: ImageFolder(tmp_path / "a"), "no images in", str(tmp_path / "a" / "s" / "empty"))

    make_tree(tmp_path / "one", supers=("s",), classes=1)
    expect_value_error(lambda: ImageFolder(tmp_path / "one"), "at least 2 class folders", "char0")

    make_tree(tmp_path / "bad", supers=("s",), classes=3)
    broken = tmp_path / "bad" / "s" / "char1" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    expect_value_error(lambda: ImageFolder(tmp_path / "bad", 8, split="all"), "readable image", str(broken))
    lazy = ImageFolder(tmp_path / "bad", 8, split="all", check_files=False)  # found when decoded instead
    i = lazy.files.index(str(broken))
    expect_value_error(lambda: lazy.x[np.array([0, i])], "readable image", str(broken))

    make_tree(tmp_path / "few", supers=("s",), classes=3, per_class=4)
    os.remove(tmp_path / "few" / "s" / "char2" / "0.png")
    ds = ImageFolder(tmp_path / "few", 8, split="all")
    expect_value_error(lambda: ds.episode_sampler(2, 2, 2), "at least 4 images", str(tmp_path / "few" / "s" / "char2"),
                       "Received: 3")
    ds.episode_sampler(2, 1, 2)  # 3 is enough

    make_tree(tmp_path / "mixed", supers=("s",), classes=2, size=(8, 8))
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "mixed" / "s" / "char1" / "odd.png")
    expect_value_error(lambda: ImageFolder(tmp_path / "mixed", None, split="all"), "odd.png", "9x8")
    assert ImageFolder(tmp_path / "mixed", 8, split="all").x[np.arange(13)].shape == (13, 8, 8, 3)

    make_tree(tmp_path / "flat", supers=("s",), classes=2)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "flat" / "stray.png")
    expect_value_error(lambda: ImageFolder(tmp_path / "flat"), "directly in it", "stray.png")
    os.remove(tmp_path / "flat" / "stray.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "flat" / "s" / "stray.png")
    expect_value_error(lambda: ImageFolder(tmp_path / "flat"), "holds both", str(tmp_path / "flat" / "s"))


def test_pixel_cap_and_decompression_bombs(tmp_path, monkeypatch):
    make_tree(tmp_path / "t", supers=("s",), classes=2, size=(20, 24))
    big = tmp_path / "t" / "s" / "char0" / "0.png"
    expect_value_error(lambda: ImageFolder(tmp_path / "t", 8, split="all", max_pixels=400), "at most 400 pixels",
                       "24x20 = 480")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 480 > 2 * 100: Pillow raises DecompressionBombError
    expect_value_error(lambda: ImageFolder(tmp_path / "t", 8, split="all", max_pixels=10**6),
                       "decompression bomb", str(big))


def test_cache_is_bounded_and_memmap_cache_is_reused(tree, tmp_path):
    item = 16 * 16 * 3
    ds = ImageFolder(tree, 16, split="all", cache_bytes=10 * item)
    assert isinstance(ds.x, LazyImages) and ds.x.cache_slots == 10
    want = np.stack([reference(p, (16, 16)) for p in ds.files])
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.integers(0, len(ds), 7)
        np.testing.assert_allclose(ds.x[idx], want[idx], atol=1e-6)
        assert (ds.x._slot_of >= 0).sum() <= 10
    assert ds.x.preload() == 10

    cache = tmp_path / "cache"
    first = ImageFolder(tree, 16, split="all", cache_dir=cache)
    files = sorted(os.listdir(cache))
    assert len([f for f in files if f.endswith(".npy")]) == 1
    np.testing.assert_allclose(first.x[np.arange(len(first))], want, atol=1e-6)
    stamp = os.stat(first.x.memmap_path).st_mtime_ns
    again = ImageFolder(tree, 16, split="all", cache_dir=cache)
    assert again.x.memmap_path == first.x.memmap_path and os.stat(again.x.memmap_path).st_mtime_ns == stamp
    other = ImageFolder(tree, 12, split="all", cache_dir=cache)  # other preprocessing, other file
    assert other.x.memmap_path != first.x.memmap_path


def test_hidden_and_non_image_files_are_skipped(tree):
    (tree / "alpha" / "char0" / "README.txt").write_text("about these images")
    (tree / "alpha" / "char0" / ".thumb.png").write_bytes(b"junk")
    os.makedirs(tree / ".metabridge_cache")
    (tree / ".metabridge_cache" / "x.png").write_bytes(b"junk")
    ds = ImageFolder(tree, 8, split="all")
    assert len(ds) == 48 and not any("README" in f or ".thumb" in f for f in ds.files)


def test_errors_for_bad_arguments(tree):
    expect_value_error(lambda: ImageFolder(tree, split="training"), "split in", "training")
    expect_value_error(lambda: ImageFolder(tree, channels=2), "channels", "channels=2")
    expect_value_error(lambda: ImageFolder(tree, image_size=0), "image_size", "image_size=0")
    expect_value_error(lambda: ImageFolder(tree, split_ratios=(0.5, 0.5, 0.5)), "split_ratios")
    expect_value_error(lambda: ImageFolder(tree, split_by="alphabet"), "split_by")


def test_new_data_modules_import_no_framework():
    """No framework in sys.modules after importing them; and their own import lines name
    neither a framework nor ops / algorithms / train (``import metabridge`` itself may)."""
    import ast
    import subprocess
    import sys

    modules = ["lazy_images", "image_folder", "cifar_fewshot", "tiered_imagenet", "cub",
               "task_transforms", "variable_episodes", "collect"]
    code = ("import sys; " + "; ".join(f"import metabridge.data.{m}" for m in modules)
            + "; bad = [m for m in ('torch', 'tensorflow') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    import metabridge.data

    folder = os.path.dirname(metabridge.data.__file__)
    forbidden = ("torch", "tensorflow", "metabridge.ops", "metabridge.algorithms", "metabridge.train")
    for m in modules:
        tree = ast.parse(open(os.path.join(folder, m + ".py")).read())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(forbidden)], (m, names)
