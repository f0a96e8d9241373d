"""TensorBoard event files without TensorBoard or a framework installed.

An event file is a TFRecord stream of ``Event`` protocol buffers; the three
message fields needed for scalars are encoded here by hand, so
``metabridge train --tensorboard`` works on the torch backend alone and on
``tensorflow-cpu`` (which ships without the ``tensorboard`` package).

>>> w = EventWriter("runs/a/tb")          # doctest: +SKIP
>>> w.scalar("train/loss", 0.42, step=10)  # doctest: +SKIP
>>> w.close()                             # doctest: +SKIP
"""
from __future__ import annotations

import os
import socket
import struct
import time


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses.

    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           tag: str | None = None, value: float | None = None) -> bytes:
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if tag is not None:
        summary_value = _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
        msg += _field_bytes(5, _field_bytes(1, summary_value))
    return msg


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(crc32c(length))) + data + struct.pack("<I", _masked(crc32c(data)))


class EventWriter:
    """Appends scalar summaries to a new event file in ``logdir`` (one per process, as TensorBoard expects)."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.metabridge"
        self.path = os.path.join(logdir, name)
        self._fh = open(self.path, "ab")
        self._fh.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))
        self._fh.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Log ``value`` under ``tag`` at ``step``."""
        self._fh.write(_record(_event(time.time(), int(step), tag=tag, value=float(value))))

    def flush(self) -> None:
        """Push buffered events to the file."""
        self._fh.flush()

    def close(self) -> None:
        self._fh.flush()
        self._fh.close()
