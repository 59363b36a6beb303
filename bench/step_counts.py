"""Count what the production train step does on the host: syncs, dispatched ops, Dynamo graphs.

Used by `python bench/train_bench.py --counts` and tests/test_step_counts.py (one copy of the
counting, so the benchmark and the test cannot drift apart).

What is counted, and why it stands for the GPU cost:
- a host sync is a dispatched op that needs a tensor's *value* on the host: `.item()`, `float(t)`,
  `bool(t)` in an `if`, `nonzero`, `masked_select`... On a GPU each one waits for the queue to
  drain. On the CPU the same ops run, so counting them here counts what the GPU would wait for
  (one caveat: a CPU-side scalar read, such as AdamW's per-parameter step counter, is a sync here
  but not on a GPU, where that counter stays on the host). The loop's deliberate reads go through
  loop.host_values, whose copy dispatches nothing on the CPU: each call is counted as one sync.
- a kernel launch is approximated by one dispatched aten op that is not a view (before any fusion:
  inductor fuses element-wise chains, so compiled on a GPU the real number is lower).
- graphs come from a counting Dynamo backend (each compiled graph, and each time one runs) and
  recompile-limit fallbacks from Dynamo's own warning; block calls from a wrapper around each
  compiled block, so graphs_per_block is graphs run per block call: 1 means no graph break and no
  eager fallback.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read a tensor's value (or a data-dependent size) on the host.
SYNC_OPS = frozenset({
    "aten._local_scalar_dense",  # .item(), float(t), int(t), bool(t) (is_nonzero lands here too)
    "aten.is_nonzero", "aten.item", "aten.equal", "aten.nonzero", "aten.masked_select", "aten._unique2",
    "aten.unique_dim", "aten.unique_consecutive", "aten.repeat_interleave",
})

BACKEND = "animad_counting"
STEP_TALLIES = ("step", "micro_batch", "text")  # what train_step runs (the text encoder inside a micro-batch)


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active, and the host syncs among them, per tally name."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.syncs: collections.Counter = collections.Counter()
        self.sync_kinds: collections.Counter = collections.Counter()
        self.tally = "other"

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        # Dynamo refuses to compile while a plain dispatch mode is active; with this the mode is off
        # while Dynamo traces and on again while the graphs run. The counting backend runs each graph
        # as plain FX code, so the ops inside the graphs are counted too (that is how dynamic=True's
        # float inputs read back with .item() showed up).
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if not func.is_view:  # views and aliases launch nothing
            self.ops[self.tally] += 1
        if name in SYNC_OPS:
            self.syncs[self.tally] += 1
            if self.tally in STEP_TALLIES:
                self.sync_kinds[name] += 1
        return func(*args, **(kwargs or {}))

    def host_read(self, original):
        """Wraps the loop's host_values: its copy to the host dispatches nothing on the CPU, but on a
        GPU it is a sync, so each call counts as one."""
        def read(*args, **kwargs):
            self.syncs[self.tally] += 1
            if self.tally in STEP_TALLIES:
                self.sync_kinds["loop.host_values"] += 1
            return original(*args, **kwargs)
        return read

    @contextlib.contextmanager
    def counting(self, tally: str):
        outer, self.tally = self.tally, tally
        try:
            yield
        finally:
            self.tally = outer


class GraphCounter:
    """A Dynamo backend that runs graphs eagerly and counts them: compiled, and run."""

    def __init__(self):
        self.compiled = 0
        self.runs = 0

    def __call__(self, graph_module, example_inputs):
        self.compiled += 1

        def run(*args):
            self.runs += 1
            return graph_module.forward(*args)

        return run


class FallbackLog(logging.Handler):
    """Dynamo's warning when a frame hits the recompile limit and runs eagerly from then on."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if "hit config." in message and "recompile_limit" in message:
            self.hits.append(message.splitlines()[0])


@contextlib.contextmanager
def patched(owner, name: str, wrapper, missing_ok: bool = False):
    if missing_ok and not hasattr(owner, name):  # (an older loop, measured for the "before" numbers)
        yield None
        return
    original = getattr(owner, name)
    setattr(owner, name, wrapper(original))
    try:
        yield original
    finally:
        setattr(owner, name, original)


