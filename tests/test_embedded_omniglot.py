"""The Omniglot copy shipped in the package (metabridge/data/embedded/omniglot28.npz).

- shapes, counts (964 + 659 characters, 20 drawings each) and metadata of the shipped file;
- the script and the loader agree with ``Omniglot`` on a small synthetic archive (always runs);
- with the official archives in ``../shared/data/omniglot``: a sample of characters, then all
  32,460 images, equal bit for bit to what ``Omniglot(root, subset, image_size=28)`` decodes,
  and the script rebuilds the shipped file byte for byte (its sha256 is the one in the script).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import zipfile

import numpy as np
import pytest

from metabridge.data.embedded_omniglot import (EMBEDDED_OMNIGLOT_LICENSE, EMBEDDED_OMNIGLOT_PATH,
                                               EmbeddedOmniglot, load_embedded_omniglot)
from metabridge.data.omniglot import Omniglot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVES = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "omniglot"))
HAVE_ARCHIVES = all(os.path.isfile(os.path.join(ARCHIVES, f"images_{s}.zip"))
                    for s in ("background", "evaluation"))
needs_archives = pytest.mark.skipif(not HAVE_ARCHIVES, reason=f"official archives not in {ARCHIVES}")


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_embedded_omniglot", os.path.join(REPO, "tools", "make_embedded_omniglot.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def embedded_all():
    return load_embedded_omniglot("all")


def _same_dataset(a, b, rows_a=slice(None)):
    """``a[rows_a]`` and ``b``: same images (bit for bit) and metadata."""
    np.testing.assert_array_equal(a.x[rows_a], b.x)
    assert a.x.dtype == b.x.dtype == np.float32
    for attr in ("y", "alphabet", "character_id", "character_number", "drawer", "subset_of", "file"):
        np.testing.assert_array_equal(getattr(a, attr)[rows_a], getattr(b, attr), err_msg=attr)


# ---- the shipped file -------------------------------------------------------------------
def test_shapes_counts_and_metadata(embedded_all):
    ds = embedded_all
    assert isinstance(ds, Omniglot) and isinstance(ds, EmbeddedOmniglot)
    assert ds.images.shape == (32460, 28, 28, 1) and ds.images.dtype == np.float32
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert ds.num_classes == 1623 and len(ds.alphabets) == 50
    for subset, chars, alphabets in (("background", 964, 30), ("evaluation", 659, 20)):
        part = ds.subset_of == subset
        assert len(np.unique(ds.y[part])) == chars
        assert len(np.unique(ds.alphabet[part])) == alphabets
        assert part.sum() == 20 * chars
    # 20 drawings per character, drawers 1..20 in order; official id order
    np.testing.assert_array_equal(np.bincount(ds.y), np.full(1623, 20))
    np.testing.assert_array_equal(ds.drawer, np.tile(np.arange(1, 21), 1623))
    np.testing.assert_array_equal(ds.character_id, np.repeat(np.arange(1, 1624), 20))
    assert ds.file[0] == "images_background/Arcadian/character01/0001_01.png"
    assert ds.file[-1].startswith("images_evaluation/") and ds.file[-1].endswith("/1623_20.png")
    # no alphabet in both subsets; background characters come first
    assert not set(ds.alphabet[ds.subset_of == "background"]) & set(ds.alphabet[ds.subset_of == "evaluation"])
    assert ds.y[ds.subset_of == "background"].max() == 963
    assert np.all(ds.alphabet_index >= 0) and [ds.alphabets[i] for i in ds.alphabet_index[[0, -1]]] == \
        list(ds.alphabet[[0, -1]])


def test_subsets_are_slices_of_all(embedded_all):
    for subset, lo, hi, n_alpha in (("background", 0, 19280, 30), ("evaluation", 19280, 32460, 20)):
        ds = load_embedded_omniglot(subset)
        assert ds.subset == subset and len(ds) == hi - lo and len(ds.alphabets) == n_alpha
        _same_dataset(embedded_all, ds, slice(lo, hi))
        assert ds.alphabet_index.min() == 0 and ds.alphabet_index.max() == n_alpha - 1
        assert [ds.alphabets[i] for i in ds.alphabet_index[:: 997]] == list(ds.alphabet[:: 997])


def test_dtypes(embedded_all):
    ds8 = load_embedded_omniglot("evaluation", dtype="uint8")
    ds64 = load_embedded_omniglot("evaluation", dtype="float64")
    ref = embedded_all.x[19280:]
    assert ds8.x.dtype == np.uint8 and ds64.x.dtype == np.float64
    np.testing.assert_array_equal(ds64.x, ref.astype(np.float64))
    np.testing.assert_array_equal(np.float32(1) - (255 - ds8.x).astype(np.float32) / np.float32(255), ref)
    with pytest.raises(ValueError, match="subset"):
        load_embedded_omniglot("train")
    with pytest.raises(ValueError, match="dtype"):
        load_embedded_omniglot("all", dtype="int32")


def test_works_with_the_splits_and_samplers():
    from metabridge.data.omniglot_splits import omniglot_split

    test = omniglot_split(load_embedded_omniglot("evaluation"), split="lake", part="test")
    assert test.num_classes == 659 and test.x.shape == (13180, 28, 28, 1)
    try:
        from metabridge.data.samplers import WithinAlphabetEpisodeSampler
    except ImportError:  # before the data/ restructuring
        from metabridge.data.within_alphabet import WithinAlphabetEpisodeSampler
    sampler = WithinAlphabetEpisodeSampler.from_dataset(load_embedded_omniglot("evaluation"), ways=20, seed=0)
    n = sampler.num_alphabets
    assert (n() if callable(n) else n) == 20


def test_license_and_citation_ship_beside_the_data():
    text = open(EMBEDDED_OMNIGLOT_LICENSE, encoding="utf-8").read()
    assert "MIT License" in text and "Brenden Lake" in text
    assert "Salakhutdinov" in text and "Science" in text and "1332" in text


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_embedded_omniglot"):
        load_embedded_omniglot(path=str(tmp_path / "nope.npz"))


# ---- the script and the loader on a synthetic archive (no official data needed) --------------
def _png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    bits = np.ones((105, 105), dtype=bool)
    r, c = rng.integers(10, 80, size=2)
    bits[r:r + rng.integers(5, 25), c:c + 3] = False  # a black stroke on white
    bits[r:r + 3, c:c + rng.integers(5, 25)] = False
    buf = io.BytesIO()
    Image.fromarray(bits).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def test_script_and_loader_agree_with_omniglot_on_a_fixture(tmp_path):
    layout = {"background": [("Alpha", 2), ("Beta_(b)", 1)], "evaluation": [("Gamma", 2)]}
    char_id = 0
    for subset, alphabets in layout.items():
        with zipfile.ZipFile(tmp_path / f"images_{subset}.zip", "w") as zf:
            for alphabet, n_chars in alphabets:
                for nn in range(1, n_chars + 1):
                    char_id += 1
                    for dd in range(1, 21):
                        zf.writestr(f"images_{subset}/{alphabet}/character{nn:02d}/{char_id:04d}_{dd:02d}.png",
                                    _png(100 * char_id + dd))
    script = _script()
    ds = script.load_archives(str(tmp_path))
    data = script.encode(script.arrays_from_dataset(ds, check_counts=False))
    assert data == script.encode(script.arrays_from_dataset(script.load_archives(str(tmp_path)),
                                                            check_counts=False))  # reproducible
    path = tmp_path / "embedded.npz"
    path.write_bytes(data)
    for info in zipfile.ZipFile(path).infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0) and info.compress_type == zipfile.ZIP_DEFLATED
    for subset in ("background", "evaluation", "all"):
        ref = Omniglot(str(tmp_path), subset=subset, image_size=28, cache=False, quiet=True)
        got = load_embedded_omniglot(subset, path=str(path))
        _same_dataset(got, ref)
        assert got.alphabets == ref.alphabets
        np.testing.assert_array_equal(got.alphabet_index, ref.alphabet_index)
        assert [len(i) for i in got.indices_by_class] == [len(i) for i in ref.indices_by_class]


# ---- against the official archives --------------------------------------------------------
@needs_archives
def test_sample_of_characters_equals_the_archive_loader(tmp_path, embedded_all):
    """Two characters of every alphabet (first and last), copied into a small archive pair."""
    ds = embedded_all
    wanted = set()
    for a in ds.alphabets:
        ids = np.unique(ds.character_id[ds.alphabet == a])
        wanted |= {int(ids[0]), int(ids[-1])}
    for subset in ("background", "evaluation"):
        with zipfile.ZipFile(os.path.join(ARCHIVES, f"images_{subset}.zip")) as src, \
                zipfile.ZipFile(tmp_path / f"images_{subset}.zip", "w") as dst:
            for name in src.namelist():
                base = name.rsplit("/", 1)[-1]
                if base.endswith(".png") and int(base[:4]) in wanted:
                    dst.writestr(name, src.read(name))
    ref = Omniglot(str(tmp_path), subset="all", image_size=28, cache=False, quiet=True)
    rows = np.flatnonzero(np.isin(ds.character_id, sorted(wanted)))
    assert len(ref) == len(rows) == 20 * len(wanted) and len(wanted) >= 98
    _same_dataset(ds, ref, rows)


@pytest.fixture(scope="module")
def official():
    return Omniglot(ARCHIVES, subset="all", image_size=28, cache=False, quiet=True)


@needs_archives
def test_all_images_equal_the_archive_loader(embedded_all, official):
    _same_dataset(embedded_all, official)
    assert embedded_all.alphabets == official.alphabets
    np.testing.assert_array_equal(embedded_all.alphabet_index, official.alphabet_index)


@needs_archives
def test_script_rebuilds_the_shipped_file_byte_for_byte(official):
    script = _script()
    data = script.encode(script.arrays_from_dataset(official))
    digest = hashlib.sha256(data).hexdigest()
    assert digest == script.EXPECTED_SHA256
    with open(EMBEDDED_OMNIGLOT_PATH, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == digest
    assert len(data) < 10 * 2 ** 20
