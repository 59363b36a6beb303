"""One job on several GPUs: one process per GPU, gradients averaged by all-reduce (DDP's maths).

Rank 0 is the job process itself. It fills the caches first, then evaluates, saves, logs and
reports progress. The other ranks are spawned here; they only train their share of each step.
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
import logging
import os
import signal
import socket
import threading
import time

import torch

from animad.signals import die_with_parent

log = logging.getLogger("animad.train")


@dataclasses.dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batches: list) -> list:
        """This rank's micro-batches of one optimizer step (with their plan offsets)."""
        return [(offset, batch) for offset, batch in enumerate(batches) if offset % self.world == self.rank]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any: the ranks stop, or fail, at the same step."""
        return bool(self.sum([1.0 if flag else 0.0])[0]) if self.world > 1 else bool(flag)

    def sum_grads(self, params: list[torch.Tensor]) -> None:
        """Add up the gradients of every rank, in one flat buffer (a rank may have none this step)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
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
    # watchdog below (not the timeout) is what notices a rank that died.
    torch.distributed.init_process_group(backend, rank=rank, world_size=world, timeout=dt.timedelta(hours=6))
    return Group(rank, world)


def check_world(world: int) -> None:
    from animad.errors import UserError

    if world > 1 and torch.cuda.is_available() and torch.cuda.device_count() < world:
        raise UserError(f"animad.yaml: gpus: {world}, but only {torch.cuda.device_count()} CUDA GPU(s) are visible. "
                        "Lower gpus, or check CUDA_VISIBLE_DEVICES.")


def _worker(rank: int, world: int, port: int, arguments: dict) -> None:
    from animad.train.loop import run_training

    die_with_parent()
    # Stop requests reach rank 0, which passes them on at a step boundary; a worker must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    group = join(rank, world, port)
    try:
        run_training(**arguments, should_stop=lambda: False, on_progress=lambda progress: None, group=group)
    finally:
        torch.distributed.destroy_process_group()


def launch(world: int, arguments: dict, should_stop, on_progress) -> str:
    """Run run_training(**arguments) on `world` ranks; this process is rank 0. Returns its result."""
    import multiprocessing

    from animad.train.loop import run_training

    check_world(world)
    port = free_port()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    workers = [context.Process(target=_worker, args=(rank, world, port, arguments), daemon=True,
                               name=f"animad-rank{rank}") for rank in range(1, world)]
    for worker in workers:
        worker.start()
    done = threading.Event()
    watchdog = threading.Thread(target=_watch, args=(workers, done), daemon=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    group = join(0, world, port)
    watchdog.start()
    try:
        result = run_training(**arguments, should_stop=should_stop, on_progress=on_progress, group=group)
        for worker in workers:
            worker.join(timeout=120)
        return result
    finally:
        done.set()
        for worker in workers:  # after an error on rank 0 the others may be waiting in a collective
            if worker.is_alive():
                worker.kill()
                worker.join()
        torch.distributed.destroy_process_group()


def _watch(workers, done: threading.Event) -> None:
    """If a rank dies (an OOM, a crash), rank 0 could wait for it for hours inside a collective."""
    while not done.wait(2.0):
        dead = [w for w in workers if w.exitcode not in (None, 0)]
        if dead:
            time.sleep(30)  # the collective usually fails by itself first; give rank 0 the chance
            if done.is_set():
                return
            log.error("%s exited with code %s; stopping the job (its last saved state is kept)", dead[0].name,
                      dead[0].exitcode)
            os._exit(70)
