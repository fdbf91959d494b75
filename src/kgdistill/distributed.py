"""torch.distributed helpers (launch with ``torchrun --nproc_per_node N -m kgdistill train ...``).

Each rank holds a slice of the global batch; query and tail vectors are all-gathered *with gradients* so every rank
scores its queries against the whole global batch's tails, as one process would.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def active() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when alone)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 when alone)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one that writes files."""
    return rank() == 0


def init_from_env() -> None:
    """Join the process group that torchrun describes in the environment; a no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order; gradients flow back to each rank's own slice."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_array(x: np.ndarray) -> np.ndarray:
    """Concatenate an integer array from every rank in rank order (no gradients)."""
    tensor = torch.as_tensor(x, dtype=torch.long)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts).numpy()


def barrier() -> None:
    """Wait for every rank; a no-op for a single process."""
    if active():
        dist.barrier()
