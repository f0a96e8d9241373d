"""Data-parallel collectives for the PyTorch backend: ``torch.distributed``.

Mirrors ``backends/tensorflow/distributed.py``. The process group is
torch's own (gloo on CPU, NCCL when the configured device is a GPU),
initialised from the ``env://`` variables that ``torchrun`` and
``metabridge train --workers N`` set (``MASTER_ADDR``, ``MASTER_PORT``,
``RANK``, ``WORLD_SIZE``). Tensors travel as one flat buffer per call.
"""
from __future__ import annotations

import atexit
import datetime

import torch
import torch.distributed as dist

from metabridge import config


class Collective:
    """One worker's handle on the process group.

    >>> group = Collective(rank=0, world=2, timeout_s=300)     # doctest: +SKIP
    >>> group.all_reduce_sum([torch.ones(3)])                 # doctest: +SKIP
    [tensor([2., 2., 2.])]
    """

    def __init__(self, rank: int, world: int, timeout_s: float):
        if not dist.is_available():
            raise RuntimeError("Expected a torch build with torch.distributed. Received: one without it")
        engine = "gloo" if config.get_device() == "cpu" else "nccl"
        if not dist.is_initialized():
            dist.init_process_group(engine, init_method="env://", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
            atexit.register(_leave)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.engine = f"torch.distributed ({dist.get_backend()})"

    def all_reduce_sum(self, tensors: list) -> list:
        """Element-wise sums over all workers of ``tensors`` (one dtype)."""
        flat = _flat(tensors)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return _unflat(flat, tensors)

    def broadcast(self, tensors: list, root: int = 0) -> list:
        """Worker ``root``'s ``tensors`` on every worker (shapes and dtype must agree)."""
        flat = _flat(tensors)
        dist.broadcast(flat, src=root)
        return _unflat(flat, tensors)

    def close(self) -> None:
        """Nothing to release: the group lives as long as the process (the next
        training in this process joins the same group; it is left at exit)."""


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _flat(tensors: list) -> torch.Tensor:
    return torch.cat([torch.as_tensor(t).detach().reshape(-1) for t in tensors]).contiguous()


def _unflat(flat: torch.Tensor, like: list) -> list:
    out, at = [], 0
    for t in like:
        shape = tuple(torch.as_tensor(t).shape)
        n = int(torch.as_tensor(t).numel())
        # a copy, not a view: kernels take other (SIMD) paths on unaligned views, changing rounding
        out.append(flat[at:at + n].reshape(shape).clone())
        at += n
    return out
