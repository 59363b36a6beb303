"""One job on several GPUs: one process per GPU, gradients averaged by all-reduce (DDP's maths).

Rank 0 is the job process itself. It fills the caches first, then evaluates, saves, logs and
reports progress. The other ranks (spawned by train/launch.py) only train their share of each step.
A step takes `grad_accum x world` batches of the epoch plan, and rank r takes every world-th one.
Each batch still seeds its own randomness from its index in the plan, so a run on 2 GPUs follows
the same batches, noise and dropout as a 1-GPU run with twice the gradient accumulation.

We average the LoRA gradients ourselves with one flat all-reduce per step instead of wrapping the
model in DistributedDataParallel. The LoRA is patched into the DiT's linears rather than being a
module the forward passes through, and its few MB of gradients make overlapping the
communication with the backward pass worth nothing.

With one process (the default) every method here is a no-op and nothing distributed is imported.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket

import torch

from animad.errors import UserError


@dataclasses.dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    # Where every collective's tensors live. NCCL only reduces tensors on the rank's own GPU ("No
    # backend type associated with device type cpu" otherwise); gloo only CPU ones. join() sets it.
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batches: list) -> list:
        """This rank's micro-batches of one optimizer step (with their plan offsets)."""
        return [(offset, batch) for offset, batch in enumerate(batches) if offset % self.world == self.rank]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum_tensor(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """The sum over ranks, on this rank's device (no host read: pass device tensors to stay sync-free)."""
        tensor = torch.as_tensor(values, dtype=torch.float64).to(self.device, copy=True)
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        return self.sum_tensor(values).tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any: the ranks stop, or fail, at the same step."""
        return bool(self.sum([1.0 if flag else 0.0])[0]) if self.world > 1 else bool(flag)

    def sum_grads(self, params: list[torch.Tensor]) -> None:
        """Add up the gradients of every rank, in one flat buffer (a rank may have none this step)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]).to(self.device)
        torch.distributed.all_reduce(flat)
        for param, grad, chunk in zip(params, grads, flat.split([g.numel() for g in grads])):
            param.grad = chunk.view_as(grad).to(grad.dtype)


SINGLE = Group()


def rank_device(rank: int) -> torch.device | None:
    """cuda:<rank> when training on GPUs; None (keep the configured device) otherwise."""
    return torch.device("cuda", rank) if torch.cuda.is_available() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # the rendezvous listens on loopback only
        return s.getsockname()[1]


def join(rank: int, world: int, port: int) -> Group:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    # Rank 0 may cache a large dataset or evaluate while the others wait: a long timeout, and the
    # launcher's watchdog (train/launch.py), not the timeout, is what notices a rank that died.
    torch.distributed.init_process_group(backend, rank=rank, world_size=world, timeout=dt.timedelta(hours=6))
    return Group(rank, world, torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu"))


def check_world(world: int) -> None:
    if world > 1 and torch.cuda.is_available() and torch.cuda.device_count() < world:
        raise UserError(f"animad.yaml: gpus: {world}, but only {torch.cuda.device_count()} CUDA GPU(s) are visible. "
                        "Lower gpus, or check CUDA_VISIBLE_DEVICES.")
