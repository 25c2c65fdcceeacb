"""This process's place in a torchrun job: sharding batches, all-reducing metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from classlab.augment import make_generator


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch of indices."""
        return idx.tensor_split(self.world)[self.rank] if self.world > 1 else idx

    def rank_generator(self, gen: torch.Generator) -> torch.Generator:
        """The generator for this rank's augmentation draws. Every rank holds the same
        ``gen`` (so all draw the same permutation); augmenting from it would give the k-th
        image of every rank's shard the same crop, flip and cutout. Under torchrun: a new
        generator seeded from one draw of ``gen`` plus the rank; otherwise ``gen`` itself, so
        single-process runs keep their random stream."""
        if self.world == 1:
            return gen
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        return make_generator(seed + self.rank, gen.device)

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """All-reduce (sum) a few scalars across ranks; identity when not distributed."""
        if self.world == 1:
            return list(values)
        t = torch.stack([v.double().reshape(()) for v in values])
        torch.distributed.all_reduce(t)
        return list(t.unbind())


def init_distributed(device_name: str) -> tuple[Dist, torch.device | None]:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK.

    Returns the Dist and, on CUDA, the device of this rank (one GPU per process).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    device = None
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return Dist(rank, world, local), device
