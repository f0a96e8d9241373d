"""Atomic file writes: nothing a reader sees is ever half-written.

Data goes to a temporary file in the target's folder, is flushed and fsynced,
then renamed over the target (``os.replace``, atomic on POSIX and Windows). On
any error the temporary file is removed and the target is left as it was; an
``OSError`` (a full disk, say) names the target file. A symlink at the target is
replaced, never followed.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` only when the block succeeds.

    Raising inside the block (e.g. a failed checksum) discards everything.

    >>> with atomic_file("out.npz") as fh:      # doctest: +SKIP
    ...     np.savez(fh, a=np.zeros(3))
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        _fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if path in str(exc) or exc.errno is None:
            raise
        raise OSError(exc.errno, f"{exc.strerror} (writing {path})") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)
