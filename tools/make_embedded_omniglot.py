#!/usr/bin/env python
"""Build ``metabridge/data/embedded/omniglot28.npz``, the Omniglot copy shipped inside the package.

    python tools/make_embedded_omniglot.py                       # from ../shared/data/omniglot
    python tools/make_embedded_omniglot.py --archives DIR --out FILE
    python tools/make_embedded_omniglot.py --check               # rebuild in memory, compare

The images are decoded by the package's own loader,
``metabridge.data.omniglot.Omniglot(archives, subset="all", image_size=28)``
(Pillow LANCZOS resize of the 105x105 one-bit PNGs), so the embedded copy is
*exactly* what that loader yields: the resize produces 8-bit grey levels ``g``
and the loader returns ``1 - g / 255`` in float32, so storing ``255 - g`` as
``uint8`` loses nothing (the script asserts the round trip bit for bit).

Format (chosen by measurement, see ``FORMAT_NOTES``): a zip that ``numpy.load``
reads, with ``.npy`` members written by this script in a fixed order, DEFLATE
level 9, fixed dates (1980-01-01), fixed attributes and no extra fields, so the
same archives give the same bytes. The sha256 of the result is checked against
:data:`EXPECTED_SHA256` (exit status 1 when it differs, e.g. with a different
zlib build; ``--no-check`` to write anyway).

Members (n = 32,460 images in the official order: global character id, then drawer)::

    images            uint8 [n, 28, 28]   ink: 255 - Pillow's grey level (strokes high)
    alphabet_index    uint8 [n]           index into alphabet_names
    character_number  uint8 [n]           the NN of characterNN (1-based, within its alphabet)
    character_id      int16 [n]           the IIII of IIII_DD.png (1..1623)
    drawer            uint8 [n]           the DD (1..20)
    alphabet_names    <U.. [50]           in order of their first character id
    alphabet_subset   uint8 [50]          0 = images_background, 1 = images_evaluation
    format_version    int64 []            FORMAT_VERSION
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_ARCHIVES = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "omniglot"))
DEFAULT_OUT = os.path.join(REPO, "metabridge", "data", "embedded", "omniglot28.npz")

#: sha256 of the file this script writes from the official archives (with the zlib of CPython 3.x
#: on Linux; a zlib build that compresses differently gives other bytes but the same arrays).
EXPECTED_SHA256 = "dc6b8c5f412c6df4801511674705c317e1ded8ee9b8163a167481bd9972de37e"
FORMAT_VERSION = 1
IMAGE_SIZE = 28
SUBSETS = ("background", "evaluation")
_DATE = (1980, 1, 1, 0, 0, 0)

FORMAT_NOTES = """\
Measured on the project's CPU (all 32,460 images; load = decompress, not counting Python start):
  28x28 uint8 (chosen)     raw 25.4 MB; DEFLATE-9 6.47 MB, decompress 0.13 s; LZMA-9e 5.45 MB (0.44 s,
                           37 s to build); bz2-9 5.66 MB (0.83 s). Exact: equals the loader's float32.
  105x105 1-bit, packbits  raw 44.8 MB (per image) / 47.7 MB (per row); DEFLATE-9 5.03 / 4.22 MB,
                           LZMA-9e 3.03 / 2.66 MB, bz2-9 3.53 / 3.37 MB; decompress 0.2-1.2 s, but
                           every load must then resize 32,460 images with Pillow LANCZOS: +5.0 s,
                           and Pillow becomes a load-time dependency.
DEFLATE keeps the file readable by numpy.load and by any zip tool, and builds in seconds."""


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.require(array, requirements="C"), allow_pickle=False)
    return buf.getvalue()


def _zip_bytes(members: dict) -> bytes:
    """A zip of ``name.npy`` members, byte-reproducible: fixed dates, attributes, order, level."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in members.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, whatever the host
            info.external_attr = 0o100644 << 16
            zf.writestr(info, _npy_bytes(array), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()


def load_archives(archives: str, quiet: bool = True):
    """``Omniglot(archives, subset="all", image_size=28)`` decoded by the package's loader, no cache."""
    sys.path.insert(0, REPO)
    from metabridge.data.omniglot import Omniglot

    return Omniglot(archives, subset="all", image_size=IMAGE_SIZE, cache=False, quiet=quiet)


def arrays_from_dataset(ds, check_counts: bool = True) -> dict:
    """The members of the embedded file, from a loaded ``Omniglot(..., image_size=28)``."""
    x = ds.images[..., 0]
    grey = np.rint((np.float32(1.0) - x) * np.float32(255.0))
    if grey.min() < 0 or grey.max() > 255:
        raise AssertionError("decoded images outside [0, 1]")
    grey = grey.astype(np.uint8)
    # the loader computes 1 - g / 255 in float32: check that g reproduces it bit for bit
    lut = np.float32(1.0) - np.arange(256, dtype=np.float32) / np.float32(255.0)
    if not np.array_equal(lut[grey], x):
        raise AssertionError("the 8-bit grey levels do not reproduce the loader's float32 images")
    names = ds.alphabets  # in order of first character id, background alphabets first
    subset_of_alpha = []
    for a in names:
        where = np.unique(ds.subset_of[ds.alphabet == a])
        if len(where) != 1:
            raise AssertionError(f"alphabet {a!r} in both subsets")
        subset_of_alpha.append(SUBSETS.index(str(where[0])))
    counts = {s: len(np.unique(ds.character[ds.subset_of == s])) for s in SUBSETS}
    if check_counts and (counts != {"background": 964, "evaluation": 659} or len(ds) != 32460):
        raise AssertionError(f"expected 964 + 659 characters and 32,460 images, got {counts}, {len(ds)}")
    return {
        "images": (np.uint8(255) - grey),
        "alphabet_index": ds.alphabet_index.astype(np.uint8),
        "character_number": ds.character_number.astype(np.uint8),
        "character_id": ds.character_id.astype(np.int16),
        "drawer": ds.drawer.astype(np.uint8),
        "alphabet_names": np.array(names, dtype=str),
        "alphabet_subset": np.array(subset_of_alpha, dtype=np.uint8),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
    }


def encode(arrays: dict) -> bytes:
    """The bytes of the embedded file holding ``arrays`` (see :func:`arrays_from_dataset`)."""
    return _zip_bytes(arrays)


def build(archives: str = DEFAULT_ARCHIVES, quiet: bool = True) -> bytes:
    """The bytes of the embedded file, built from the archives in ``archives``."""
    return encode(arrays_from_dataset(load_archives(archives, quiet=quiet)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archives", default=DEFAULT_ARCHIVES,
                   help="folder with images_background.zip and images_evaluation.zip")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--check", action="store_true", help="build in memory and compare with --out; write nothing")
    p.add_argument("--no-check", action="store_true", help="write even when the sha256 differs")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data = build(args.archives, quiet=False)
    digest = hashlib.sha256(data).hexdigest()
    print(f"built {len(data):,} bytes in {time.perf_counter() - t0:.1f} s, sha256 {digest}")
    ok = digest == EXPECTED_SHA256
    print(f"expected sha256 {EXPECTED_SHA256}: {'match' if ok else 'MISMATCH'}")
    if args.check:
        if not os.path.exists(args.out):
            print(f"{args.out} does not exist")
            return 1
        with open(args.out, "rb") as fh:
            same = fh.read() == data
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'}")
        return 0 if (same and ok) else 1
    if not ok and not args.no_check:
        print("not written (pass --no-check to write anyway)")
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
