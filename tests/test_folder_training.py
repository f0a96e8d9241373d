"""Your own images (issue #13): a folder tree trains through ``metabridge train
--dataset folder`` with ProtoNet and MAML on both backends, checkpoints and
resumes exactly, and a bad tree is refused naming the folder or file."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from metabridge import cli
from metabridge.train.checkpoint import load_latest


def _tree(root, classes=12, per_class=8, size=20, seed=0):
    """Alphabet-like tree: two super-class folders, each class a blob at its own place."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"group{c % 2}" / f"class{c:02d}"
        folder.mkdir(parents=True)
        cy, cx = 4 + (c * 5) % 12, 4 + (c * 7) % 12
        for i in range(per_class):
            img = rng.integers(0, 40, size=(size, size, 3)).astype(np.uint8)
            img[cy:cy + 5, cx:cx + 5] = 220 + rng.integers(0, 30)
            Image.fromarray(img).save(folder / f"img{i}.png")
    names = sorted(f"group{c % 2}/class{c:02d}" for c in range(classes))
    split = root / "split.json"
    split.write_text(json.dumps({"train": names[:6], "val": names[6:9], "test": names[9:]}))
    return str(split)


def _run(argv):
    return cli.main(argv)


@pytest.mark.parametrize("algo", ["protonet", "maml"])
def test_folder_tree_trains_checkpoints_and_resumes(backend, algo, tmp_path, capsys):
    data = tmp_path / "images"
    split = _tree(data)
    run = str(tmp_path / "run")
    argv = ["train", "--algo", algo, "--dataset", "folder", "--data-dir", str(data), "--split-file", split,
            "--image-size", "16", "--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", "2",
            "--steps", "4", "--checkpoint-every", "2", "--test-tasks", "6", "--backend", backend,
            "--run-dir", run, "--json", "--quiet"]
    assert _run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"][backend]["data"]["classes"] == [6, 3, 3]
    full, meta = load_latest(os.path.join(run, "checkpoints"))
    assert meta["step"] == 4
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in os.listdir(os.path.join(run, "checkpoints")):
        if f.startswith("step-00000004"):
            shutil.move(os.path.join(run, "checkpoints", f), moved / f)
    assert _run(["resume", run, "--json", "--quiet"]) == 0
    again = json.loads(capsys.readouterr().out)
    resumed, meta = load_latest(os.path.join(run, "checkpoints"))
    assert meta["step"] == 4 and set(resumed) == set(full)
    for k in full:
        assert np.array_equal(full[k], resumed[k]), k
    assert again["results"][backend]["metric"] == report["results"][backend]["metric"]


@pytest.mark.parametrize("damage, fragment", [
    ("empty", "class05"),
    ("unreadable", "img0.png"),
])
def test_bad_folder_tree_is_refused_naming_the_culprit(tmp_path, capsys, damage, fragment):
    data = tmp_path / "images"
    split = _tree(data)
    target = data / "group1" / "class05"
    if damage == "empty":
        for f in target.iterdir():
            f.unlink()
    else:
        (target / "img0.png").write_bytes(b"not an image")
    code = _run(["train", "--algo", "protonet", "--dataset", "folder", "--data-dir", str(data), "--split-file", split,
                 "--image-size", "16", "--ways", "3", "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "Expected" in err and fragment in err, err


def test_too_few_images_for_the_episode_is_refused(tmp_path, capsys):
    data = tmp_path / "images"
    split = _tree(data, per_class=3)
    code = _run(["train", "--algo", "protonet", "--dataset", "folder", "--data-dir", str(data), "--split-file", split,
                 "--image-size", "16", "--ways", "3", "--shots", "1", "--queries", "5", "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "Expected shots + queries <= 3" in err, err
