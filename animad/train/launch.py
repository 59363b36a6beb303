"""Start one job on several ranks: spawn ranks 1..N-1, join them as rank 0, train, clean up.

A rank that dies (an OOM, a crash) would leave rank 0 waiting inside a collective for hours, so a
watchdog thread ends the job when one exits with an error. The maths of the ranks is train/ranks.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

import torch

from animad.signals import die_with_parent
from animad.train.loop import run_training
from animad.train.ranks import check_world, free_port, join

log = logging.getLogger("animad.train")


def launch(world: int, arguments: dict, should_stop, on_progress) -> str:
    """Run run_training(**arguments) on `world` ranks; this process is rank 0. Returns its result."""
    check_world(world)
    port = free_port()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    workers = [context.Process(target=worker, args=(rank, world, port, arguments), daemon=True,
                               name=f"animad-rank{rank}") for rank in range(1, world)]
    for process in workers:
        process.start()
    done = threading.Event()
    watchdog = threading.Thread(target=watch, args=(workers, done), daemon=True)
    share_cpu_threads(world)
    group = join(0, world, port)
    watchdog.start()
    try:
        result = run_training(**arguments, should_stop=should_stop, on_progress=on_progress, group=group)
        for process in workers:
            process.join(timeout=120)
        return result
    finally:
        done.set()
        for process in workers:  # after an error on rank 0 the others may be waiting in a collective
            if process.is_alive():
                process.kill()
                process.join()
        torch.distributed.destroy_process_group()


def worker(rank: int, world: int, port: int, arguments: dict) -> None:
    """A spawned rank: train this rank's share until rank 0 finishes or stops."""
    die_with_parent()
    # Stop requests reach rank 0, which passes them on at a step boundary; a worker must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    share_cpu_threads(world)
    group = join(rank, world, port)
    try:
        run_training(**arguments, should_stop=lambda: False, on_progress=lambda progress: None, group=group)
    finally:
        torch.distributed.destroy_process_group()


def share_cpu_threads(world: int) -> None:
    """CPU ranks (tests, no GPU) split the cores instead of each taking all of them."""
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))


def watch(workers, done: threading.Event) -> None:
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
