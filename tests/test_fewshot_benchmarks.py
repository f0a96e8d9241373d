"""CIFAR-FS, FC100, tieredImageNet and CUB read from fixtures laid out like the real files (issue 13)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from metabridge.data import DownloadError, EpisodeSampler
from metabridge.data.cifar_fewshot import CIFAR_FS_CLASSES, FC100_SUPERCLASSES, CifarFS, FC100
from metabridge.data.cub import CUB
from metabridge.data.tiered_imagenet import TieredImageNet
from conftest import expect_value_error

# The CIFAR-100 super-class table (Krizhevsky, 2009), written out independently of the module.
CIFAR100 = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
FINE = sorted(n for v in CIFAR100.values() for n in v.split())        # the archive's label order
COARSE = sorted(CIFAR100)
COARSE_OF = {n: c for c, v in CIFAR100.items() for n in v.split()}


def write_cifar100(folder, per_class=(2, 1), seed=0):
    """``cifar-100-python/{train,test,meta}``: Python-2-style pickles with bytes keys."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    raw = {}
    for part, k in zip(("train", "test"), per_class):
        fine = np.tile(np.arange(100), k)
        rng.shuffle(fine)
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        d = {b"batch_label": f"{part} batch".encode(), b"filenames": [b"x.png"] * len(fine), b"data": data,
             b"fine_labels": fine.tolist(), b"coarse_labels": [COARSE.index(COARSE_OF[FINE[f]]) for f in fine]}
        with open(os.path.join(folder, part), "wb") as f:
            pickle.dump(d, f, protocol=2)
        raw[part] = (data, fine)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in FINE],
                     b"coarse_label_names": [n.encode() for n in COARSE]}, f, protocol=2)
    return raw


def cifar_reference(raw, fine_names):
    """Images (train then test) of the classes ``fine_names``, NHWC in [0, 1], and their class names."""
    xs, names = [], []
    for part in ("train", "test"):
        data, fine = raw[part]
        keep = np.isin(fine, [FINE.index(n) for n in fine_names])
        xs.append(data[keep].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / 255.0)
        names += [FINE[f] for f in fine[keep]]
    return np.concatenate(xs), names


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    raw = write_cifar100(root / "cifar-100-python")
    return root, raw


