"""Omniglot: archive layouts, preprocessing, cache, download, splits, fast sampler (DESIGN.md §5).

Everything runs on small fixtures built here in the official layout (a few
alphabets x a few characters x 20 drawers of 105x105 one-bit PNGs) and on an
HTTP server on 127.0.0.1; nothing is downloaded from outside.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import threading
import zipfile

import numpy as np
import pytest

from metabridge.data import ArrayDataset, EpisodeSampler, TaskBatch
from metabridge.data import omniglot as omniglot_module
from metabridge.data.omniglot import DownloadError, Omniglot
from metabridge.data import FastEpisodeSampler, RotatedImages, omniglot_split

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw  # noqa: E402

# (alphabet, number of characters); ids are global and run on across the subsets
BACKGROUND = [("Alpha_(one)", 3), ("Beta", 2), ("Gamma", 3)]
EVALUATION = [("Delta", 2), ("Epsilon", 3)]
DRAWERS = 20
N_BG_CHARS, N_EV_CHARS = 8, 5


def _drawing(char_id: int, drawer: int) -> bytes:
    """A distinct 105x105 one-bit PNG: black strokes on white, as in the official files."""
    rng = np.random.default_rng([char_id, drawer])
    im = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        draw.line([tuple(int(v) for v in rng.integers(10, 95, size=2)) for _ in range(3)], fill=0, width=4)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def entries():
    """{subset: [(relative path inside the archive, png bytes)]} in the official layout."""
    out, char_id = {}, 0
    for subset, alphabets in (("background", BACKGROUND), ("evaluation", EVALUATION)):
        files = []
        for alphabet, n_chars in alphabets:
            for nn in range(1, n_chars + 1):
                char_id += 1
                for dd in range(1, DRAWERS + 1):
                    path = f"images_{subset}/{alphabet}/character{nn:02d}/{char_id:04d}_{dd:02d}.png"
                    files.append((path, _drawing(char_id, dd)))
        out[subset] = files
    return out


def _write_zip(path, files) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        dirs = sorted({p.rsplit("/", k)[0] + "/" for p, _ in files for k in (1, 2, 3)})
        for d in dirs:  # the official archives list their folders too
            zf.writestr(d, b"")
        for p, data in files:
            zf.writestr(p, data)
    data = buf.getvalue()
    with open(path, "wb") as fh:
        fh.write(data)
    return data


def _write_folder(root, files):
    for p, data in files:
        full = os.path.join(root, *p.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(data)
    # stray files that are no part of the data
    first_alpha = os.path.join(root, *files[0][0].split("/")[:2])
    with open(os.path.join(first_alpha, ".DS_Store"), "wb") as fh:
        fh.write(b"junk")


@pytest.fixture
def zipped(tmp_path, entries):
    root = tmp_path / "zipped"
    root.mkdir()
    for subset, files in entries.items():
        _write_zip(root / f"images_{subset}.zip", files)
    return root


def _load(root, subset="all", **kw):
    kw.setdefault("cache_dir", os.path.join(str(root), "..", "cache-" + os.path.basename(str(root))))
    return Omniglot(root, subset=subset, **kw)


# ---- layouts and metadata ---------------------------------------------------------------
def test_zip_layout_images_and_metadata(zipped):
    ds = _load(zipped, "all")
    n = (N_BG_CHARS + N_EV_CHARS) * DRAWERS
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.float32
    assert ds.x is ds.images and np.array_equal(ds.y, ds.character)
    assert ds.num_classes == N_BG_CHARS + N_EV_CHARS
    assert np.array_equal(np.unique(ds.character), np.arange(N_BG_CHARS + N_EV_CHARS))
    assert ds.alphabets == ("Alpha_(one)", "Beta", "Gamma", "Delta", "Epsilon")
    assert ds.alphabet[0] == "Alpha_(one)" and ds.character[0] == 0 and ds.drawer[0] == 1
    assert ds.file[0] == "images_background/Alpha_(one)/character01/0001_01.png"
    # order: by character then drawer; drawers 1..20 for each character
    assert np.array_equal(ds.drawer.reshape(-1, DRAWERS), np.tile(np.arange(1, DRAWERS + 1), (13, 1)))
    assert np.array_equal(ds.character, np.repeat(np.arange(13), DRAWERS))
    assert list(ds.character_number[::DRAWERS]) == [1, 2, 3, 1, 2, 1, 2, 3, 1, 2, 1, 2, 3]
    assert np.array_equal(np.asarray(ds.alphabets)[ds.alphabet_index], ds.alphabet)
    assert (ds.subset_of == "background").sum() == N_BG_CHARS * DRAWERS
    bg = _load(zipped, "background")
    ev = _load(zipped, "evaluation")
    assert len(bg) == N_BG_CHARS * DRAWERS and bg.num_classes == N_BG_CHARS
    assert len(ev) == N_EV_CHARS * DRAWERS and ev.num_classes == N_EV_CHARS
    assert ev.character.min() == N_BG_CHARS  # global character index, not restarted
    assert np.array_equal(np.concatenate([bg.images, ev.images]), ds.images)
    assert ds.describe()["num_characters"] == 13 and "LANCZOS" in ds.describe()["resize"]
    assert isinstance(ds, ArrayDataset) and ds.min_examples_per_class() == DRAWERS


@pytest.mark.parametrize("layout", ["folder", "torchvision-folder", "torchvision-zip"])
def test_other_layouts_give_the_same_arrays(tmp_path, zipped, entries, layout):
    reference = _load(zipped, "all")
    root = tmp_path / layout
    base = root / "omniglot-py" if layout.startswith("torchvision") else root
    base.mkdir(parents=True)
    for subset, files in entries.items():
        if layout.endswith("zip"):
            _write_zip(base / f"images_{subset}.zip", files)
        else:
            _write_folder(str(base), files)
    ds = _load(root, "all")
    assert all(p.startswith(str(base)) for p in ds.sources)
    assert np.array_equal(ds.images, reference.images)
    for attr in ("character", "drawer", "alphabet", "character_number", "subset_of", "file"):
        assert np.array_equal(getattr(ds, attr), getattr(reference, attr)), attr


# ---- preprocessing ----------------------------------------------------------------------
def test_preprocessing_strokes_one_background_zero_antialiased(tmp_path, entries):
    files = entries["background"][:DRAWERS]  # one character
    blank, ink = io.BytesIO(), io.BytesIO()
    Image.new("1", (105, 105), 1).save(blank, format="PNG")
    Image.new("1", (105, 105), 0).save(ink, format="PNG")
    files = [(files[0][0], blank.getvalue()), (files[1][0], ink.getvalue())] + files[2:]
    _write_zip(tmp_path / "images_background.zip", files)
    full = Omniglot(tmp_path, "background", image_size=105, cache=False)
    assert full.images.shape == (DRAWERS, 105, 105, 1) and full.images.dtype == np.float32
    assert np.all(full.images[0] == 0.0) and np.all(full.images[1] == 1.0)
    bits = np.asarray(Image.open(io.BytesIO(files[2][1])).convert("L")) / 255.0
    assert set(np.unique(full.images)) == {0.0, 1.0}
    np.testing.assert_array_equal(full.images[2, :, :, 0], 1.0 - bits)  # strokes (black) -> 1.0

    small = Omniglot(tmp_path, "background", image_size=28, cache=False)
    assert small.images.shape == (DRAWERS, 28, 28, 1) and small.images.dtype == np.float32
    assert np.all(small.images[0] == 0.0) and np.all(small.images[1] == 1.0)
    img = small.images[2:]
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert np.any((img > 0.05) & (img < 0.95)), "antialiasing leaves intermediate values"
    expected = Image.open(io.BytesIO(files[2][1])).convert("L").resize((28, 28), Image.LANCZOS)
    np.testing.assert_allclose(small.images[2, :, :, 0], 1.0 - np.asarray(expected) / 255.0, atol=1e-6)
    odd = Omniglot(tmp_path, "background", image_size=13, cache=False)
    assert odd.images.shape == (DRAWERS, 13, 13, 1)


# ---- cache ------------------------------------------------------------------------------
def test_cache_hit_skips_decoding_and_stale_key_rebuilds(zipped, tmp_path, monkeypatch):
    cache_dir = tmp_path / "c"
    first = Omniglot(zipped, "all", cache_dir=cache_dir)
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 2 and all(f.endswith(".npz") for f in files)  # one per subset, no temp left

    def boom(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(omniglot_module, "_decode_png", boom)
    second = Omniglot(zipped, "all", cache_dir=cache_dir)
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.alphabet, second.alphabet) and np.array_equal(first.drawer, second.drawer)
    assert sorted(os.path.basename(f) for f in second.cache_files) == files
    Omniglot(zipped, "background", cache_dir=cache_dir)  # a subset reuses the per-subset cache

    with pytest.raises(AssertionError, match="decoded although"):  # another size: another key
        Omniglot(zipped, "background", image_size=20, cache_dir=cache_dir)

    calls = []
    monkeypatch.undo()
    real = omniglot_module._decode_png
    monkeypatch.setattr(omniglot_module, "_decode_png", lambda *a: calls.append(1) or real(*a))
    st = os.stat(zipped / "images_evaluation.zip")
    os.utime(zipped / "images_evaluation.zip", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = Omniglot(zipped, "all", cache_dir=cache_dir)
    assert len(calls) == N_EV_CHARS * DRAWERS  # only the changed archive was decoded again
    assert np.array_equal(third.images, first.images)
    calls.clear()
    Omniglot(zipped, "all", cache_dir=cache_dir)
    assert calls == []  # and its cache was rewritten
    assert not [f for f in os.listdir(cache_dir) if not f.endswith(".npz")]


def test_cache_of_folder_layout_notices_changed_files(tmp_path, entries, monkeypatch):
    root = tmp_path / "unpacked"
    _write_folder(str(root), entries["background"])
    Omniglot(root, "background", cache_dir=tmp_path / "c")
    calls = []
    real = omniglot_module._decode_png
    monkeypatch.setattr(omniglot_module, "_decode_png", lambda *a: calls.append(1) or real(*a))
    Omniglot(root, "background", cache_dir=tmp_path / "c")
    assert calls == []
    target = root / "images_background" / "Beta" / "character01" / "0004_03.png"
    with open(target, "wb") as fh:
        fh.write(entries["background"][0][1])
    os.utime(target, ns=(0, os.stat(target).st_mtime_ns + 5_000_000_000))
    changed = Omniglot(root, "background", cache_dir=tmp_path / "c")
    assert len(calls) == N_BG_CHARS * DRAWERS
    assert np.array_equal(changed.images[3 * DRAWERS + 2], changed.images[0])


def test_default_cache_next_to_data_or_user_cache_when_read_only(zipped, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ds = Omniglot(zipped, "background")
    assert all(os.path.dirname(f) == str(zipped / ".metabridge_cache") for f in ds.cache_files)
    assert not (tmp_path / "xdg").exists()

    ro = tmp_path / "readonly"
    ro.mkdir()
    shutil.copyfile(zipped / "images_background.zip", ro / "images_background.zip")
    os.chmod(ro, 0o555)
    try:
        ds = Omniglot(ro, "background")
        assert sorted(os.listdir(ro)) == ["images_background.zip"]  # nothing written to the data
        assert all(f.startswith(str(tmp_path / "xdg" / "metabridge" / "omniglot")) for f in ds.cache_files)
        assert len(ds.cache_files) == 1
        monkeypatch.setattr(omniglot_module, "_decode_png", lambda *a: 1 / 0)
        again = Omniglot(ro, "background")  # read back from the user cache
        assert np.array_equal(again.images, ds.images)
    finally:
        os.chmod(ro, 0o755)


def test_no_cache_option(zipped):
    ds = Omniglot(zipped, "evaluation", cache=False)
    assert ds.cache_files == () and not (zipped / ".metabridge_cache").exists()


# ---- download ---------------------------------------------------------------------------
class _Server:
    """An HTTP server on 127.0.0.1 (port 0) serving ``routes``: path -> bytes or (bytes, mode)."""

    def __init__(self, routes: dict):
        self.routes, self.requests = routes, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                body, mode = route if isinstance(route, tuple) else (route, "ok")
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "truncate":  # promise the whole body, send part of it, hang up
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archives(tmp_path, entries):
    out = {}
    for subset, files in entries.items():
        data = _write_zip(tmp_path / f"src-{subset}.zip", files)
        out[f"images_{subset}"] = (data, hashlib.md5(data).hexdigest())
    return out


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_download_verifies_md5_and_loads(tmp_path, archives):
    routes = {f"/files/{name}.zip": data for name, (data, _) in archives.items()}
    md5 = {name: digest for name, (_, digest) in archives.items()}
    root = tmp_path / "new" / "omniglot"
    with _Server(routes) as server:
        ds = Omniglot(root, "all", download=True, base_url=server.url, md5=md5, cache_dir=tmp_path / "c")
        assert len(ds) == (N_BG_CHARS + N_EV_CHARS) * DRAWERS
        assert sorted(os.listdir(root)) == ["images_background.zip", "images_evaluation.zip"]
        assert (root / "images_background.zip").read_bytes() == archives["images_background"][0]
        n = len(server.requests)
        Omniglot(root, "all", download=True, base_url=server.url, md5=md5, cache_dir=tmp_path / "c")
        assert len(server.requests) == n  # archives already there: nothing fetched


def test_download_with_wrong_md5_leaves_nothing(tmp_path, archives):
    routes = {f"/files/{name}.zip": data for name, (data, _) in archives.items()}
    published = "68d2efa1b9178cc56df9314c21c6e718"
    md5 = {"images_background": published, "images_evaluation": archives["images_evaluation"][1]}
    root = tmp_path / "omniglot"
    with _Server(routes) as server:
        with pytest.raises(DownloadError) as err:
            Omniglot(root, "background", download=True, base_url=server.url, md5=md5)
    msg = str(err.value)
    assert f"Expected images_background.zip with MD5 {published}" in msg
    assert f"Received: MD5 {archives['images_background'][1]}" in msg and "discarded" in msg
    assert os.listdir(root) == []  # neither the archive nor a temporary file


def test_default_checksums_are_the_published_ones():
    assert omniglot_module.OMNIGLOT_MD5 == {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
                                            "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
    assert omniglot_module.OMNIGLOT_URL == "https://github.com/brendenlake/omniglot/raw/master/python/"


def test_interrupted_download_leaves_nothing(tmp_path, archives):
    data, digest = archives["images_background"]
    routes = {"/files/images_background.zip": (data, "truncate")}
    root = tmp_path / "omniglot"
    with _Server(routes) as server:
        with pytest.raises(DownloadError) as err:
            Omniglot(root, "background", download=True, base_url=server.url,
                     md5={"images_background": digest})
    msg = str(err.value)
    assert f"Expected {len(data)} bytes" in msg and "Received:" in msg and "discarded" in msg
    assert os.listdir(root) == []


def test_missing_file_on_server_says_so(tmp_path, archives):
    root = tmp_path / "omniglot"
    with _Server({}) as server:
        with pytest.raises(DownloadError, match=r"Expected images_background.zip from .*Received: HTTP 404"):
            Omniglot(root, "background", download=True, base_url=server.url,
                     md5={"images_background": None})
    assert os.listdir(root) == []


# ---- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"subset": "train"}, "subset='train'"),
    ({"image_size": 0}, "image_size=0"),
    ({"image_size": -3}, "image_size=-3"),
    ({"image_size": 2.5}, "image_size=2.5"),
    ({"image_size": True}, "image_size=True"),
])
def test_bad_arguments(zipped, kwargs, match):
    with pytest.raises(ValueError, match="Expected") as err:
        Omniglot(zipped, **kwargs)
    assert "Received" in str(err.value) and match in str(err.value)


def test_missing_root_or_data_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        Omniglot(tmp_path / "nowhere", "all")
    msg = str(err.value)
    assert "Expected" in msg and "Received" in msg and "download=True" in msg and "does not exist" in msg
    for candidate in ("images_background.zip", "images_evaluation",
                      os.path.join("omniglot-py", "images_background")):
        assert os.path.join(str(tmp_path / "nowhere"), candidate) in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has none of them"):
        Omniglot(tmp_path / "empty", "evaluation")


def test_foreign_layout_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as zf:
        zf.writestr("images_background/Alpha/glyph1/a.png", b"")
    with pytest.raises(ValueError, match="Expected Omniglot entries .*Received: .*glyph1"):
        Omniglot(tmp_path, "background", cache=False)


# ---- splits -----------------------------------------------------------------------------
@pytest.fixture
def ds(zipped):
    return _load(zipped, "all")


def test_lake_split_is_background_vs_evaluation(ds):
    train = omniglot_split(ds, "lake", "train")
    test = omniglot_split(ds, "lake", "test")
    assert train.num_classes == N_BG_CHARS and len(train) == N_BG_CHARS * DRAWERS
    assert test.num_classes == N_EV_CHARS and len(test) == N_EV_CHARS * DRAWERS
    assert np.array_equal(train.characters, np.arange(N_BG_CHARS))
    assert np.array_equal(test.x, ds.images[ds.subset_of == "evaluation"])
    assert omniglot_split(ds, "lake", "trainval").num_classes == N_BG_CHARS
    d = test.describe()
    assert (d["split"], d["part"], d["rotations"], d["seed"]) == ("lake", "test", "none", None)
    assert d["num_classes"] == 5
    assert d["num_alphabets"] == 2


def test_lake_split_from_a_root_loads_the_needed_subset(zipped, tmp_path):
    test = omniglot_split(zipped, "lake", "test", cache_dir=tmp_path / "c")
    assert test.num_classes == N_EV_CHARS and test.describe()["omniglot_subset"] == "evaluation"


def test_vinyals_split_counts_disjoint_deterministic(ds):
    sizes = (7, 2, 4)
    parts = {p: omniglot_split(ds, "vinyals", p, sizes=sizes) for p in ("train", "val", "test", "trainval")}
    assert [parts[p].num_classes for p in ("train", "val", "test", "trainval")] == [7, 2, 4, 9]
    chars = [set(parts[p].characters.tolist()) for p in ("train", "val", "test")]
    assert set().union(*chars) == set(range(13)) and sum(len(c) for c in chars) == 13
    assert set(parts["trainval"].characters.tolist()) == chars[0] | chars[1]
    perm = np.random.default_rng(1).permutation(13)  # the documented shuffle, default seed 1
    assert chars[0] == set(perm[:7].tolist()) and chars[2] == set(perm[9:].tolist())
    again = omniglot_split(ds, "vinyals", "train", sizes=sizes)
    assert np.array_equal(again.characters, parts["train"].characters)
    assert np.array_equal(again.x, parts["train"].x) and np.array_equal(again.y, parts["train"].y)
    others = {tuple(omniglot_split(ds, "vinyals", "train", sizes=sizes, seed=s).characters) for s in range(6)}
    assert len(others) > 1
    d = parts["val"].describe()
    assert (d["split"], d["part"], d["seed"], d["num_classes"]) == ("vinyals", "val", 1, 2)
    assert d["sizes"] == [7, 2, 4]
    # labels index characters; images are the dataset's images of those characters
    tr = parts["train"]
    for c in range(tr.num_classes):
        idx = tr.indices_by_class[c]
        assert np.all(tr.y[idx] == c) and len(idx) == DRAWERS
        np.testing.assert_array_equal(tr.x[idx], ds.images[ds.character == tr.characters[c]])


def test_vinyals_default_sizes_need_all_1623_characters(ds):
    with pytest.raises(ValueError, match=r"Expected sizes .* 13 characters.*Received: sizes=\(1100, 100"):
        omniglot_split(ds, "vinyals", "train")


def test_rotations_as_classes(ds):
    base = omniglot_split(ds, "vinyals", "train", sizes=(7, 2, 4))
    rot = omniglot_split(ds, "vinyals", "train", "classes", sizes=(7, 2, 4))
    assert isinstance(rot.x, RotatedImages)
    assert rot.num_classes == 4 * base.num_classes and len(rot) == 4 * len(base)
    assert rot.x.shape == (4 * len(base), 28, 28, 1) and rot.x.dtype == np.float32
    j = np.arange(len(base))
    for k in range(4):
        np.testing.assert_array_equal(rot.x[4 * j + k], np.rot90(base.x, k, axes=(1, 2)))
        assert np.array_equal(rot.y[4 * j + k], 4 * base.y + k)
    np.testing.assert_array_equal(rot.x[5], np.rot90(base.x[1], 1, axes=(0, 1)))  # counter-clockwise
    np.testing.assert_array_equal(rot.x[-1], np.rot90(base.x[-1], 3, axes=(0, 1)))
    np.testing.assert_array_equal(rot.x[2:10:3], np.asarray(rot.x)[2:10:3])
    for c in range(rot.num_classes):
        assert np.all(rot.y[rot.indices_by_class[c]] == c)
    assert rot.describe()["rotations"] == "classes" and rot.describe()["num_classes"] == 28
    ep = EpisodeSampler(rot, ways=5, shots=1, queries=3, seed=0).episode(0)  # the generic sampler works too
    assert ep.support_x.shape == (5, 28, 28, 1)


def test_rotation_per_task_is_consistent_within_a_class_and_pure(ds):
    split = omniglot_split(ds, "vinyals", "trainval", "per-task", sizes=(7, 2, 4))
    assert split.rotate_per_task and split.describe()["rotations"] == "per-task"
    sampler = split.sampler(ways=4, shots=2, queries=3, seed=5)
    assert isinstance(sampler, FastEpisodeSampler) and sampler.rotate_per_task
    plain = FastEpisodeSampler(split, ways=4, shots=2, queries=3, seed=5, rotate_per_task=False)
    seen = set()
    for i in range(12):
        ep, flat = sampler.episode(i), plain.episode(i)  # same draws; rotation drawn after them
        for c in range(4):
            rs, fs = ep.support_x[2 * c:2 * c + 2], flat.support_x[2 * c:2 * c + 2]
            rq, fq = ep.query_x[3 * c:3 * c + 3], flat.query_x[3 * c:3 * c + 3]
            turns = [k for k in range(4) if np.array_equal(rs, np.rot90(fs, k, axes=(1, 2)))
                     and np.array_equal(rq, np.rot90(fq, k, axes=(1, 2)))]
            assert turns, f"episode {i} class {c}: images not rotated alike"
            seen.add(turns[0])
        again = FastEpisodeSampler(split, ways=4, shots=2, queries=3, seed=5).episode(i)
        for f in ("support_x", "support_y", "query_x", "query_y"):
            assert np.array_equal(getattr(ep, f), getattr(again, f))
    assert seen == {0, 1, 2, 3}


# ---- fast sampler -----------------------------------------------------------------------
def _check_episode(ep, ways, shots, queries, x):
    assert ep.support_x.shape == (ways * shots,) + x.shape[1:]
    assert ep.query_x.shape == (ways * queries,) + x.shape[1:]
    assert np.array_equal(ep.support_y, np.repeat(np.arange(ways), shots))
    assert np.array_equal(ep.query_y, np.repeat(np.arange(ways), queries))


def test_fast_sampler_episodes_are_valid_pure_and_batch_equals_episodes(ds):
    s = FastEpisodeSampler(ds, ways=5, shots=1, queries=15, seed=3)
    assert isinstance(s, EpisodeSampler)
    ep = s.episode(7)
    _check_episode(ep, 5, 1, 15, ds.x)
    # each support/query image is a dataset image of its class, classes distinct, no repeats
    flat = ds.x.reshape(len(ds.x), -1)
    lookup = {flat[i].tobytes(): i for i in range(len(flat))}
    s_idx = np.array([lookup[im.tobytes()] for im in ep.support_x.reshape(5, -1)])
    q_idx = np.array([lookup[im.tobytes()] for im in ep.query_x.reshape(75, -1)])
    assert len(set(ds.y[s_idx].tolist())) == 5
    assert np.array_equal(ds.y[q_idx].reshape(5, 15), np.repeat(ds.y[s_idx][:, None], 15, axis=1))
    assert len(set(s_idx.tolist()) | set(q_idx.tolist())) == 80
    other = FastEpisodeSampler(ds, ways=5, shots=1, queries=15, seed=3)
    batch = other.batch(2, 4)
    assert isinstance(batch, TaskBatch) and batch.size == 4
    stacked = TaskBatch.stack([s.episode(8 + j) for j in range(4)])
    for f in ("support_x", "support_y", "query_x", "query_y"):
        assert np.array_equal(getattr(batch, f), getattr(stacked, f))
        assert getattr(batch, f).dtype == getattr(stacked, f).dtype
    assert not np.array_equal(s.episode(0).support_x, s.episode(1).support_x)
    other_seed = FastEpisodeSampler(ds, 5, 1, 15, seed=4)
    assert not np.array_equal(s.episode(0).support_x, other_seed.episode(0).support_x)


def test_fast_sampler_on_unequal_classes_only_picks_real_examples():
    y = np.repeat(np.arange(6), [3, 9, 4, 12, 5, 3])
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1)
    data = ArrayDataset(x, y)
    s = FastEpisodeSampler(data, ways=3, shots=1, queries=2, seed=0)
    for i in range(50):
        ep = s.episode(i)
        picked = np.concatenate([ep.support_x[:, 0], ep.query_x[:, 0]]).astype(int)
        assert len(set(picked.tolist())) == 9
        labels = np.concatenate([ep.support_y, ep.query_y])
        for c in range(3):
            assert len(set(y[picked[labels == c]].tolist())) == 1


def test_fast_sampler_checks_arguments(ds):
    with pytest.raises(ValueError, match="Expected ways <= 13.*Received: ways=20"):
        FastEpisodeSampler(ds, ways=20, shots=1, queries=1)
    with pytest.raises(ValueError, match="Expected shots \\+ queries <= 20.*Received"):
        FastEpisodeSampler(ds, ways=5, shots=10, queries=11)
    with pytest.raises(ValueError, match="Expected meta_batch >= 1. Received"):
        FastEpisodeSampler(ds, 5, 1, 1).prefetch(3, 0)


def test_prefetch_yields_exactly_the_direct_batches(ds):
    s = FastEpisodeSampler(ds, ways=5, shots=1, queries=5, seed=11)
    got = list(s.prefetch(4, meta_batch=3))
    assert len(got) == 4
    for step, b in enumerate(got):
        direct = s.batch(step, 3)
        for f in ("support_x", "support_y", "query_x", "query_y"):
            assert np.array_equal(getattr(b, f), getattr(direct, f))
    later = list(s.prefetch(range(5, 8), meta_batch=3, buffer=1))
    assert all(np.array_equal(b.query_x, s.batch(st, 3).query_x) for b, st in zip(later, range(5, 8)))
    import itertools

    with s.prefetch(itertools.count(), meta_batch=2) as endless:  # stops early on close
        first = [next(endless) for _ in range(3)]
    assert np.array_equal(first[2].support_x, s.batch(2, 2).support_x)
    assert list(endless) == []
    failing = s.prefetch([0, -1, 2], meta_batch=2)
    next(failing)
    with pytest.raises(ValueError, match="Expected step >= 0. Received: step=-1"):
        next(failing)


# ---- split arguments --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"split": "random"}, "split='random'"),
    ({"part": "dev"}, "part='dev'"),
    ({"rotations": "yes"}, "rotations='yes'"),
    ({"split": "lake", "part": "val"}, "part='val'"),
    ({"split": "vinyals", "sizes": (5, 5, 5)}, "sizes=(5, 5, 5)"),
    ({"split": "vinyals", "seed": -1, "sizes": (7, 2, 4)}, "seed=-1"),
])
def test_bad_split_arguments(ds, kwargs, match):
    with pytest.raises(ValueError, match="Expected") as err:
        omniglot_split(ds, **kwargs)
    assert "Received" in str(err.value) and match in str(err.value)


def test_lake_part_missing_from_a_partial_load(zipped):
    bg = _load(zipped, "background")
    with pytest.raises(ValueError, match=r"Expected images_evaluation .*Received: Omniglot\(subset='backg"):
        omniglot_split(bg, "lake", "test")
    with pytest.raises(TypeError, match="Expected an Omniglot dataset"):
        omniglot_split(np.zeros(3), "lake", "train")


def test_dropped_prefetcher_stops_its_thread(ds):
    import gc

    s = FastEpisodeSampler(ds, ways=2, shots=1, queries=1, seed=0)
    it = s.prefetch(10**9, meta_batch=1)
    next(it)
    thread = it._thread
    del it
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
