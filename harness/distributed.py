"""The world of one command: the processes `torchrun` started, or this process alone.

`torchrun --nproc_per_node K [--nnodes ...] -m harness run FILE` starts K processes per node and
describes them in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). The first kind
that runs joins them into one process group (`init_world`): NCCL when the ranks run on CUDA, gloo on
a CPU (or when FLOPs are only counted); each rank takes the GPU of its local rank. Everything else
reads the joined world through `current_world()`: rank 0 holds the output folder and writes tables,
plots and the manifest; how points are shared out is the sweep's business (`harness.pipeline`).
Without torchrun the world is this process alone and every collective here is a no-op.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from .errors import DeviceError, HarnessError
from .provenance import device_name

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""  # nccl or gloo; empty for a process alone
    devices: tuple[str, ...] = ()  # "host: device" of every rank, in rank order

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's part of `items`: every size-th item from its rank on. Every item belongs to
        exactly one rank (nothing padded, nothing dropped), and neighbours in `items` (say, N = 1, 2, 4
        of a profile sweep) go to different ranks, so cheap and costly items spread evenly."""
        return list(items[self.rank::self.size])

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def agree(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 alone (taking the output folder, say) and tell every rank how it went: when
        it fails, every rank stops with the same error, which only rank 0 prints. Returns `fn`'s value
        on rank 0, None elsewhere."""
        value, failure = None, None
        if self.is_main:
            try:
                value = fn()
            except Exception as error:  # every rank must hear of it, or the others wait for rank 0 forever
                if not self.distributed:
                    raise
                failure = error
        if self.distributed:
            heard = self.broadcast(None if failure is None else shared_error(failure))
            if failure is not None:
                raise failure
            if heard is not None:
                raise heard
        return value

    def describe(self) -> dict[str, Any]:
        """What the manifest records of the world."""
        return {"size": self.size, "backend": self.backend or "none (one process)",
                "devices": list(self.devices) or [f"{socket.gethostname()}: one process"]}


def shared_error(error: Exception) -> HarnessError:
    """`error` as the other ranks raise it: the same line, marked as printed already by rank 0."""
    copy = error if isinstance(error, HarnessError) else HarnessError(f"rank 0 failed: {type(error).__name__}: {error}")
    copy.every_rank = True
    return copy


_WORLD: World | None = None


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0")) if env_world_size() > 1 else 0


def joined() -> bool:
    return _WORLD is not None and _WORLD.distributed


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun on CUDA, `cuda` means the GPU of this process's local rank (one device per rank,
    so timings and memory stay one rank's own); an explicit index is kept."""
    if device.type != "cuda" or device.index is not None or env_world_size() <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise DeviceError(f"local rank {local} has no GPU of its own: this node has {torch.cuda.device_count()}; "
                          "start at most that many processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local)


def _uses_cuda(device: str) -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return device == "auto" or torch.device(device).type == "cuda"
    except RuntimeError:
        return False


def init_world(device: str = "auto") -> World:
    """Join the process group `torchrun` describes (once per process; later calls return it). `device`
    is where the experiment runs (`auto`, `cpu`, `cuda[:i]`, `meta`): CUDA ranks talk over NCCL, the
    others over gloo."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = env_world_size()
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = _uses_cuda(device)
    here = rank_device(torch.device("cuda")) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(here)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    backend = str(dist.get_backend())
    devices: list[Any] = [None] * size
    dist.all_gather_object(devices, f"{socket.gethostname()}: {here} ({device_name(here)})")
    _WORLD = World(rank, size, local, backend, tuple(devices))
    return _WORLD


def current_world() -> World:
    """The joined world (joined now on CUDA if available when nothing has joined it yet), or this process alone."""
    return _WORLD if _WORLD is not None else init_world()


def close_world() -> None:
    """Leave the process group (at the end of the command)."""
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = None