def test_published_lists_are_consistent_with_cifar100():
    assert sorted(sum(CIFAR_FS_CLASSES.values(), [])) == FINE
    assert [len(CIFAR_FS_CLASSES[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert sorted(sum(FC100_SUPERCLASSES.values(), [])) == COARSE
    assert [len(FC100_SUPERCLASSES[s]) for s in ("train", "val", "test")] == [12, 4, 4]


@pytest.mark.parametrize("split,classes", [("train", 64), ("val", 16), ("test", 20)])
def test_cifar_fs(cifar_root, split, classes):
    root, raw = cifar_root
    ds = CifarFS(root, split, allow_pickle=True)
    assert ds.num_classes == classes and len(ds) == 3 * classes
    assert ds.label_names == sorted(CIFAR_FS_CLASSES[split])
    want, names = cifar_reference(raw, CIFAR_FS_CLASSES[split])
    np.testing.assert_allclose(ds.x, want, atol=1e-6)
    assert [ds.label_names[c] for c in ds.y] == names


@pytest.mark.parametrize("split,classes", [("train", 60), ("val", 20), ("test", 20)])
def test_fc100(cifar_root, split, classes):
    root, raw = cifar_root
    ds = FC100(root / "cifar-100-python", split, allow_pickle=True)  # root may be the unpacked folder itself
    assert ds.num_classes == classes and len(ds) == 3 * classes
    supers = FC100_SUPERCLASSES[split]
    assert {COARSE_OF[n] for n in ds.label_names} == set(supers)
    want, names = cifar_reference(raw, [n for n in FINE if COARSE_OF[n] in supers])
    np.testing.assert_allclose(ds.x, want, atol=1e-6)
    assert [ds.label_names[c] for c in ds.y] == names


def make_archive(folder_with_pickles, target):
    with tarfile.open(target, "w:gz") as tar:
        for name in ("train", "test", "meta"):
            tar.add(os.path.join(folder_with_pickles, name), arcname=f"cifar-100-python/{name}")


def test_cifar_archive_pickle_guard_and_resize(cifar_root, tmp_path):
    root, raw = cifar_root
    make_archive(root / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    ds = CifarFS(tmp_path, "val", allow_pickle=True, image_size=16)
    assert ds.x.shape == (48, 16, 16, 3) and ds.source.endswith(".tar.gz")
    want, _ = cifar_reference(raw, CIFAR_FS_CLASSES["val"])
    ref = np.stack([np.asarray(Image.fromarray(np.round(w * 255).astype(np.uint8)).resize((16, 16), Image.LANCZOS))
                    for w in want]) / 255.0
    np.testing.assert_allclose(ds.x, ref, atol=1e-6)
    expect_value_error(lambda: CifarFS(tmp_path, "val"), "allow_pickle=True", "cifar-100-python.tar.gz")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        FC100(tmp_path / "empty", "val", allow_pickle=True)
    expect_value_error(lambda: CifarFS(tmp_path, "validation", allow_pickle=True), "split in")


def test_cifar_download_from_a_local_server(cifar_root, tmp_path):
    root, _ = cifar_root
    served = tmp_path / "served"
    served.mkdir()
    make_archive(root / "cifar-100-python", served / "cifar-100-python.tar.gz")
    md5 = hashlib.md5((served / "cifar-100-python.tar.gz").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-100-python.tar.gz"
        bad = tmp_path / "bad"
        with pytest.raises(DownloadError, match="MD5"):
            CifarFS(bad, "test", allow_pickle=True, download=True, url=url, md5="0" * 32)
        assert not (bad / "cifar-100-python.tar.gz").exists()
        good = tmp_path / "good"
        ds = CifarFS(good, "test", allow_pickle=True, download=True, url=url, md5=md5)
        assert ds.num_classes == 20 and (good / "cifar-100-python.tar.gz").is_file()
    finally:
        server.shutdown()
        server.server_close()


# ---- tieredImageNet ---------------------------------------------------------------------------
TIERED = {"train": (351, 20), "val": (97, 6), "test": (160, 8)}


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiered_root(tmp_path_factory):
    """``tiered-imagenet/{split}_images_png.pkl`` + ``{split}_labels.pkl`` (2 images per class)."""
    root = tmp_path_factory.mktemp("tiered")
    folder = root / "tiered-imagenet"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = {}
    for split, (classes, supers) in TIERED.items():
        specific = np.repeat(np.arange(classes), 2)
        rng.shuffle(specific)
        general = specific % supers
        imgs = rng.integers(0, 256, (len(specific), 12, 12, 3), dtype=np.uint8)
        with open(folder / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump([png_bytes(a) for a in imgs], f, protocol=2)
        with open(folder / f"{split}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": specific, "label_general": general,
                         "label_specific_str": [f"n{10000000 + c:08d}" for c in range(classes)],
                         "label_general_str": [f"super{s}" for s in range(supers)]}, f, protocol=2)
        images[split] = (imgs, specific, general)
    return root, images


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_tiered_png_pickles(tiered_root, split):
    root, images = tiered_root
    imgs, specific, general = images[split]
    ds = TieredImageNet(root, split, image_size=12, allow_pickle=True)
    assert ds.num_classes == TIERED[split][0] and len(ds) == 2 * TIERED[split][0]
    np.testing.assert_array_equal(ds.y, specific)  # ids 0..C-1 already
    assert ds.label_names[5] == f"n{10000005:08d}"
    np.testing.assert_array_equal(ds.superclass, np.arange(ds.num_classes) % TIERED[split][1])
    idx = np.arange(0, len(ds), 7)
    np.testing.assert_allclose(ds.x[idx], imgs[idx] / 255.0, atol=1e-6)


def test_tiered_npz_variants_are_memory_mapped_and_bgr(tiered_root, tmp_path):
    root, images = tiered_root
    imgs, specific, _ = images["val"]
    bgr = imgs[..., ::-1]
    np.savez(tmp_path / "val_images.npz", images=bgr)
    np.savez(tmp_path / "val_labels.npz", label_specific=specific)
    ds = TieredImageNet(tmp_path, "val", image_size=12)  # no pickle anywhere: allow_pickle not needed
    assert ds.num_classes == 97
    np.testing.assert_allclose(ds.x[np.arange(len(ds))], imgs / 255.0, atol=1e-6)
    from metabridge.data.tiered_imagenet import memmap_npz

    mm = memmap_npz(tmp_path / "val_images.npz", "images")
    assert isinstance(mm, np.memmap) and np.array_equal(mm, bgr)
    (tmp_path / "c").mkdir()
    np.savez_compressed(tmp_path / "c" / "val_images.npz", images=imgs)
    np.savez(tmp_path / "c" / "val_labels.npz", label_specific=specific)
    assert memmap_npz(tmp_path / "c" / "val_images.npz", "images") is None
    rgb = TieredImageNet(tmp_path / "c", "val", image_size=8, npz_channels="rgb")
    ref = np.stack([np.asarray(Image.fromarray(a).resize((8, 8), Image.LANCZOS)) for a in imgs[:5]]) / 255.0
    np.testing.assert_allclose(rgb.x[np.arange(5)], ref, atol=1e-6)


def test_tiered_errors(tiered_root, tmp_path):
    root, _ = tiered_root
    expect_value_error(lambda: TieredImageNet(root, "test"), "allow_pickle=True", "test_labels.pkl")
    with pytest.raises(FileNotFoundError, match="train_labels"):
        TieredImageNet(tmp_path, "train")
    np.savez(tmp_path / "train_labels.npz", label_specific=np.arange(3))
    np.savez(tmp_path / "train_images.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    expect_value_error(lambda: TieredImageNet(tmp_path, "train", 8), "one label per image", "4 images, 3 labels")


# ---- CUB-200-2011 -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    """``CUB_200_2011/{images/NNN.Name/*.jpg, images.txt, image_class_labels.txt, classes.txt}``."""
    root = tmp_path_factory.mktemp("cub")
    folder = root / "CUB_200_2011"
    rng = np.random.default_rng(2)
    classes, images, labels = [], [], []
    image_id = 0
    for cid in range(1, 201):
        name = f"{cid:03d}.Bird_Species_{cid}"
        classes.append(f"{cid} {name}")
        os.makedirs(folder / "images" / name)
        for k in range(2 + cid % 2):  # 2 or 3 images: classes differ in size, as in CUB (41-60)
            image_id += 1
            rel = f"{name}/Bird_Species_{cid}_{k:04d}_{image_id}.jpg"
            Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(folder / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


@pytest.mark.parametrize("split,classes,first", [("train", 100, 1), ("val", 50, 2), ("test", 50, 4)])
def test_cub(cub_root, split, classes, first):
    ds = CUB(cub_root, split, image_size=8)
    assert ds.num_classes == classes
    assert ds.label_names[0] == f"{first:03d}.Bird_Species_{first}"
    ids = [int(n[:3]) for n in ds.label_names]
    rule = {"train": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1, "test": lambda i: i % 4 == 3}[split]
    assert ids == [c for c in range(1, 201) if rule(c - 1)]
    assert len(ds) == sum(2 + c % 2 for c in ids)
    for i in (0, len(ds) // 2, len(ds) - 1):
        assert os.path.basename(os.path.dirname(ds.files[i])) == ds.label_names[ds.y[i]]
        ref = np.asarray(Image.open(ds.files[i]).convert("RGB").resize((8, 8), Image.LANCZOS)) / 255.0
        np.testing.assert_allclose(ds.x[i], ref, atol=1e-6)
    batch = EpisodeSampler(ds, 5, 1, 1, seed=0).batch(0, 2)
    assert batch.support_x.shape == (2, 5, 8, 8, 3)


def test_cub_errors(cub_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        CUB(tmp_path)
    expect_value_error(lambda: CUB(cub_root, "novel"), "split in")