def two_bucket_dataset(folder: Path, job: dict) -> Path:
    """8 images in two aspect buckets (64x64 and 128x64), so the step sees two token counts."""
    from animad.demo.synthetic import make_dataset

    make_dataset(folder, job=job, subsets={"square": 4})
    make_dataset(folder / "wide", count=4, size=(128, 64), seed=1)
    return folder


def counting_job(optimizer: str | None, compile_on: bool, epochs: int = 2, **overrides) -> dict:
    """The tiny job with production settings: checkpointing on, the default (or given) optimizer, eval."""
    from animad.demo.synthetic import tiny_job

    job = tiny_job(epochs=epochs, selection={"stop_at_floor": False},
                   precision={"mixed": "fp32", "compile": compile_on, "gradient_checkpointing": True},
                   data={"batch_size": 2, "grad_accum": 2, "max_bucket": 128, "min_bucket": 64}, **overrides)
    job["optimizer"] = {"type": optimizer} if optimizer else {}  # {} = the default optimizer and its lr
    return job


def train_counted(workdir: Path, models: dict, job: dict) -> tuple[OpCounter, dict]:
    """Train `job` on a two-bucket dataset with the counters on; returns the op counter and the counts."""
    from animad.anima import pipeline
    from animad.config.daemon import load_daemon_config
    from animad.demo.synthetic import write_daemon_config
    from animad.intake.check import check_folder
    from animad.intake.jobfiles import write_job_files
    from animad.layout import JobPaths
    from animad.train import loop
    from animad.train.run import train_job

    # The loop's function for one micro-batch's forward and backward (before the sync-free step
    # existed, only the forward was its own function: the counts then cover the forward only). Since
    # train_step calls the backward itself (issue 18), the backward is tallied with the micro-batch.
    MICRO_BATCH = "micro_batch_backward" if hasattr(loop, "micro_batch_backward") else "micro_batch_loss"
    backward_apart = not hasattr(loop, "micro_batch_backward")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = load_daemon_config(write_daemon_config(workdir / "animad.yaml", models))
    folder = two_bucket_dataset(workdir / "ds", job)
    result = check_folder(folder, daemon)
    assert result.ok, result.report()
    paths = JobPaths(workdir / "run")
    write_job_files(paths, result, dataset_dir=folder)

    counter, graphs, fallbacks = OpCounter(), GraphCounter(), FallbackLog()
    calls = collections.Counter()

    def count(tally):
        def wrapper(original):
            def counted(*args, **kwargs):
                calls[tally] += 1
                with counter.counting(tally):
                    return original(*args, **kwargs)
            return counted
        return wrapper

    def tallied(tally):  # counts the ops and syncs under `tally`, not the calls
        def wrapper(original):
            def counted(*args, **kwargs):
                with counter.counting(tally):
                    return original(*args, **kwargs)
            return counted
        return wrapper

    def count_block_calls(original):
        def compile_blocks(self, backend):
            original(self, backend)
            for block in self.dit.blocks:
                inner = block._compiled_call_impl

                def called(*args, _inner=inner, **kwargs):
                    calls["block"] += 1
                    return _inner(*args, **kwargs)

                block._compiled_call_impl = called
        return compile_blocks

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    from torch._dynamo.backends import registry

    # (Re)registered for each run, so the backend holds this run's counts.
    registry._COMPILER_FNS.pop(BACKEND, None)
    registry.register_backend(graphs, name=BACKEND)
    dynamo_log = logging.getLogger("torch._dynamo")
    dynamo_log.addHandler(fallbacks)
    environ = os.environ.get("ANIMAD_COMPILE_BACKEND")
    os.environ["ANIMAD_COMPILE_BACKEND"] = BACKEND
    try:
        with patched(loop, "train_step", count("step")), \
                patched(loop, MICRO_BATCH, count("micro_batch")), \
                patched(loop, "eval_velocity", count("eval"), missing_ok=True), \
                patched(loop, "evaluate", count("eval") if backward_apart else tallied("eval")), \
                patched(torch.autograd, "backward", tallied("micro_batch") if backward_apart else (lambda f: f)), \
                patched(loop, "embed_captions", count("text")), \
                patched(loop, "host_values", counter.host_read, missing_ok=True), \
                patched(pipeline.Anima, "compile_blocks", count_block_calls), counter:
            status = train_job(paths, daemon=daemon, should_stop=lambda: False, on_progress=lambda _: None)
    finally:
        dynamo_log.removeHandler(fallbacks)
        if environ is None:
            os.environ.pop("ANIMAD_COMPILE_BACKEND", None)
        else:
            os.environ["ANIMAD_COMPILE_BACKEND"] = environ
    assert status == "finished", status
    dynamo = torch._dynamo.utils.counters
    breaks = sum(dynamo["graph_break"].values())
    return counter, {"calls": dict(calls), "graphs_compiled": graphs.compiled, "graph_runs": graphs.runs,
                     "graph_breaks": breaks, "recompile_fallbacks": len(fallbacks.hits),
                     "fallback_messages": fallbacks.hits[:3], "unique_graphs": dynamo["stats"]["unique_graphs"]}


