"""Hostile data files (issue #14, cases 7 and 9): every data file error names the
file, a damaged cache is ignored and rebuilt, and the caller's arrays never change."""
from __future__ import annotations

import glob
import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

import metabridge as mb
from metabridge.data import Omniglot


def _png(seed: int, size=(105, 105)) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.new("1", size, 1)
    ImageDraw.Draw(im).line([tuple(int(v) for v in rng.integers(10, 95, size=2)) for _ in range(3)], fill=0, width=4)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _archive(path, replace: dict | None = None) -> list[str]:
    names = [f"images_background/Alpha/character{c:02d}/{c:04d}_{d:02d}.png" for c in (1, 2) for d in range(1, 21)]
    with zipfile.ZipFile(path, "w") as zf:
        for i, name in enumerate(names):
            zf.writestr(name, (replace or {}).get(name, _png(i)))
    return names


def _load(root, tmp_path):
    return Omniglot(str(root), "background", cache_dir=str(tmp_path / "cache"))


def test_a_file_that_is_not_a_zip_is_named(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "images_background.zip").write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    with pytest.raises(ValueError, match=r"Expected a zip archive in .*images_background.zip\. Received:"):
        _load(root, tmp_path)


def test_a_member_that_is_not_an_image_is_named(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    bad = "images_background/Alpha/character02/0002_07.png"
    _archive(root / "images_background.zip", {bad: b"<html>not a png</html>"})
    with pytest.raises(ValueError) as info:
        _load(root, tmp_path)
    msg = str(info.value)
    assert msg.startswith("Expected a PNG image in") and "images_background.zip" in msg and bad in msg, msg
    assert "BytesIO" not in msg


def test_an_oversized_image_is_refused_before_decoding(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    big = "images_background/Alpha/character01/0001_03.png"
    _archive(root / "images_background.zip", {big: _png(0, size=(5000, 5000))})
    with pytest.raises(ValueError, match=r"Expected an image of at most 16777216 pixels in .*0001_03\.png.*5000x5000"):
        _load(root, tmp_path)


def test_a_poisoned_cache_is_ignored_and_rebuilt(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _archive(root / "images_background.zip")
    clean = _load(root, tmp_path).x.copy()
    (cache,) = glob.glob(str(tmp_path / "cache" / "*.npz"))
    with np.load(cache, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"].copy()
    arrays["images"][3, 5, 5, 0] = np.nan
    with open(cache, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.warns(UserWarning, match=r"Ignoring the Omniglot cache .*\.npz: its images hold values outside"):
        again = _load(root, tmp_path).x
    assert np.array_equal(again, clean)


def test_a_wrapped_torch_module_cannot_change_the_callers_array():
    torch = pytest.importorskip("torch")

    class Doubler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            x.mul_(2)  # in place, on whatever it was given
            return self.lin(x)

    with mb.use_backend("torch"):
        model = mb.wrap(Doubler())
        params = model.init(0)
        x = np.ones((4, 3), dtype=np.float32)
        before = x.copy()
        model(params, x)
        assert np.array_equal(x, before)
        xt = mb.ops.asarray(x)
        xt.mul_(3)
        assert np.array_equal(x, before)


def test_an_oversized_member_is_refused_before_reading(tmp_path, monkeypatch):
    from metabridge.data import omniglot as omniglot_module

    root = tmp_path / "data"
    root.mkdir()
    _archive(root / "images_background.zip")
    monkeypatch.setattr(omniglot_module, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(ValueError, match=r"Expected an image file of at most 100 bytes in .*images_background\.zip "
                                         r"\(member images_background/Alpha/character01/0001_01\.png\)"):
        _load(root, tmp_path)


def test_fuzzed_archives_give_clean_errors_or_valid_data(tmp_path):
    """Seeded fuzz over Omniglot archives: random truncations and byte changes end in
    a clear error (ValueError / OSError naming the archive) or in images that decode."""
    import time
    import warnings

    root = tmp_path / "data"
    root.mkdir()
    _archive(root / "images_background.zip")
    original = (root / "images_background.zip").read_bytes()
    rng = np.random.default_rng(2026)
    outcomes, start = {"error": 0, "loaded": 0}, time.perf_counter()
    for case in range(300):
        data = bytearray(original)
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        (root / "images_background.zip").write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = Omniglot(str(root), "background", cache=False)
        except (ValueError, OSError) as exc:
            msg = str(exc)
            assert "Expected" in msg and "Received" in msg, (case, msg)
            assert "images_background" in msg, (case, msg)
            outcomes["error"] += 1
        else:
            assert ds.x.dtype == np.float32 and np.all((ds.x >= 0) & (ds.x <= 1)), case
            outcomes["loaded"] += 1
    assert outcomes["error"] > 0 and sum(outcomes.values()) == 300
    assert time.perf_counter() - start < 120


def test_messages_name_the_command_line_flags(tmp_path):
    """Case 10: where the fix is a flag, the message says the flag, not only the Python argument."""
    with pytest.raises(FileNotFoundError, match=r"Pass download=True \(--download on the command line\)"):
        Omniglot(str(tmp_path), "background", cache=False)
    from metabridge.data import MiniImageNet

    folder = tmp_path / "mini"
    folder.mkdir()
    import pickle

    (folder / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps({"image_data": np.zeros((1, 2, 2, 3))}))
    with pytest.raises(ValueError, match=r"Expected allow_pickle=True \(--allow-pickle on the command line\)"):
        MiniImageNet(str(folder), "train")
