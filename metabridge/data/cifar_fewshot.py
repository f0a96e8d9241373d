"""CIFAR-FS and FC100: few-shot splits of CIFAR-100, read from the CIFAR-100 python archive.

* **CIFAR-FS** (Bertinetto et al., ICLR 2019, "Meta-learning with differentiable
  closed-form solvers"): 64 / 16 / 20 fine classes, :data:`CIFAR_FS_CLASSES`.
* **FC100** (Oreshkin et al., NeurIPS 2018, "TADAM"): 12 / 4 / 4 super-classes
  = 60 / 20 / 20 fine classes, :data:`FC100_SUPERCLASSES`, so that train and
  test share no super-class.

Both use all 600 images of a class (CIFAR-100's train and test sets pooled),
32×32 RGB. The class lists are the published ones, as distributed with
Bertinetto et al.'s code (``splits/bertinetto/{train,val,test}.txt``) and
reproduced in torchmeta's ``datasets/assets/cifar100/{cifar-fs,fc100}/*.json``.

Where the data is read from (the first that exists under ``root``)::

    <root>/cifar-100-python/{train,test,meta}   the archive unpacked
    <root>/{train,test,meta}                    root is that folder itself
    <root>/cifar-100-python.tar.gz              the archive, read in place

These are Python pickles (dicts with ``data`` uint8 ``[n, 3072]`` channel-major,
``fine_labels``, ``coarse_labels``; ``meta`` has ``fine_label_names`` and
``coarse_label_names``). Unpickling can run arbitrary code, so they are read
only with ``allow_pickle=True``. ``download=True`` fetches the archive from its
canonical address (:data:`CIFAR100_URL`) and checks the published MD5
(:data:`CIFAR100_MD5`) first.

>>> ds = CifarFS("data/cifar100", split="train", allow_pickle=True)        # doctest: +SKIP
>>> ds.num_classes, ds.x.shape                                               # doctest: +SKIP
(64, (38400, 32, 32, 3))
"""
from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from metabridge.data.episodes import ArrayDataset
from metabridge.data.omniglot import download_file

__all__ = ["CifarFS", "FC100", "CIFAR_FS_CLASSES", "FC100_SUPERCLASSES", "CIFAR100_URL", "CIFAR100_MD5",
           "read_cifar100"]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
#: MD5 of ``cifar-100-python.tar.gz`` as published on the CIFAR page.
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
SPLITS = ("train", "val", "test")

#: Bertinetto et al. (2019) CIFAR-FS classes (CIFAR-100 fine label names).
CIFAR_FS_CLASSES = {
    "train": [
        "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip", "bottle", "bowl",
        "can", "cup", "plate", "apple", "mushroom", "orange", "pear", "clock", "keyboard", "chair", "couch", "bee",
        "caterpillar", "cockroach", "bear", "lion", "tiger", "wolf", "bridge", "castle", "house", "road",
        "skyscraper", "cloud", "forest", "mountain", "elephant", "kangaroo", "porcupine", "possum", "raccoon",
        "skunk", "lobster", "spider", "boy", "girl", "dinosaur", "lizard", "snake", "turtle", "hamster", "mouse",
        "rabbit", "shrew", "squirrel", "oak_tree", "palm_tree", "pine_tree", "willow_tree", "bus", "train",
        "lawn_mower", "streetcar", "tank",
    ],
    "val": [
        "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea", "camel",
        "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
    ],
    "test": [
        "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard", "plain",
        "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle", "pickup_truck", "rocket",
    ],
}

#: Oreshkin et al. (2018) FC100 super-classes (CIFAR-100 coarse label names).
FC100_SUPERCLASSES = {
    "train": [
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
        "trees", "vehicles_1", "vehicles_2",
    ],
    "val": ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"],
    "test": ["aquatic_mammals", "insects", "medium_mammals", "people"],
}


def _field(d: dict, key: str, where: str):
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    got = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d) if isinstance(d, dict) else type(d)
    raise ValueError(f"Expected a dict with {key!r} in {where}. Received: {got}")


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _find(root: Path):
    """``("folder", path)`` or ``("archive", path)`` or None."""
    for folder in (root / FOLDER, root):
        if all((folder / n).is_file() for n in ("train", "test", "meta")):
            return "folder", folder
    if (root / ARCHIVE).is_file():
        return "archive", root / ARCHIVE
    return None


