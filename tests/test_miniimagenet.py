"""miniImageNet reader on generated fixtures: the CSV + images/ layout (decoding,
resizing, labels, the .npz cache) and the pickle layout (refused unless allowed)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from metabridge.data import ArrayDataset, EpisodeSampler, MiniImageNet

WNIDS = ("n03017168", "n01532829", "n02110063")      # listed out of sorted order


def _write_csv_layout(root, split="test", per_class=4, seed=0) -> list:
    """Images of assorted sizes and modes; returns (filename, wnid, PIL image) rows."""
    rng = np.random.default_rng(seed)
    os.makedirs(root / "images", exist_ok=True)
    rows = []
    for k in range(per_class):
        for wnid in WNIDS:
            name = f"{wnid}{k:08d}." + ("jpg" if k % 2 else "png")
            h, w = int(rng.integers(60, 130)), int(rng.integers(60, 130))
            im = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
            if k == 3:
                im = im.convert("L")                            # greyscale becomes RGB
            im.save(root / "images" / name, quality=95)
            rows.append((name, wnid))
    with open(root / f"{split}.csv", "w") as f:
        f.write("filename,label\n" + "".join(f"{n},{w}\n" for n, w in rows))
    return rows


def _expected(root, name, size):
    with Image.open(root / "images" / name) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.LANCZOS), np.float32) / 255.0


def test_csv_layout_decodes_resizes_and_maps_labels(tmp_path):
    rows = _write_csv_layout(tmp_path)
    ds = MiniImageNet(tmp_path, split="test")
    assert isinstance(ds, ArrayDataset) and ds.source == "csv" and ds.split == "test"
    assert ds.x.shape == (12, 84, 84, 3) and ds.x.dtype == np.float32
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert ds.label_names == sorted(WNIDS) and ds.num_classes == 3
    np.testing.assert_array_equal(ds.y, [sorted(WNIDS).index(w) for _, w in rows])
    for i in (0, 4, 9):                                     # png, jpg, greyscale
        np.testing.assert_allclose(ds.x[i], _expected(tmp_path, rows[i][0], 84), atol=1e-6)
    small = MiniImageNet(tmp_path, split="test", image_size=32, cache_dir=False, dtype="uint8")
    assert small.x.shape == (12, 32, 32, 3) and small.x.dtype == np.uint8
    np.testing.assert_allclose(small.x[1] / 255.0, _expected(tmp_path, rows[1][0], 32), atol=1e-6)


def test_solid_colour_survives_resize_exactly(tmp_path):
    os.makedirs(tmp_path / "images")
    Image.new("RGB", (120, 97), (255, 128, 0)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (50, 50), (0, 0, 255)).save(tmp_path / "images" / "b.png")
    (tmp_path / "val.csv").write_text("filename,label\na.png,n1\nb.png,n2\n")
    ds = MiniImageNet(tmp_path, split="val", cache_dir=False)
    np.testing.assert_allclose(ds.x[0], np.broadcast_to([1.0, 128 / 255, 0.0], (84, 84, 3)), atol=1e-7)
    np.testing.assert_allclose(ds.x[1], np.broadcast_to([0.0, 0.0, 1.0], (84, 84, 3)), atol=1e-7)


def test_works_with_episode_sampler(tmp_path):
    _write_csv_layout(tmp_path, split="train")
    ds = MiniImageNet(tmp_path, split="train", image_size=16)
    sampler = EpisodeSampler(ds, ways=3, shots=1, queries=2, seed=0)
    ep = sampler.episode(0)
    assert ep.support_x.shape == (3, 16, 16, 3) and ep.query_x.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(ep.query_x, sampler.episode(0).query_x)


# ---- cache ---------------------------------------------------------------------------------------------
def test_cache_hit_and_invalidation(tmp_path):
    _write_csv_layout(tmp_path)
    first = MiniImageNet(tmp_path, split="test", image_size=20)
    assert first.cache_path is not None and first.cache_path.parent == tmp_path / ".metabridge_cache"
    assert first.cache_path.is_file()
    assert not [p for p in os.listdir(first.cache_path.parent) if p.endswith(".tmp")]  # atomic write
    images = tmp_path / "images"
    os.rename(images, tmp_path / "images_away")            # a cache hit does not read images
    hit = MiniImageNet(tmp_path, split="test", image_size=20)
    np.testing.assert_array_equal(hit.x, first.x)
    np.testing.assert_array_equal(hit.y, first.y)
    assert hit.label_names == first.label_names and hit.cache_path == first.cache_path
    with pytest.raises(FileNotFoundError, match="Expected the image"):   # other size: another key
        MiniImageNet(tmp_path, split="test", image_size=24)

    csv = tmp_path / "test.csv"
    st = csv.stat()
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))           # same size, new mtime
    with pytest.raises(FileNotFoundError, match="Expected the image"):
        MiniImageNet(tmp_path, split="test", image_size=20)
    os.rename(tmp_path / "images_away", images)
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join(rows[:-3]) + "\n")                            # one image per class fewer
    shorter = MiniImageNet(tmp_path, split="test", image_size=20)
    assert len(shorter) == 9
    np.testing.assert_array_equal(shorter.x, first.x[:9])
    os.rename(images, tmp_path / "images_away")
    assert len(MiniImageNet(tmp_path, split="test", image_size=20)) == 9   # the rebuilt cache


def test_cache_locations(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _write_csv_layout(data, per_class=2)
    explicit = MiniImageNet(data, split="test", image_size=8, cache_dir=tmp_path / "mine")
    assert explicit.cache_path.parent == tmp_path / "mine"
    off = MiniImageNet(data, split="test", image_size=8, cache_dir=False)
    assert off.cache_path is None and not (data / ".metabridge_cache").exists()
    (data / ".metabridge_cache").write_text("not a folder")                # root cache unusable
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fallback = MiniImageNet(data, split="test", image_size=8)
    assert fallback.cache_path.parent == tmp_path / "home" / ".cache" / "metabridge"
    np.testing.assert_array_equal(fallback.x, off.x)
    corrupt = fallback.cache_path
    corrupt.write_bytes(b"garbage")                                        # a broken cache is rebuilt
    np.testing.assert_array_equal(MiniImageNet(data, split="test", image_size=8).x, off.x)


# ---- pickle --------------------------------------------------------------------------------------------
def _write_pickle(root, split="train", n_per=3, size=84, **extra):
    rng = np.random.default_rng(1)
    n = n_per * len(WNIDS)
    data = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    order = rng.permutation(n)                                             # classes interleaved
    class_dict = {w: sorted(order[j * n_per:(j + 1) * n_per].tolist()) for j, w in enumerate(WNIDS)}
    payload = {"image_data": data, "class_dict": class_dict, **extra}
    with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
        pickle.dump(payload, f)
    return data, class_dict


def test_pickle_needs_allow_pickle(tmp_path):
    _write_pickle(tmp_path)
    with pytest.raises(ValueError, match="Expected allow_pickle=True.*arbitrary code.*"
                                         "Received: allow_pickle=False"):
        MiniImageNet(tmp_path, split="train")
    with pytest.raises(ValueError, match="Received: allow_pickle=1"):
        MiniImageNet(tmp_path, split="train", allow_pickle=1)


def test_pickle_layout(tmp_path):
    data, class_dict = _write_pickle(tmp_path)
    ds = MiniImageNet(tmp_path, split="train", allow_pickle=True)
    assert ds.source == "pickle" and ds.cache_path is None
    np.testing.assert_allclose(ds.x, data.astype(np.float32) / 255.0)
    assert ds.label_names == sorted(WNIDS)
    for w, indices in class_dict.items():
        assert np.all(ds.y[indices] == sorted(WNIDS).index(w))
    small = MiniImageNet(tmp_path, split="train", image_size=21, allow_pickle=True)
    assert small.x.shape == (9, 21, 21, 3)
    ref = np.asarray(Image.fromarray(data[4]).resize((21, 21), Image.LANCZOS), np.float32) / 255.0
    np.testing.assert_allclose(small.x[4], ref, atol=1e-6)
    _write_csv_layout(tmp_path, split="train", per_class=1)               # the CSV layout wins
    assert MiniImageNet(tmp_path, split="train", allow_pickle=True).source == "csv"


def test_pickle_errors(tmp_path):
    data, class_dict = _write_pickle(tmp_path)
    class_dict[WNIDS[0]] = class_dict[WNIDS[0]][1:]
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": data, "class_dict": class_dict}, f)
    with pytest.raises(ValueError, match="Expected every image.*in class_dict. "
                                         "Received: 1 images in no class"):
        MiniImageNet(tmp_path, split="train", allow_pickle=True)
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"images": data}, f)
    with pytest.raises(ValueError, match="Expected a dict with 'image_data' and 'class_dict'"):
        MiniImageNet(tmp_path, split="train", allow_pickle=True)
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": data[..., 0], "class_dict": class_dict}, f)
    with pytest.raises(ValueError, match=r"Expected image_data uint8 \[n, H, W, 3\]"):
        MiniImageNet(tmp_path, split="train", allow_pickle=True)


# ---- input errors --------------------------------------------------------------------------------------
def test_input_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Expected split in \('train', 'val', 'test'\). "
                                         r"Received: split='dev'"):
        MiniImageNet(tmp_path, split="dev")
    with pytest.raises(FileNotFoundError, match="Expected root to be a directory"):
        MiniImageNet(tmp_path / "missing")
    with pytest.raises(FileNotFoundError,
                       match="Expected val.csv .*mini-imagenet-cache-val.pkl.*Received: neither"):
        MiniImageNet(tmp_path, split="val")
    with pytest.raises(ValueError, match="Expected image_size"):
        MiniImageNet(tmp_path, image_size=0)
    with pytest.raises(ValueError, match="Expected a float dtype or 'uint8'"):
        MiniImageNet(tmp_path, dtype="int32")
    (tmp_path / "train.csv").write_text("file,class\na.png,n1\n")
    with pytest.raises(ValueError,
                       match="Expected the header 'filename,label'.*Received: \\['file', 'class'\\]"):
        MiniImageNet(tmp_path, cache_dir=False)
    (tmp_path / "train.csv").write_text("filename,label\na.png\n")
    with pytest.raises(ValueError, match="Expected 'filename,label' rows.*Received: line 2"):
        MiniImageNet(tmp_path, cache_dir=False)
    (tmp_path / "train.csv").write_text("filename,label\n")
    with pytest.raises(ValueError, match="Expected at least one image"):
        MiniImageNet(tmp_path, cache_dir=False)
    (tmp_path / "train.csv").write_text("filename,label\na.png,n1\n")
    with pytest.raises(FileNotFoundError, match="Expected the image .*a.png listed in train.csv"):
        MiniImageNet(tmp_path, cache_dir=False)