def step_counts(workdir: Path, models: dict | None = None, optimizer: str | None = None,
                network: str | None = None) -> dict:
    """The counts of the production step on the tiny model: two buckets, eval each epoch, compile on.

    Syncs and graphs are counted with compile on, as the loop compiles (with the counting
    backend); the op count (the launch proxy) comes from the same job run eagerly, so it does not
    depend on how a backend would fuse. eager_* syncs are the eager run's, for comparison.
    """
    from animad.anima.tiny import make_tiny_model_set

    workdir = Path(workdir)
    if models is None:
        models = make_tiny_model_set(workdir / "models", seed=0)
    kind = {"network": {"type": network}} if network else {}  # network.type: lora (default), lokr or loha
    compiled, counts = train_counted(workdir / "compiled", models, counting_job(optimizer, compile_on=True, **kind))
    eager, _ = train_counted(workdir / "eager", models, counting_job(optimizer, compile_on=False, **kind))
    calls = counts["calls"]
    steps, micro = calls["step"], calls["micro_batch"]

    def per_micro_batch(counter):  # the text encoder runs inside the micro-batch when captions change
        return round((counter.syncs["micro_batch"] + counter.syncs["text"]) / micro, 3)

    def per_step(counter):  # everything one train_step does, its micro-batches included
        return round((counter.syncs["step"] + counter.syncs["micro_batch"] + counter.syncs["text"]) / steps, 3)

    from animad.config.job import JobConfig

    return {
        "optimizer": optimizer or JobConfig().optimizer.type, "network": network or JobConfig().network.type,
        "optimizer_steps": steps, "micro_batches": micro, "eval_calls": calls.get("eval", 0),
        "syncs_per_micro_batch": per_micro_batch(compiled),
        "syncs_per_optimizer_step": per_step(compiled),
        "text_encoder_syncs_per_micro_batch": round(compiled.syncs["text"] / micro, 3),
        "text_encoder_syncs_per_optimizer_step": round(compiled.syncs["text"] / steps, 3),
        "eager_syncs_per_micro_batch": per_micro_batch(eager),
        "eager_syncs_per_optimizer_step": per_step(eager),
        "sync_ops_in_steps": dict(eager.sync_kinds),
        "graphs_per_block": round(counts["graph_runs"] / max(1, calls.get("block", 0)), 3),
        "block_calls": calls.get("block", 0), "graphs_compiled": counts["graphs_compiled"],
        "graph_breaks": counts["graph_breaks"], "recompile_fallbacks": counts["recompile_fallbacks"],
        "fallback_messages": counts["fallback_messages"],
        "kernel_launches_per_step": round(sum(eager.ops[t] for t in ("step", "micro_batch", "text")) / steps, 1),
        "kernel_launches_per_micro_batch": round((eager.ops["micro_batch"] + eager.ops["text"]) / micro, 1),
    }
