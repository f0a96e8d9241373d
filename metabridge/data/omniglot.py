"""Omniglot (Lake et al., 2015): the official archives, decoded once and cached (numpy only).

>>> ds = Omniglot("data/omniglot", subset="all")          # doctest: +SKIP
>>> ds.images.shape, ds.images.dtype                      # doctest: +SKIP
((32460, 28, 28, 1), dtype('float32'))
>>> ds.alphabet[0], ds.character[0], ds.drawer[0]         # doctest: +SKIP
('Arcadian', 0, 1)

Where the data is read from
    For each subset (``images_background``, ``images_evaluation``) the first of
    these that exists under ``root`` is read::

        <root>/images_<subset>.zip                 the official archive, still zipped
        <root>/images_<subset>/                    the archive unpacked
        <root>/omniglot-py/images_<subset>.zip     what torchvision downloads ...
        <root>/omniglot-py/images_<subset>/        ... and unpacks

    Inside, the layout is the official one: ``<Alphabet>/characterNN/IIII_DD.png``
    (105x105 one-bit PNGs, white background, black strokes), where ``IIII`` is the
    global character id 0001-1623 and ``DD`` the drawer 01-20. Zips are read in
    place, without extracting.

Preprocessing (the papers' recipe)
    Each PNG is converted to 8-bit grey and resized to ``image_size`` x
    ``image_size`` with Pillow's **LANCZOS** filter (the filter Pillow used to
    call ``ANTIALIAS``, the one the MAML and Prototypical-network resizing
    scripts name), then inverted and scaled so that strokes are 1.0 and the
    background 0.0 (float32; the antialiasing leaves intermediate values at
    stroke edges). ``image_size=105`` keeps the original pixels. Images are
    ``[n, S, S, 1]``.

Cache
    Decoding the 32,460 images takes a while, so the decoded arrays of each
    subset are written to an uncompressed ``.npz`` keyed by the source (its
    absolute path, size and modification time; for an unpacked folder the number
    of files, their total size and the newest mtime), the image size and a
    format version. A cache whose key does not match is rebuilt. The file is
    written to a temporary name and renamed, so a crash never leaves half a cache.
    Where: ``cache_dir`` when given; otherwise ``<root>/.metabridge_cache``, or,
    when ``root`` is not writable (a read-only data share), the user cache
    directory ``$XDG_CACHE_HOME/metabridge/omniglot`` (``~/.cache/metabridge/omniglot``
    when ``XDG_CACHE_HOME`` is unset). A valid cache in either place is used.

Download
    ``download=True`` fetches missing archives from the Omniglot project's own
    address (``OMNIGLOT_URL``), checks the published MD5 (``OMNIGLOT_MD5``),
    and writes through a temporary file renamed only on success: an interrupted,
    truncated or corrupted download leaves nothing behind and raises
    :class:`DownloadError` saying what happened.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from typing import Mapping, Sequence

import numpy as np

from metabridge.utils.atomic import atomic_file
from metabridge.data.episodes import ArrayDataset
from metabridge.utils.progress import progress

__all__ = ["Omniglot", "DownloadError", "OMNIGLOT_URL", "OMNIGLOT_MD5", "OMNIGLOT_SUBSETS",
           "download_omniglot"]

#: Base address of the official archives (``<OMNIGLOT_URL><name>.zip``).
OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
#: Published MD5 of the official archives (the same ones torchvision checks).
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
OMNIGLOT_SUBSETS = ("background", "evaluation", "all")
_CACHE_VERSION = 1
_FILE_RE = re.compile(r"^(\d+)_(\d+)\.png$")
_CHAR_RE = re.compile(r"^character(\d+)$")


#: What Python's zipfile raises on damaged archives (besides OSError).
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error, RuntimeError, ValueError, KeyError)


def _open_zip(path: str) -> zipfile.ZipFile:
    """Open an archive, or a ``ValueError`` naming it when it is not a readable zip."""
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        raise ValueError(f"Expected a zip archive in {path}. Received: {exc} (a damaged or partial download? "
                         "delete it, or fetch it again with --download)") from None


class DownloadError(OSError):
    """A download failed, was cut short or did not match its checksum; nothing was kept."""


# ---- decoding ---------------------------------------------------------------------------
#: Largest image (pixels) and zip member (bytes) read: Omniglot's PNGs are 105x105 and ~300 bytes.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_MEMBER_BYTES = 16 << 20


def _decode_png(data: bytes, image_size: int, where: str = "an image") -> np.ndarray:
    """One PNG (bytes) -> ``[S, S]`` float32, strokes 1.0, background 0.0 (LANCZOS resize).
    A file that is not an image, or is larger than :data:`MAX_IMAGE_PIXELS`, is a
    ``ValueError`` naming ``where``."""
    from PIL import Image

    try:
        opened = Image.open(io.BytesIO(data))
    except (OSError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        # Pillow names an in-memory buffer ("<_io.BytesIO object at 0x...>"): say what the bytes are instead
        raise ValueError(f"Expected a PNG image in {where}. Received: {len(data)} bytes that Pillow cannot "
                         f"read as an image ({type(exc).__name__}), starting {data[:16]!r}") from None
    with opened as im:
        if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
            raise ValueError(f"Expected an image of at most {MAX_IMAGE_PIXELS} pixels in {where}. "
                             f"Received: {im.size[0]}x{im.size[1]}")
        try:
            im.load()
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"Expected a readable PNG image in {where}. Received: {type(exc).__name__}: {exc}") \
                from None
        im = im.convert("L")  # one-bit -> 0/255, so that the resize filter applies
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), resample=Image.LANCZOS)
        grey = np.asarray(im, dtype=np.float32)
    return 1.0 - grey / np.float32(255.0)


def _parse_entry(alphabet: str, char_folder: str, file_name: str, where: str):
    """``(alphabet, character number, character id, drawer)`` from the official names."""
    m_file, m_char = _FILE_RE.match(file_name), _CHAR_RE.match(char_folder)
    if not m_file or not m_char or not alphabet:
        raise ValueError(
            "Expected Omniglot entries named <Alphabet>/characterNN/IIII_DD.png. "
            f"Received: {where!r}"
        )
    return alphabet, int(m_char.group(1)), int(m_file.group(1)), int(m_file.group(2))


def _skip(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class _Source:
    """One subset on disk: a zip or a folder; lists entries, reads bytes, gives a cache key."""

    def __init__(self, path: str, subset: str):
        self.path, self.subset = os.path.abspath(path), subset
        self.is_zip = os.path.isfile(self.path)
        self._entries: list[tuple] | None = None
        self._fingerprint: dict | None = None

    def _scan(self):
        entries = []
        if self.is_zip:
            st = os.stat(self.path)
            self._fingerprint = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            with _open_zip(self.path) as zf:
                for info in zf.infolist():
                    parts = info.filename.split("/")
                    if info.is_dir() or not parts[-1].lower().endswith(".png") or _skip(parts):
                        continue
                    if len(parts) < 3:
                        raise ValueError(
                            "Expected Omniglot entries named <Alphabet>/characterNN/IIII_DD.png. "
                            f"Received: {info.filename!r} in {self.path}"
                        )
                    meta = _parse_entry(parts[-3], parts[-2], parts[-1], f"{self.path}:{info.filename}")
                    entries.append(meta + (info.filename,))
        else:
            count, total, newest = 0, 0, os.stat(self.path).st_mtime_ns
            for alpha in sorted(os.scandir(self.path), key=lambda e: e.name):
                if not alpha.is_dir() or _skip([alpha.name]):
                    continue
                newest = max(newest, alpha.stat().st_mtime_ns)
                for char in sorted(os.scandir(alpha.path), key=lambda e: e.name):
                    if not char.is_dir() or _skip([char.name]):
                        continue
                    newest = max(newest, char.stat().st_mtime_ns)
                    for f in os.scandir(char.path):
                        if not f.name.lower().endswith(".png") or _skip([f.name]):
                            continue
                        st = f.stat()
                        count, total, newest = count + 1, total + st.st_size, max(newest, st.st_mtime_ns)
                        meta = _parse_entry(alpha.name, char.name, f.name, f.path)
                        entries.append(meta + (f.path,))
            self._fingerprint = {"files": count, "size": total, "mtime_ns": newest}
        if not entries:
            raise ValueError(
                f"Expected PNG images in the Omniglot layout <Alphabet>/characterNN/IIII_DD.png "
                f"inside {self.path}. Received: no such entries"
            )
        # The official order: by global character id, then drawer.
        entries.sort(key=lambda e: (e[2], e[3], e[0], e[4]))
        self._entries = entries

    @property
    def entries(self):
        if self._entries is None:
            self._scan()
        return self._entries

    def key(self, image_size: int) -> str:
        if self._fingerprint is None:
            if self.is_zip:  # a zip's key needs no listing: cheap on a cache hit
                st = os.stat(self.path)
                self._fingerprint = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            else:
                self._scan()
        return json.dumps({"version": _CACHE_VERSION, "source": self.path, "zip": self.is_zip,
                           "image_size": image_size, **self._fingerprint}, sort_keys=True)

    def metadata(self) -> dict:
        """Per-image metadata arrays, in the official order (no decoding)."""
        alphabets, char_numbers, char_ids, drawers, files = zip(*self.entries)
        if not self.is_zip:
            files = [os.path.relpath(f, os.path.dirname(self.path)) for f in files]
        return {
            "alphabet": np.array(alphabets, dtype=str),
            "character_number": np.array(char_numbers, dtype=np.int16),
            "character_id": np.array(char_ids, dtype=np.int32),
            "drawer": np.array(drawers, dtype=np.int16),
            "entry": np.array([f.replace(os.sep, "/") for f in files], dtype=str),
        }

    def decode_into(self, out: np.ndarray, quiet: bool) -> None:
        """Decode every image into ``out`` ``[n, S, S, 1]`` (reading zips in place)."""

        entries, image_size = self.entries, out.shape[1]
        n = len(entries)
        zf = _open_zip(self.path) if self.is_zip else None
        try:
            bar = progress(enumerate(entries), total=n, quiet=quiet,
                           desc=f"Decoding Omniglot {self.subset} ({n} images, once; cached after)")
            for i, entry in bar:
                if zf is not None:
                    where = f"{self.path} (member {entry[4]})"
                    size = zf.getinfo(entry[4]).file_size
                else:
                    where, size = entry[4], os.path.getsize(entry[4])
                if size > MAX_MEMBER_BYTES:
                    raise ValueError(f"Expected an image file of at most {MAX_MEMBER_BYTES} bytes in {where}. "
                                     f"Received: {size} bytes")
                if zf is not None:
                    try:
                        data = zf.read(entry[4])
                    except (OSError, *_ZIP_ERRORS) as exc:
                        raise ValueError(f"Expected a readable zip member in {where}. Received: {exc}") from None
                else:
                    with open(entry[4], "rb") as fh:
                        data = fh.read(MAX_MEMBER_BYTES + 1)
                out[i, :, :, 0] = _decode_png(data, image_size, where)
        finally:
            if zf is not None:
                zf.close()


# ---- cache ------------------------------------------------------------------------------
def _user_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "metabridge", "omniglot")


def _cache_name(source: _Source, image_size: int) -> str:
    tag = hashlib.sha1(source.path.encode("utf-8")).hexdigest()[:10]
    return f"omniglot-{source.subset}-{image_size}px-{tag}.npz"


def _read_cache_meta(path: str, key: str, image_size: int) -> dict | None:
    """The metadata arrays of a cache whose key matches (images are read later, in place)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            meta = {k: z[k] for k in z.files if k not in ("key", "images")}
            if "images.npy" not in z.zip.namelist():
                return None
        shape, dtype = _npy_header(path)
        if shape != (len(meta["drawer"]), image_size, image_size, 1) or dtype != np.float32:
            return None
        return meta
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None


