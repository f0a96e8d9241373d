"""CUB-200-2011 (Wah et al., 2011) with the standard 100 / 50 / 50 few-shot class split.

Read from the official archive's layout, in ``root`` or ``root/CUB_200_2011``::

    CUB_200_2011/images/<NNN.Class_Name>/<file>.jpg
    CUB_200_2011/images.txt               "<image id> <NNN.Class_Name>/<file>.jpg"
    CUB_200_2011/image_class_labels.txt   "<image id> <class id 1..200>"
    CUB_200_2011/classes.txt              "<class id> <NNN.Class_Name>"

Split: the one of Chen et al. (ICLR 2019, "A Closer Look at Few-shot
Classification", ``filelists/CUB/write_CUB_filelist.py``), also used by Hilliard
et al. (2018) and most later CUB few-shot results: with the 200 classes in
class-id order (= sorted folder names) and ``i`` the 0-based position, class
``i`` is train when ``i % 2 == 0`` (100 classes), val when ``i % 4 == 1`` (50)
and test when ``i % 4 == 3`` (50). Images are used whole (no bounding-box
crop), RGB, resized to ``image_size`` with Pillow's LANCZOS, decoded on first
use with a bounded cache (see :mod:`metabridge.data.lazy_images`).

The official archive ``CUB_200_2011.tgz`` has MD5 :data:`CUB_MD5`. It is not
downloaded: it has no stable canonical address (the Caltech data site moved).

>>> ds = CUB("data/CUB_200_2011", split="test", image_size=84)      # doctest: +SKIP
>>> ds.num_classes                                                   # doctest: +SKIP
50
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from metabridge.data.episodes import ArrayDataset
from metabridge.data.lazy_images import DEFAULT_CACHE_BYTES, LazyImages, init_lazy_dataset, read_image

__all__ = ["CUB", "CUB_MD5", "cub_split"]

CUB_MD5 = "97eceeb196236b17998738112f37df78"
SPLITS = ("train", "val", "test")


def cub_split(num_classes: int = 200) -> dict[str, list[int]]:
    """0-based class positions of each split (Chen et al., 2019).

    >>> [len(v) for v in cub_split().values()]
    [100, 50, 50]
    """
    pos = range(num_classes)
    return {"train": [i for i in pos if i % 2 == 0], "val": [i for i in pos if i % 4 == 1],
            "test": [i for i in pos if i % 4 == 3]}


def _read_pairs(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"Expected {path.name} in {path.parent}. Received: no such file")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"Expected '<id> <value>' lines in {path}. Received: line {lineno}: {line!r}")
        out.append((int(parts[0]), parts[1].strip()))
    return out


class CUB(ArrayDataset):
    """One split of CUB-200-2011 (see the module doc). ``label_names`` are the class folder
    names (``"001.Black_footed_Albatross"``), ``files`` every image's path.

    >>> CUB("data", "train").num_classes                                 # doctest: +SKIP
    100
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", image_size: int = 84, dtype: str = "float32",
                 mean=None, std=None, cache_bytes: int = DEFAULT_CACHE_BYTES, max_pixels: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"Expected split in {SPLITS}. Received: split={split!r}")
        if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"Expected image_size to be a positive int. Received: image_size={image_size!r}")
        root = Path(os.fspath(root))
        folder = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
        if not (folder / "images").is_dir():
            raise FileNotFoundError(f"Expected CUB_200_2011/images/ (or images/) in {root}. Received: not found")
        classes = dict(_read_pairs(folder / "classes.txt"))
        images = _read_pairs(folder / "images.txt")
        label_of = dict(_read_pairs(folder / "image_class_labels.txt"))
        if len(classes) != 200:
            raise ValueError(f"Expected 200 classes in {folder / 'classes.txt'}. Received: {len(classes)}")
        order = sorted(classes)  # class ids 1..200
        keep = set(order[i] for i in cub_split(len(order))[split])
        position = {cid: j for j, cid in enumerate(sorted(keep))}
        files, y = [], []
        for image_id, rel in images:
            if image_id not in label_of:
                raise ValueError(f"Expected a class for image {image_id} ({rel}) in "
                                 f"{folder / 'image_class_labels.txt'}. Received: none")
            cid = int(label_of[image_id])
            if cid not in classes:
                raise ValueError(f"Expected class ids from classes.txt in {folder / 'image_class_labels.txt'}. "
                                 f"Received: class {cid} for image {image_id}")
            if cid in keep:
                path = folder / "images" / rel
                if not path.is_file():
                    raise FileNotFoundError(f"Expected the image {path} listed in images.txt. Received: no such file")
                files.append(str(path))
                y.append(position[cid])
        self.label_names = [classes[cid] for cid in sorted(keep)]
        self.class_folders = [str(folder / "images" / n) for n in self.label_names]
        self.files, self.split, self.image_size, self.root = files, split, int(image_size), folder
        size = (self.image_size, self.image_size)
        x = LazyImages(lambda i: read_image(files[i], size, 3, max_pixels=max_pixels), len(files), size + (3,),
                       dtype=dtype, mean=mean, std=std, cache_bytes=cache_bytes, source=lambda i: files[i])
        init_lazy_dataset(self, x, np.array(y, dtype=np.int64), name=f"CUB {split}")
