"""torch.distributed set-up under torchrun (NCCL on GPU, gloo on CPU), or a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Read torchrun's environment; initialise the process group once if world size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


# Gathers used inside a training step, where the method holds no DistInfo: they read the process
# group itself and are identities in a single process. Ranks may hold different row counts (a batch
# that lost unreadable images), so rows are padded to the longest for the collective and trimmed.

def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _row_counts(x: torch.Tensor) -> list[int]:
    count = torch.tensor([len(x)], device=x.device)
    counts = [torch.empty_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    return [int(c) for c in counts]


def _own_rows(counts: list[int]) -> slice:
    start = sum(counts[:dist.get_rank()])
    return slice(start, start + counts[dist.get_rank()])


def _gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def all_gather(x: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """Every rank's rows of `x` concatenated in rank order, without gradient, and this rank's
    rows in the result."""
    if world_size() == 1:
        return x.detach(), slice(0, len(x))
    counts = _row_counts(x)
    return _gather_rows(x.detach(), counts), _own_rows(counts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the gradient of its rows summed over every rank's
    loss: the rows are also other ranks' inputs (e.g. SimCLR's negatives). With DDP's mean over
    ranks this gives the gradient of the mean loss, as one process holding the whole batch would.
    (torch.distributed.nn.functional.all_gather does the same but is deprecated.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int], rows: slice) -> torch.Tensor:
        ctx.rows = rows
        return _gather_rows(x, counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad[ctx.rows], None, None


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """`all_gather` that keeps the autograd graph (see _GatherWithGrad for the gradient it carries)."""
    if world_size() == 1:
        return x, slice(0, len(x))
    counts = _row_counts(x)
    rows = _own_rows(counts)
    return _GatherWithGrad.apply(x, counts, rows), rows
