"""Building meta-batches on a background thread: :class:`Prefetcher`.

Episodes are pure functions of ``(seed, index)``, so batches built ahead of
time on another thread are exactly the batches the caller would have built.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable

class Prefetcher:
    """An iterator over ``make(step)`` for ``step`` in ``steps``, computed on a daemon thread.

    The thread holds no reference to the iterator, so an iterator dropped
    without ``close()`` stops its thread when it is garbage-collected.
    """

    def __init__(self, make, steps: Iterable, buffer: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=buffer)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=_prefetch_worker,
                                        args=(make, iter(steps), self._queue, self._stop),
                                        name="metabridge-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        ok, item = self._queue.get()
        if ok and item is _DONE:
            self.close()
            raise StopIteration
        if not ok:
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the thread (batches built ahead are dropped)."""
        self._finished = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


_DONE = object()


def _prefetch_worker(make, steps, out: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for step in steps:
            if stop.is_set() or not put((True, make(step))):
                return
    except BaseException as err:  # handed to the consumer
        put((False, err))
        return
    put((True, _DONE))
