"""Data parallelism over torch.distributed: process group, rank info, reductions.

    torchrun --nproc_per_node=N -m moh.train [--config FILE] [--out DIR] [key=value ...]
    moh train --nproc N ...                      (launches the same through torch.distributed.run)

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); with
no such environment (or WORLD_SIZE=1) it returns a 1-rank `DistInfo` and starts nothing, so
the training loop has one code path. Backend: `nccl` when the device is CUDA, `gloo` on CPU.
Every collective carries the process group's timeout (`dist_timeout` seconds): a rank that
dies or hangs makes the others raise instead of waiting forever.

How a step stays exact across world sizes (docs/distributed.md):
- `data.make_batches(rank=, world_size=)` gives rank r a disjoint contiguous slice of every
  GLOBAL batch (the global batch size is the config's, whatever N is);
- every loss is a function of token SUMS (LM loss sum, token counts, per-head f_i / P_i sums,
  z, complexity and head-count sums). Those sums are all-reduced with the autograd-aware
  `torch.distributed.nn.functional.all_reduce`, so each rank computes the job's loss, and
  its backward sums the ranks' upstream gradients: the local gradient is W x (this rank's
  share of the global gradient). DistributedDataParallel then AVERAGES over the W ranks,
  which leaves exactly the global gradient. No loss scaling, no custom comm hook.
- gradient norms, clipping and the finite check run on the synchronised gradients, so they
  are the same number on every rank (no rank can skip a step the others take).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from . import data
from .config import DEVICES



class DistError(RuntimeError):
    """A distributed setup problem (bad device, world size that does not fit the config)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" / "nccl"; None when not distributed
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup() initialised the process group (so teardown() is ours)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:LOCAL_RANK when CUDA is available, else cpu; "cuda" without CUDA fails."""
    if device not in DEVICES:
        raise DistError(f"device: must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DistError("device: cuda requested but torch.cuda.is_available() is False")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise DistError(f"device: local rank {local_rank} has no GPU ({n} visible); use --nproc_per_node <= {n}")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
               "timed out", "Timeout", "NCCL communicator was aborted", "DistNetworkError")


def peer_failure(e: BaseException) -> str | None:
    """A one-line explanation when `e` is a collective that failed because another rank died,
    hung past `dist_timeout` or could not be reached; None for anything else (a real bug)."""
    if env_world_size() <= 1:
        return None
    text = str(e).strip()
    if not (isinstance(e, dist.DistError) or any(s in text for s in _PEER_SIGNS)):
        return None
    first = text.splitlines()[0] if text else type(e).__name__
    first = first.split("] ", 1)[-1] if first.startswith("[") else first  # drop the C++ source path
    return (f"rank {env_rank()}: distributed error: another rank crashed, was killed or did not answer "
            f"within dist_timeout ({first[:300]}); exiting")


def setup(device: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Join the process group torchrun described in the environment (no-op for 1 rank).

    Already-initialised groups (a caller that set one up itself) are used as they are.
    """
    world = dist.get_world_size() if dist.is_initialized() else env_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        kw: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if dev.type == "cuda":
            kw["device_id"] = dev  # eager NCCL init: a bad GPU fails here, not at the first step
        dist.init_process_group(**kw)
    backend = dist.get_backend()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    backend=str(backend), device=dev, owns_group=owns)


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around `model` when distributed (else `model` itself).

    Its forward is the model's; its backward AVERAGES gradients over ranks (bucketed, overlapped
    with the backward pass). Construction broadcasts rank 0's parameters, so every rank starts
    from the same weights whatever its RNG did.
    """
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=info.device.index if ids else None)


def teardown() -> None:
    """Leave the process group (idempotent; safe after a failed collective)."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - a peer already gone; nothing left to release
            pass


def barrier(info: DistInfo) -> None:
    if info.distributed:
        # gloo barrier is a collective with the group timeout; nccl needs the device
        dist.barrier(device_ids=[info.device.index] if info.device.type == "cuda" else None)


# --- reductions --------------------------------------------------------------------------------


def sum_autograd(t: torch.Tensor) -> torch.Tensor:
    """All-reduce SUM that autograd differentiates (backward: all-reduce SUM of the grads).

    Identity when not distributed. See the module docstring for why the gradient that DDP
    then averages is exactly the global one.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    return _SumAllReduce.apply(t)


class _SumAllReduce(torch.autograd.Function):
    """y = sum over ranks of x; dL/dx = sum over ranks of dL/dy (what
    torch.distributed.nn.functional.all_reduce does; that one is deprecated in torch 2.13)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = g.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def sum_(t: torch.Tensor) -> torch.Tensor:
    """All-reduce SUM of a tensor without gradient (in place; returns it)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (all ranks receive the list)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_columns(t: torch.Tensor) -> torch.Tensor:
    """(R, n_rank) on every rank -> (R, sum of n) on every rank, columns in rank order.

    Ranks may hold different numbers of columns (tokens): the sizes are gathered first and
    every rank's block is padded to the largest for the all_gather. Two collectives; the
    identity when not distributed. Used on logging steps only (moh/alignment.py).
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    n = dist.get_world_size()
    size = torch.tensor([t.shape[1]], dtype=torch.long, device=t.device)
    sizes = [torch.empty_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = t.new_zeros(t.shape[0], max(counts))
    padded[:, : t.shape[1]] = t
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:, :c] for p, c in zip(parts, counts)], dim=1)


def shard(items: list, info: DistInfo) -> list:
    """This rank's contiguous slice of `items` (data.shard; sizes differ by at most one)."""
    return data.shard(items, info.rank, info.world_size)
