"""One writer per run directory: an exclusive OS file lock.

``train`` and ``resume`` hold ``RUN_DIR/.metabridge-lock`` locked with
``fcntl.flock`` while they write. A second writer is refused at once, naming
the holder's pid and host (recorded in the lock file). The operating system
releases the lock when its process dies, so a lock left by ``kill -9`` never
blocks the next ``resume``. The lock file itself stays; it is not a sign of a
running process.

>>> with RunLock("runs/a"):     # doctest: +SKIP
...     ...                     # only this process writes runs/a here
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import time

LOCK_NAME = ".metabridge-lock"


class RunLockedError(OSError):
    """Another process holds the run directory's lock."""


class RunLock:
    """The exclusive lock of run directory ``path`` (created if needed).

    >>> lock = RunLock("runs/a").acquire()    # doctest: +SKIP
    >>> lock.release()                        # doctest: +SKIP
    """

    def __init__(self, path: str):
        self.path = path
        self.file = os.path.join(path, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock now or raise :class:`RunLockedError` naming the holder."""
        import fcntl

        os.makedirs(self.path, exist_ok=True)
        try:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValueError(f"Expected a lock file at {self.file}. Received: a symbolic link") from None
            raise OSError(exc.errno, f"{exc.strerror} (opening the lock file {self.file})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"Expected a lock file at {self.file}. Received: not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise RunLockedError(
                    errno.EBUSY, f"Expected no other process writing the run {self.path} (one writer at a time). "
                                 f"Received: {self.file} is held by {holder}") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the next writer in (closing the file releases the OS lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process (pid not yet recorded)"