def _npy_header(path: str):
    with zipfile.ZipFile(path) as zf, zf.open("images.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(fh)
    if fortran:
        raise ValueError("fortran-ordered cache")
    return tuple(shape), dtype


def _read_cache_images(path: str, out: np.ndarray) -> bool:
    """Stream the cached images straight into ``out`` (no second copy of the array)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("images.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(fh)
            if tuple(shape) != out.shape or dtype != out.dtype or fortran:
                return False
            view = memoryview(out.reshape(-1)).cast("B")
            pos = 0
            while pos < len(view):
                got = fh.readinto(view[pos:pos + (1 << 24)])
                if not got:
                    return False
                pos += got
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return False
    # strokes 1.0 on background 0.0: anything else means the cache was damaged or edited
    if not (np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0):
        warnings.warn(f"Ignoring the Omniglot cache {path}: its images hold values outside [0, 1] "
                      "(damaged or edited); decoding the archives again", stacklevel=3)
        return False
    return True


def _write_cache(directory: str, name: str, key: str, arrays: dict) -> str | None:
    """Write atomically (see :mod:`metabridge.utils.atomic`); ``None`` where the folder is not writable."""
    target = os.path.join(directory, name)
    try:
        with atomic_file(target) as fh:
            np.savez(fh, key=np.array(key), **arrays)
    except OSError:
        return None
    return target


def _writable(directory: str) -> bool:
    """Whether ``directory`` (or its nearest existing parent) may be written to.

    The mode bits count too, not only :func:`os.access`: a data share marked
    read-only (``r-x``) stays untouched even for root, whom ``access`` always allows.
    """
    probe = os.path.abspath(directory)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    try:
        mode = os.stat(probe).st_mode
    except OSError:
        return False
    return os.path.isdir(probe) and bool(mode & 0o222) and os.access(probe, os.W_OK | os.X_OK)


# ---- download ---------------------------------------------------------------------------
def download_file(url: str, target: str, md5: str | None, quiet: bool = True, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``target`` through a temporary file; check length and MD5; rename
    (raises :class:`DownloadError`; nothing is left behind on failure)."""
    name = os.path.basename(target)
    digest, received, expected_len = hashlib.md5(), 0, None
    with atomic_file(target, suffix=".part") as out:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http(s) only)
        except urllib.error.HTTPError as err:
            raise DownloadError(
                f"Expected {name} from {url}. Received: HTTP {err.code} {err.reason} "
                "— nothing was written"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            raise DownloadError(
                f"Expected {name} from {url}. Received: {getattr(err, 'reason', err)} "
                "— nothing was written"
            ) from err
        with response:
            length = response.headers.get("Content-Length")
            expected_len = int(length) if length and length.isdigit() else None
    
            def chunks():
                while True:
                    chunk = response.read(1 << 16)
                    if not chunk:
                        return
                    yield chunk

            try:
                for chunk in progress(chunks(), total=None if expected_len is None
                                      else -(-expected_len // (1 << 16)),
                                      desc=f"Downloading {name}", quiet=quiet):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
            except (OSError, ValueError, http.client.HTTPException) as err:  # cut short, reset, timeout
                raise DownloadError(
                    f"Expected {expected_len if expected_len is not None else 'all'} bytes of "
                    f"{name} from {url}. Received: {received} bytes before the transfer failed "
                    f"({type(err).__name__}: {err}) — the download was discarded"
                ) from err
        if expected_len is not None and received != expected_len:
            raise DownloadError(
                f"Expected {expected_len} bytes of {name} from {url}. Received: {received} bytes "
                "— the connection closed early; the download was discarded"
            )
        got = digest.hexdigest()
        if md5 is not None and got != md5.lower():
            raise DownloadError(
                f"Expected {name} with MD5 {md5}. Received: MD5 {got} ({received} bytes from {url}) "
                "— the download was discarded"
            )


def download_omniglot(root: str, subset: str = "all", base_url: str = OMNIGLOT_URL,
                      md5: Mapping[str, str | None] | None = None, quiet: bool = False) -> list[str]:
    """Download the archives of ``subset`` into ``root`` (skipping those already there).

    ``md5`` maps ``"images_background"``/``"images_evaluation"`` to the expected
    checksum (default :data:`OMNIGLOT_MD5`; a value of ``None`` skips the check
    for that archive). Returns the path of each subset's archive (or folder, when
    one was already there in another of the layouts :class:`Omniglot` reads).
    """
    subsets = _check_subset(subset)
    md5 = dict(OMNIGLOT_MD5 if md5 is None else md5)
    paths = []
    for s in subsets:
        name = f"images_{s}"
        target = os.path.join(root, name + ".zip")
        if _find_source(root, s) is None:
            if name not in md5:
                raise ValueError(f"Expected an MD5 for {name} in md5=. Received: keys {sorted(md5)}")
            url = base_url if base_url.endswith("/") else base_url + "/"
            download_file(url + name + ".zip", target, md5[name], quiet)
        paths.append(_find_source(root, s) or target)
    return paths


# ---- the dataset ------------------------------------------------------------------------
def _check_subset(subset) -> tuple[str, ...]:
    if subset not in OMNIGLOT_SUBSETS:
        raise ValueError(f"Expected subset in {OMNIGLOT_SUBSETS}. Received: subset={subset!r}")
    return ("background", "evaluation") if subset == "all" else (subset,)


def _candidates(root: str, subset: str) -> list[str]:
    name = f"images_{subset}"
    return [os.path.join(root, name + ".zip"), os.path.join(root, name),
            os.path.join(root, "omniglot-py", name + ".zip"), os.path.join(root, "omniglot-py", name)]


def _find_source(root: str, subset: str) -> str | None:
    for path in _candidates(root, subset):
        is_zip = path.endswith(".zip")
        if (is_zip and os.path.isfile(path)) or (not is_zip and os.path.isdir(path)):
            return path
    return None


class Omniglot(ArrayDataset):
    """Omniglot images with per-image metadata; an :class:`ArrayDataset` over characters.

    Parameters
    ----------
    root : folder holding the archives (see the module docstring for the layouts).
    subset : ``"background"`` (30 alphabets, 964 characters, 19,280 images),
        ``"evaluation"`` (20 alphabets, 659 characters, 13,180 images) or ``"all"``.
    image_size : side of the square images after the LANCZOS resize (105 = original).
    download : fetch missing archives from ``base_url`` and check ``md5``.
    cache, cache_dir : cache the decoded arrays (see the module docstring).
    quiet : no progress bar (there is none anyway when stderr is not a terminal).

    Attributes
    ----------
    images (= ``x``) : ``[n, S, S, 1]`` float32, strokes 1.0, background 0.0.
    character (= ``y``) : global character index 0..1622 (``IIII - 1``, the
        official order: background 0..963, evaluation 964..1622).
    alphabet : alphabet name per image; ``alphabet_index`` indexes ``alphabets``
        (the alphabets of this load, in character order).
    character_number : the ``NN`` of ``characterNN`` (1-based, within the alphabet).
    drawer : 1..20.  ``subset_of`` : ``"background"``/``"evaluation"`` per image.
    file : the entry's path inside its archive / folder.
    sources : the archives or folders that were read.
    """

    def __init__(self, root, subset: str = "background", image_size: int = 28, download: bool = False,
                 *, cache: bool = True, cache_dir=None, base_url: str = OMNIGLOT_URL,
                 md5: Mapping[str, str | None] | None = None, quiet: bool = False):
        subsets = _check_subset(subset)
        if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size <= 0:
            raise ValueError(f"Expected image_size a positive integer. Received: image_size={image_size!r}")
        if root is None:
            raise ValueError("Expected root, the folder holding the Omniglot archives. Received: root=None")
        root = os.fspath(root)
        self.root, self.subset, self.image_size = root, subset, int(image_size)
        if download:
            download_omniglot(root, subset, base_url=base_url, md5=md5, quiet=quiet)
        sources = []
        for s in subsets:
            path = _find_source(root, s)
            if path is None:
                looked = [p for s2 in subsets for p in _candidates(root, s2)]
                state = "does not exist" if not os.path.isdir(root) else "has none of them"
                raise FileNotFoundError(
                    f"Expected Omniglot ({subset}) under {root!r}; looked for: " + ", ".join(looked)
                    + f". Received: {root!r} {state}. Pass download=True (--download on the command line) to fetch the official "
                    f"archives from {base_url}"
                )
            sources.append(_Source(path, s))
        self.sources = tuple(src.path for src in sources)
        self._cache_files = ()
        plans = [self._plan(src, cache, cache_dir) for src in sources]
        sizes = [len(meta["drawer"]) for meta, _, _ in plans]
        images = np.empty((sum(sizes), self.image_size, self.image_size, 1), dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for (meta, hit, dirs), src, lo, hi in zip(plans, sources, offsets[:-1], offsets[1:]):
            out = images[lo:hi]
            if hit is not None and _read_cache_images(hit, out):
                self._cache_files += (hit,)
                continue
            src.decode_into(out, quiet)
            if cache:
                self._store(src, dirs, meta, out)
        cat = {k: np.concatenate([p[0][k] for p in plans]) for k in plans[0][0]}
        cat["images"] = images
        self.subset_of = np.repeat(np.array([src.subset for src in sources]), sizes)
        self.alphabet = cat["alphabet"]
        self.character_id = cat["character_id"]
        self.character_number = cat["character_number"]
        self.drawer = cat["drawer"]
        self.file = cat["entry"]
        # alphabets in order of their first character id
        names, first = np.unique(self.alphabet, return_index=True)
        self.alphabets = tuple(str(a) for a in names[np.argsort(first, kind="stable")])
        lookup = {a: i for i, a in enumerate(self.alphabets)}
        self.alphabet_index = np.array([lookup[a] for a in self.alphabet], dtype=np.int32)
        ids = self.character_id.astype(np.int64)
        _check_ids(ids, self.alphabet, self.character_number, self.sources)
        super().__init__(cat["images"], ids - 1, name=f"omniglot-{subset}-{self.image_size}px")

    @property
    def images(self) -> np.ndarray:
        return self.x

    @property
    def character(self) -> np.ndarray:
        return self.y

    def _plan(self, src: _Source, cache: bool, cache_dir):
        """``(metadata, cache file to read or None, cache folders)`` for one source."""
        if not cache:
            return src.metadata(), None, []
        name = _cache_name(src, self.image_size)
        if cache_dir is not None:
            dirs = [os.fspath(cache_dir)]
        else:
            dirs = [os.path.join(self.root, ".metabridge_cache"), _user_cache_dir()]
        key = src.key(self.image_size)
        for d in dirs:
            meta = _read_cache_meta(os.path.join(d, name), key, self.image_size)
            if meta is not None:
                return meta, os.path.join(d, name), dirs
        return src.metadata(), None, dirs

    def _store(self, src: _Source, dirs, meta: dict, images: np.ndarray) -> None:
        name, key = _cache_name(src, self.image_size), src.key(self.image_size)
        for d in dirs:
            if _writable(d):
                written = _write_cache(d, name, key, {"images": images, **meta})
                if written is not None:
                    self._cache_files += (written,)
                    return

    @property
    def cache_files(self) -> tuple:
        """The cache files read or written by this load."""
        return self._cache_files

    def num_characters(self) -> int:
        return self.num_classes

    def describe(self) -> dict:
        """What was loaded, for results to record."""
        return {"dataset": "omniglot", "subset": self.subset, "image_size": self.image_size,
                "resize": "PIL LANCZOS", "num_images": len(self), "num_characters": self.num_classes,
                "num_alphabets": len(self.alphabets), "sources": list(self.sources)}

    def __repr__(self) -> str:
        return (f"Omniglot(subset={self.subset!r}, image_size={self.image_size}, images={len(self)}, "
                f"characters={self.num_classes}, alphabets={len(self.alphabets)})")


def _check_ids(ids, alphabet, number, sources) -> None:
    """Each character folder carries one id; no two folders share one."""
    folders = np.char.add(np.char.add(alphabet, "/"), number.astype(str))
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    one_folder_per_id = bool(np.all(folders == folders[first][inverse.reshape(-1)]))
    if not one_folder_per_id or len(np.unique(folders)) != len(first):
        raise ValueError(
            "Expected one global character id (the IIII of IIII_DD.png) per character folder, "
            f"unique across {', '.join(sources)}. Received: ids shared between folders or mixed within one"
        )
    if ids.min() < 1:
        raise ValueError(f"Expected character ids >= 1. Received: {int(ids.min())}")
