"""torch.distributed plumbing for motion pretraining: one process per device, launched by ``torchrun``.

Why a module of its own: the trainer should not care how it was launched.
:func:`init_from_env` reads the variables ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the
process group -- NCCL when CUDA is present, gloo on CPU -- or returns a
single-process context when the script was started plainly.  Everything else
here is a thin, typed wrapper over the collective calls the trainer needs, each
a no-op in a single process.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from avatar3d.errors import Avatar3DError

_ENV = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the torchrun / torch.distributed.run variables are set."""
    return all(k in os.environ for k in _ENV)


def current() -> DistContext:
    """The context of an already-initialised process group (single-process if there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    backend = str(dist.get_backend())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if backend == "nccl" else "cpu"
    return DistContext(dist.get_rank(), dist.get_world_size(), local, backend, device)


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> DistContext:
    """Join the process group torchrun describes, or return a single-process context.

    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``.
    """
    if not launched_by_torchrun():
        return DistContext()
    if dist.is_initialized():
        return current()
    if not dist.is_available():
        raise Avatar3DError("this PyTorch build has no torch.distributed: run without torchrun (one process)")
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise Avatar3DError(f"torchrun variables RANK / WORLD_SIZE / LOCAL_RANK are not integers ({exc})") from exc
    if world <= 1:
        return DistContext(rank=0, world_size=1, local_rank=local)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    device = "cpu"
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise Avatar3DError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: start at "
                                "most one process per GPU (torchrun --nproc_per_node=N)")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend, init_method="env://", world_size=world, rank=rank,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, backend, device)


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, ctx: DistContext) -> list[int]:
    """This rank's items of ``range(n)``: every ``world_size``-th, from ``rank`` (DistributedSampler's split)."""
    return list(range(ctx.rank, int(n), ctx.world_size))


def all_mean(value: float, ctx: DistContext) -> float:
    """Mean of ``value`` over all ranks (for logging the global loss)."""
    if not ctx.is_distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def gather(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` from every rank, in rank order, on every rank (picklable objects)."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (e.g. until rank 0 has written the model)."""
    if ctx.is_distributed:
        dist.barrier()


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in order: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


__all__ = ["DistContext", "launched_by_torchrun", "current", "init_from_env", "shutdown", "shard", "all_mean",
           "gather", "barrier", "parameter_digest"]