def read_cifar100(root: str | os.PathLike, allow_pickle: bool = False, download: bool = False,
                  url: str = CIFAR100_URL, md5: str | None = CIFAR100_MD5) -> dict:
    """All 60,000 CIFAR-100 images (train then test) with their labels and label names.

    Returns ``{"images": uint8 [60000, 32, 32, 3], "fine": int64 [n], "coarse": int64 [n],
    "fine_names": [100 str], "coarse_names": [20 str], "source": path}``.

    >>> d = read_cifar100("data/cifar100", allow_pickle=True)     # doctest: +SKIP
    >>> d["fine_names"][:2]                                        # doctest: +SKIP
    ['apple', 'aquarium_fish']
    """
    root = Path(os.fspath(root))
    found = _find(root) if root.is_dir() else None
    if found is None and download:
        download_file(url, str(root / ARCHIVE), md5)
        found = _find(root)
    if found is None:
        raise FileNotFoundError(
            f"Expected {FOLDER}/{{train,test,meta}} or {ARCHIVE} in {root}. Received: neither exists "
            f"(download=True, or --download on the command line, fetches {ARCHIVE} from {CIFAR100_URL})")
    kind, path = found
    if allow_pickle is not True:
        raise ValueError(f"Expected allow_pickle=True (--allow-pickle on the command line) to read the CIFAR-100 pickles in {path}: unpickling runs "
                         f"arbitrary code from the file, so only load files from a source you trust. "
                         f"Received: allow_pickle={allow_pickle!r}")
    parts = {}
    if kind == "folder":
        for name in ("train", "test", "meta"):
            with open(path / name, "rb") as f:
                parts[name] = _unpickle(f, path / name)
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for name in ("train", "test", "meta"):
                    try:
                        member = tar.extractfile(f"{FOLDER}/{name}")
                    except KeyError:
                        member = None
                    if member is None:
                        raise ValueError(f"Expected {FOLDER}/{name} in {path}. Received: no such member")
                    parts[name] = _unpickle(member, f"{path}:{FOLDER}/{name}")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"Expected a readable tar archive at {path}. Received: {type(err).__name__}: {err}") from None
    images, fine, coarse = [], [], []
    for name in ("train", "test"):
        where = path / name if kind == "folder" else f"{path}:{FOLDER}/{name}"
        data = np.asarray(_field(parts[name], "data", str(where)))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"Expected data uint8 [n, 3072] in {where}. Received: {data.dtype} {data.shape}")
        f_lab = np.asarray(_field(parts[name], "fine_labels", str(where)), dtype=np.int64)
        c_lab = np.asarray(_field(parts[name], "coarse_labels", str(where)), dtype=np.int64)
        if len(f_lab) != len(data) or len(c_lab) != len(data):
            raise ValueError(f"Expected one fine and one coarse label per image in {where}. "
                             f"Received: {len(data)} images, {len(f_lab)} / {len(c_lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        fine.append(f_lab)
        coarse.append(c_lab)
    meta_where = str(path / "meta") if kind == "folder" else f"{path}:{FOLDER}/meta"
    return {"images": np.concatenate(images), "fine": np.concatenate(fine), "coarse": np.concatenate(coarse),
            "fine_names": _names(_field(parts["meta"], "fine_label_names", meta_where)),
            "coarse_names": _names(_field(parts["meta"], "coarse_label_names", meta_where)),
            "source": str(path)}


def _unpickle(fh, where):
    try:
        return pickle.load(fh, encoding="bytes")  # the archive's pickles are Python 2 dicts with bytes keys
    except Exception as err:
        raise ValueError(f"Expected a CIFAR-100 pickle in {where}. Received: {type(err).__name__}: {err}") from None


class _Cifar100Split(ArrayDataset):
    """Shared reader: images of the chosen fine classes, labels ``0..C-1`` in sorted class-name order."""

    benchmark = ""

    def __init__(self, root, split: str = "train", image_size: int = 32, dtype: str = "float32",
                 allow_pickle: bool = False, download: bool = False, url: str = CIFAR100_URL,
                 md5: str | None = CIFAR100_MD5):
        if split not in SPLITS:
            raise ValueError(f"Expected split in {SPLITS}. Received: split={split!r}")
        if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"Expected image_size to be a positive int. Received: image_size={image_size!r}")
        np_dtype = np.dtype(dtype)
        if np_dtype.kind != "f" and np_dtype != np.uint8:
            raise ValueError(f"Expected a float dtype or 'uint8'. Received: dtype={dtype!r}")
        data = read_cifar100(root, allow_pickle, download, url, md5)
        keep = self._select(data, split)  # boolean mask over the 60,000 images
        fine_idx = np.unique(data["fine"][keep])
        self.label_names = sorted(data["fine_names"][i] for i in fine_idx)
        by_name = {n: j for j, n in enumerate(self.label_names)}
        y = np.array([by_name[data["fine_names"][i]] for i in data["fine"][keep]], dtype=np.int64)
        images = data["images"][keep]
        if image_size != 32:
            from PIL import Image

            images = np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.LANCZOS))
                               for im in images])
        x = images.astype(np_dtype) / np_dtype.type(255.0) if np_dtype.kind == "f" else images
        self.split, self.source, self.image_size = split, data["source"], int(image_size)
        super().__init__(x, y, name=f"{self.benchmark} {split}")

    def _select(self, data: dict, split: str) -> np.ndarray:
        raise NotImplementedError


class CifarFS(_Cifar100Split):
    """CIFAR-FS (Bertinetto et al., 2019): 64 / 16 / 20 classes of 600 images (see the module doc).

    >>> CifarFS("data/cifar100", "test", allow_pickle=True).num_classes       # doctest: +SKIP
    20
    """

    benchmark = "CIFAR-FS"

    def _select(self, data, split):
        index = {n: i for i, n in enumerate(data["fine_names"])}
        missing = [n for n in CIFAR_FS_CLASSES[split] if n not in index]
        if missing:
            raise ValueError(f"Expected the CIFAR-FS {split} classes in the fine_label_names of {data['source']}. "
                             f"Received: {len(missing)} missing (first: {missing[0]!r})")
        return np.isin(data["fine"], [index[n] for n in CIFAR_FS_CLASSES[split]])


class FC100(_Cifar100Split):
    """FC100 (Oreshkin et al., 2018): the fine classes of 12 / 4 / 4 super-classes = 60 / 20 / 20
    classes of 600 images. ``superclass_names`` lists the split's super-classes.

    >>> FC100("data/cifar100", "val", allow_pickle=True).num_classes          # doctest: +SKIP
    20
    """

    benchmark = "FC100"

    def _select(self, data, split):
        index = {n: i for i, n in enumerate(data["coarse_names"])}
        missing = [n for n in FC100_SUPERCLASSES[split] if n not in index]
        if missing:
            raise ValueError(f"Expected the FC100 {split} super-classes in the coarse_label_names of "
                             f"{data['source']}. Received: {len(missing)} missing (first: {missing[0]!r})")
        self.superclass_names = list(FC100_SUPERCLASSES[split])
        return np.isin(data["coarse"], [index[n] for n in FC100_SUPERCLASSES[split]])
