"""Bounded, symlink-safe reads and appends of the files a run owns.

Every read here opens the path without following a final symlink, checks it
is a regular file (no FIFO, device, directory or link to ``/dev/zero``),
checks its size against a cap *before* reading, and raises
:class:`FileFormatError` (a ``ValueError``) naming the file on any problem.

>>> data = read_bounded("run/config.json", 1 << 20, "a run record")      # doctest: +SKIP
>>> record = load_json_file("run/config.json", 1 << 20, "a run record")  # doctest: +SKIP
"""
from __future__ import annotations

import errno
import json
import os
import stat

#: Cap for small JSON files (config.json, checkpoint metadata, TOML experiment files).
MAX_JSON_BYTES = 1 << 20
#: Cap for one line of metrics.jsonl.
MAX_LINE_BYTES = 1 << 16
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class FileFormatError(ValueError):
    """A file that is missing, not a regular file, too large or not what it should be."""


def open_regular(path: str, what: str, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
    """``(fd, stat)`` of ``path`` opened without following a final symlink and
    without blocking on a FIFO; a :class:`FileFormatError` unless it is a regular file.

    >>> fd, st = open_regular("run/config.json", "a run record")   # doctest: +SKIP
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK)
    except FileNotFoundError:
        raise FileFormatError(f"Expected {what} at {path}. Received: it does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileFormatError(f"Expected {what} at {path}, a regular file. Received: a symbolic link "
                                  f"(metabridge does not follow links inside a run)") from None
        if exc.errno == errno.EISDIR:
            raise FileFormatError(f"Expected {what} at {path}, a regular file. Received: a directory") from None
        raise FileFormatError(f"Expected {what} at {path}, readable. Received: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise FileFormatError(f"Expected {what} at {path}, a regular file. Received: {kind}")
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return fd, st


def read_bounded(path: str, max_bytes: int, what: str, exact: int | None = None) -> bytes:
    """The bytes of regular file ``path``, refused before reading when larger than
    ``max_bytes`` (or, with ``exact``, of any other size).

    >>> read_bounded("run/checkpoints/step-00000010.json", 1 << 20, "checkpoint metadata")  # doctest: +SKIP
    """
    fd, st = open_regular(path, what)
    try:
        if exact is not None and st.st_size != exact:
            raise FileFormatError(f"Expected {what} at {path} of {exact} bytes. Received: {st.st_size} bytes "
                                  f"(truncated or replaced)")
        if st.st_size > max_bytes:
            raise FileFormatError(f"Expected {what} at {path} of at most {max_bytes} bytes. "
                                  f"Received: {st.st_size} bytes")
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) != st.st_size or os.read(fd, 1):
            raise FileFormatError(f"Expected {what} at {path} to keep its size while read. "
                                  f"Received: {st.st_size} bytes before, {len(data)} read")
        return data
    finally:
        os.close(fd)


def parse_json(data: bytes, path: str, what: str):
    """JSON from ``data`` read from ``path``; a :class:`FileFormatError` naming the file
    for bad UTF-8, bad JSON, or nesting too deep to parse."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"Expected valid JSON ({what}) in {path}. Received: {exc}") from None
    except RecursionError:
        raise FileFormatError(f"Expected valid JSON ({what}) in {path}. Received: nesting too deep to read") from None


def load_json_file(path: str, max_bytes: int, what: str):
    """The JSON value in regular file ``path`` of at most ``max_bytes`` bytes.

    >>> load_json_file("run/config.json", MAX_JSON_BYTES, "a run record")["metabridge_run"]  # doctest: +SKIP
    1
    """
    return parse_json(read_bounded(path, max_bytes, what), path, what)


def append_text(path: str, text: str, what: str) -> None:
    """Append ``text`` to regular file ``path`` (created if absent, never through a
    symlink) and fsync it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileFormatError(f"Expected {what} at {path}, a regular file. Received: a symbolic link "
                                  f"(metabridge does not write through links inside a run)") from None
        raise OSError(exc.errno, f"{exc.strerror} (writing {path})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileFormatError(f"Expected {what} at {path}, a regular file. Received: not a regular file")
        data = text.encode()
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror} (writing {path})") from None
    finally:
        os.close(fd)
