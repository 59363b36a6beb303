"""The training loop: flat, top to bottom, in the order things happen.

    load models -> fill caches -> attach LoRA -> (resume) -> epochs of steps -> eval + save each epoch

Every micro-batch seeds its own randomness from (seed, epoch, batch index), and the epoch order is a
pure function of (seed, epoch). A resumed run therefore replays exactly what an uninterrupted run
would have done, and epoch/step counters come from the saved state, never from counting launches.

run_training reads top to bottom. Its setup helpers return plain objects (Caches, Sizes, Parts),
gathered in a Run that never changes inside the loop; all the loop's state is one Progress record,
passed explicitly to whatever steps, saves or reports.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import math
import os
import random
import time
import uuid
from typing import Callable

import torch

from animad.anima.files import ModelFiles
from animad.anima.pipeline import Anima
from animad.anima.text import TextEmbedding
from animad.config.daemon import resolve_path
from animad.config.job import parse_job_reference
from animad.errors import UserError
from animad.fsutil import remove_stale_temp_files
from animad.intake.dataset import Dataset
from animad.layout import JobPaths
from animad.train import checkpoint
from animad.train.batches import epoch_plan, item_buckets, plan_length
from animad.train.caches import (LatentEntry, TensorCache, cache_latents, cache_texts, dir_fingerprint,
                                 model_fingerprint)
from animad.train.captions import augment_caption, is_dynamic
from animad.train.evaluation import EvalSet, build_eval_set, evaluate
from animad.train.floor import floor_reached
from animad.train.flow import flow_loss, input_perturbation, noisy, sample_sigmas
from animad.train.networks.network import Network, build_network, read_network_file
from animad.train.optim import (Cooldown, build_optimizer, build_scheduler, effective_lr, follow_cooldown,
                                schedule_kind, warmup_steps)
from animad.train.precision import Precision, resolve_precision
from animad.train.ranks import SINGLE, Group, rank_device
from animad.train.tracking import Tracker
from animad.train.vram import VramPlan, device_budget, plan_for_job

log = logging.getLogger("animad.train")


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclasses.dataclass
class Progress:
    """Where the run stands: the whole loop state, saved as is in the resume state."""

    epoch: int = 1
    batch_index: int = 0  # the next batch of this epoch's plan
    global_step: int = 0  # optimizer steps so far, over every launch
    loss_sum: float = 0.0  # this epoch's step losses so far, for its average
    loss_count: int = 0
    started: str = dataclasses.field(default_factory=now_iso)  # when the job first started training
    session: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    # The cooldown, once planned (saved, so a resume follows the same LR): the floor was confirmed
    # after epoch floor_confirmed (None if the cooldown was planned to end at max_epochs instead);
    # epochs cooldown_after + 1 .. cooldown_after + cooldown_epochs cool the LR from cooldown_start_step
    # to 0 over cooldown_steps steps.
    floor_confirmed: int | None = None
    cooldown_after: int | None = None
    cooldown_epochs: int = 0
    cooldown_start_step: int = 0
    cooldown_steps: int = 0
    # Images per forward once an out-of-memory error split the batches (None: the whole batch).
    # Saved: a resumed run on the same card would only run out of memory again.
    micro_batch: int | None = None
    # This epoch's training time so far over every launch (saved, so an epoch resumed mid-way is
    # timed whole: its eval share and its record's seconds stay true).
    epoch_seconds: float = 0.0

    def next_epoch(self) -> None:
        self.epoch, self.batch_index, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0
        self.epoch_seconds = 0.0

    def cooldown(self) -> Cooldown | None:
        return Cooldown(self.cooldown_start_step, self.cooldown_steps) if self.cooldown_after is not None else None

    def cooling(self, epoch: int) -> bool:
        """Whether `epoch` is (or was) trained in the cooldown."""
        return self.cooldown_after is not None and epoch > self.cooldown_after

    def end_epoch(self, sizes: Sizes) -> int:
        """The last epoch this run will train, as far as is known now."""
        if self.cooldown_after is not None:
            return min(sizes.max_epochs, self.cooldown_after + self.cooldown_epochs)
        return sizes.max_epochs


@dataclasses.dataclass(frozen=True)
class Hashes:
    """sha256 of the model files and tokenizers: cache keys, resume safety and the LoRA metadata."""

    dit: str
    text_encoder: str
    vae: str
    tokenizers: str


@dataclasses.dataclass(frozen=True)
class Caches:
    buckets: list[tuple[int, int]]  # each item's (width, height)
    latents: list[LatentEntry]
    texts: dict[str, TextEmbedding]  # caption -> embedding
    live_text: bool  # the text encoder stays loaded and runs in the loop (captions change, or it trains)


@dataclasses.dataclass(frozen=True)
class Sizes:
    batches_per_epoch: int
    batches_per_step: int  # one optimizer step consumes this many batches of the plan (grad_accum x world)
    steps_per_epoch: int
    max_epochs: int
    max_steps: int | None
    total_steps: int  # what the LR schedule spans


@dataclasses.dataclass(frozen=True)
class Parts:
    network: Network
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # disabled (every call passes through) unless fp16
    params: list[torch.Tensor]  # the trainable LoRA parameters


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything fixed for one launch of the loop; what changes is the Progress next to it."""

    paths: JobPaths
    config: object
    files: ModelFiles
    dataset: Dataset
    group: Group
    precision: Precision
    anima: Anima
    hashes: Hashes
    fingerprint: str
    caches: Caches
    sizes: Sizes
    parts: Parts
    eval_set: EvalSet
    tracker: Tracker | NoTracker
    should_stop: Callable[[], bool]
    on_progress: Callable[[dict], None]


def run_training(paths: JobPaths, config, files: ModelFiles, dataset, *, cache_dir, should_stop,
                 on_progress, group: Group = SINGLE) -> str:
    """Train or resume; returns "finished" or "paused" (state saved at a step boundary).

    With several ranks (train/launch.py) only rank 0 writes files, logs and reports.
    """
    precision = resolve_precision(config, rank_device(group.rank) if group.world > 1 else None)
    state = checkpoint.load_resume_state(paths.resume_state)
    reopened = False
    if state and state.get("finished"):
        # A finished run trains on when its limits were raised since (max_epochs, max_steps); the
        # message says which way it went and what to change otherwise.
        reopened, message = reopen_finished(paths, config, state)
        log.info("%s", message)
        if not reopened:
            return "finished"
    refuse_other_world(paths, state, group)

    # 1) Fingerprints, then the caches. Rank 0 hashes and caches first; the other ranks then find
    #    everything in the cache.
    on_progress({"phase": "loading"})
    if not group.is_main:
        group.barrier()
    hashes = hash_models(files, cache_dir)
    fingerprint = run_fingerprint(config, dataset, hashes.dit)
    refuse_other_run(paths, state, fingerprint)
    anima = Anima(files, precision.device, precision.weight_dtype)
    caches = fill_caches(anima, dataset, config, hashes, TensorCache(cache_dir), on_progress)
    if group.is_main:
        group.barrier()
    if precision.device.type == "cuda":
        torch.cuda.empty_cache()

    # 2) The DiT and the LoRA network. Base weights are frozen in the training dtype; LoRA stays fp32.
    sizes = plan_sizes(config, dataset, caches.buckets, group.world)
    parts = build_parts(paths, config, anima, precision, sizes)
    eval_set = build_eval_set(dataset, caches.latents, config.eval, config.timesteps, config.seed,
                              dataset.samples_per_epoch())
    log.info("%s: %d modules, %.2fM parameters; %d steps/epoch, %d epochs max; eval on %d images x %d sigmas%s",
             parts.network.kind.title, len(parts.network.loras), sum(p.numel() for p in parts.params) / 1e6, sizes.steps_per_epoch,
             sizes.max_epochs, len(eval_set.items), len(eval_set.sigmas),
             f"; {group.world} GPUs" if group.world > 1 else "")

    # 3) Resume: every counter comes from the state, so any number of resumes keeps them true.
    progress = resume(parts, state, sizes, config) if state else Progress()
    if group.is_main:
        for directory in (paths.epochs_dir, paths.state_dir, paths.root):
            remove_stale_temp_files(directory)  # our own half-written files from a kill mid-save
    tracker = Tracker(paths.tensorboard, paths.epochs_log, progress.global_step, progress.epoch - 1) \
        if group.is_main else NoTracker()
    run = Run(paths, config, files, dataset, group, precision, anima, hashes, fingerprint, caches, sizes, parts,
              eval_set, tracker, should_stop, on_progress)
    if state:
        replan_schedule(run, progress, reopened)
    if reopened and group.is_main:
        (paths.root / "finished.txt").unlink(missing_ok=True)  # ours, and no longer true; written again at the end

    # 4) The loop.
    try:
        reason = train_epochs(run, progress)
    finally:
        tracker.close()
    if reason is None:
        return "paused"
    log.info("training finished: %s", reason)
    if group.is_main:
        (paths.root / "finished.txt").write_text(reason + "\n")
    return "finished"


def train_epochs(run: Run, progress: Progress) -> str | None:
    """Epochs of optimizer steps; after each, rank 0 evaluates and saves, then the resume state is saved.

    Returns why training finished, or None if a stop request paused it (the state is saved).
    """
    selection, group = run.config.selection, run.group
    run.parts.network.train()
    pace = Pace()
    reason = finish_reason(progress, run.sizes)
    if reason:  # the run ended just before a state saying so was written
        save_state(run, progress, finished=True)
    while reason is None:
        epoch_start = time.perf_counter()
        if not train_epoch(run, progress, pace):
            return None
        if group.is_main:
            end_epoch(run, progress, time.perf_counter() - epoch_start)
        # Once cooling, the end is fixed: the floor is not asked again.
        watching = selection.stop_at_floor and progress.cooldown_after is None
        floor = group.is_main and watching and floor_reached(run.tracker.records, selection)
        if group.any(floor):  # also where the other ranks wait for rank 0's eval and save
            progress.floor_confirmed = progress.epoch
        if watching:  # every rank plans the same cooldown from the same shared facts
            reason = plan_cooldown(run, progress)
        progress.next_epoch()
        reason = reason or finish_reason(progress, run.sizes)
        save_state(run, progress, finished=reason is not None)
        pace.last_save = time.monotonic()
    return reason


# -- setup ---------------------------------------------------------------------------------------

def run_fingerprint(config, dataset, base_hash: str) -> str:
    """What a resume state must agree with: the model, the data and every shape-defining setting."""
    net = config.network
    parts = [base_hash, config.seed, net.dim, net.alpha, net.targets, net.blocks, net.include, net.exclude,
             net.train_llm_adapter, net.train_text_encoder, net.text_encoder_dim, config.optimizer.type,
             config.data.batch_size, config.data.grad_accum, dataset.samples_per_epoch(),
             [(i.rel, i.sha256, i.caption) for i in dataset.items]]
    if net.type != "lora":  # the kind shapes the tensors too (added only then: LoRA states made before still resume)
        parts += [net.type, net.factor]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def refuse_other_world(paths: JobPaths, state: dict | None, group: Group) -> None:
    if state and state.get("world", 1) != group.world:
        raise UserError(f"{paths.resume_state}: this job was started on {state.get('world', 1)} GPU(s) and would "
                        f"resume on {group.world}. Set gpus: {state.get('world', 1)} in animad.yaml to resume it "
                        "(the schedule and step counts depend on it), or start a new job.")


def refuse_other_run(paths: JobPaths, state: dict | None, fingerprint: str) -> None:
    if state and state.get("fingerprint") != fingerprint:
        raise UserError(f"{paths.resume_state}: the saved state belongs to a different model, dataset or network "
                        "setup than this job now has. Start a new job (or move the state/ folder away to start "
                        "this one over).")


def hash_models(files: ModelFiles, cache_dir) -> Hashes:
    tokenizers = hashlib.sha256((dir_fingerprint(files.qwen_tokenizer) + dir_fingerprint(
        files.t5_tokenizer)).encode()).hexdigest()
    return Hashes(model_fingerprint(files.dit, cache_dir), model_fingerprint(files.text_encoder, cache_dir),
                  model_fingerprint(files.vae, cache_dir), tokenizers)


def fill_caches(anima: Anima, dataset, config, hashes: Hashes, cache: TensorCache, on_progress) -> Caches:
    """Latents and caption embeddings, from the cache where possible.

    The VAE is loaded only for images not cached yet, and dropped right after; the text encoder
    stays loaded only if it runs in the loop.
    """
    on_progress({"phase": "caching"})
    buckets = item_buckets(dataset, config.data)
    t0 = time.perf_counter()
    latents = cache_latents(dataset, buckets, anima.load_vae, hashes.vae, cache,
                            on_item=lambda done, total: on_progress({"phase": "caching", "done": done,
                                                                     "total": total}))
    anima.unload_vae()
    live_text = any(is_dynamic(s) for s in dataset.subsets) or config.network.train_text_encoder or (
        not config.precision.cache_text)
    texts = cache_texts([i.caption for i in dataset.items], anima.load_text_encoder, hashes.text_encoder,
                        hashes.tokenizers, cache)
    if live_text:
        anima.load_text_encoder()  # (already loaded if some caption was not cached)
    else:
        anima.unload_text_encoder()  # every caption is cached: free its memory before the DiT arrives
    log.info("caches ready in %.1fs (%d images; text encoder %s)", time.perf_counter() - t0, len(dataset.items),
             "runs in the loop (captions change every step)" if live_text else "cached and unloaded")
    return Caches(buckets, latents, texts, live_text)


def plan_sizes(config, dataset, buckets, world: int) -> Sizes:
    batches_per_epoch = plan_length(dataset, buckets, config.data.batch_size)
    batches_per_step = config.data.grad_accum * world
    steps_per_epoch = math.ceil(batches_per_epoch / batches_per_step)
    max_epochs, max_steps = config.schedule.max_epochs, config.schedule.max_steps
    return Sizes(batches_per_epoch, batches_per_step, steps_per_epoch, max_epochs, max_steps,
                 max_steps or steps_per_epoch * max_epochs)


def build_parts(paths: JobPaths, config, anima: Anima, precision: Precision, sizes: Sizes) -> Parts:
    """The frozen DiT with a fresh (or continued) LoRA on it, and what trains the LoRA."""
    anima.load_dit()
    anima.freeze()
    init_state = read_init_lora(paths, config.network)
    torch.manual_seed(config.seed)  # LoRA init must not depend on what ran before (caching, loading)
    network = build_network(anima, config.network, init_state)
    network.to(device=precision.device, dtype=torch.float32)
    apply_vram_plan(config, anima, precision)
    if config.precision.compile:
        anima.compile_blocks(compile_backend(precision.device))
    optimizer = build_optimizer(network.unet_parameters(), network.text_encoder_parameters(), config.optimizer)
    scheduler = build_scheduler(optimizer, config.schedule, config.selection, sizes.total_steps)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 do not, and a disabled scaler passes through.
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.mixed == "fp16")
    return Parts(network, optimizer, scheduler, scaler, [p for p in network.parameters() if p.requires_grad])


def apply_vram_plan(config, anima: Anima, precision: Precision) -> VramPlan:
    """precision.vram: the memory savings for this GPU (train/vram.py), applied once the LoRA is on.

    None of them changes the maths (a test checks each against the plain model), so a job resumed on
    another card may pick differently and still continue exactly."""
    text_encoder_live = anima.text_encoder is not None  # fill_caches kept it: it runs in the loop
    plan = plan_for_job(config, device_budget(precision.device), text_encoder_live, anima.dit.config)
    anima.set_gradient_checkpointing(plan.checkpoint_every)
    if plan.swapped_blocks:
        anima.swap_blocks(plan.swapped_blocks)
    if text_encoder_live and not plan.text_encoder_on_gpu:
        anima.keep_text_encoder_off_device()
    (log.warning if not plan.fits else log.info)("%s", plan.line(anima.dit.config.depth))
    return plan


def read_init_lora(paths: JobPaths, network_config) -> dict | None:
    """network.init_from: the LoRA file to continue (its ranks and weights), relative to the dataset.

    job:<name> reads the job's own copy, which the daemon made before the first step (daemon/chain.py).
    """
    if not network_config.init_from:
        return None
    if parse_job_reference(network_config.init_from) is not None:
        path = paths.init_lora
        if not path.is_file():
            raise UserError(f"{paths.resolved}: network.init_from: {network_config.init_from} names a job in the "
                            f"daemon's queue, whose LoRA the daemon copies to {path} before training; it is not "
                            "there -> drop the folder into the inbox so the daemon runs it, or (for `animad train`) "
                            "give the .safetensors file's path instead")
    else:
        path = resolve_path(paths.dataset, network_config.init_from)
    try:
        return read_network_file(path)
    except (OSError, ValueError) as error:
        raise UserError(f"network.init_from: cannot read {path}: {error}") from None


def compile_backend(device: torch.device) -> str:
    """inductor on CUDA; elsewhere eager (inductor on the CPU buys nothing). ANIMAD_COMPILE_BACKEND overrides."""
    return os.environ.get("ANIMAD_COMPILE_BACKEND") or ("inductor" if device.type == "cuda" else "eager")


def resume(parts: Parts, state: dict, sizes: Sizes, config) -> Progress:
    parts.network.load_state_dict(state["lora"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    # A state saved before the cooldown existed lacks its fields: their defaults (no cooldown) hold.
    progress = saved_progress(state)
    if progress.cooldown() is not None:  # the scheduler's function is not in its state: rebuild it
        follow_cooldown(parts.scheduler, config.schedule, config.selection, sizes.total_steps, progress.cooldown())
    log.info("resuming at epoch %d, batch %d/%d (optimizer step %d)", progress.epoch, progress.batch_index,
             sizes.batches_per_epoch, progress.global_step)
    return progress


def saved_progress(state: dict) -> Progress:
    """The Progress record inside a resume state (a state from before a field existed gets its default)."""
    return Progress(**{field.name: state[field.name] for field in dataclasses.fields(Progress) if field.name in state})


def reopen_finished(paths: JobPaths, config, state: dict) -> tuple[bool, str]:
    """Whether a finished run trains on under the job's limits as they are now, and the sentence saying so.

    A run that stopped at its confirmed floor is finished for that reason while stop_at_floor is on;
    one that reached its max_epochs or max_steps trains on once that limit is raised. A lowered limit
    deletes nothing.
    """
    progress = saved_progress(state)
    trained, schedule, selection = progress.epoch - 1, config.schedule, config.selection
    done = f"training already finished at epoch {trained}"
    if progress.floor_confirmed is not None and selection.stop_at_floor:
        return False, (f"{done}: it stopped at the loss floor confirmed after epoch {progress.floor_confirmed}, so a "
                       "higher max_epochs does not reopen it. To train past the floor, set selection.stop_at_floor: "
                       "false in job.yaml and run again; it continues from its last state.")
    limit = limit_reached(progress, schedule.max_epochs, schedule.max_steps)
    if limit is None:
        kind = schedule_kind(schedule, selection)
        plan = (f"{kind} to the end of max_steps {schedule.max_steps}" if schedule.max_steps
                else f"{kind} over {schedule.max_epochs} epochs")
        if kind == "constant" and selection.stop_at_floor:
            plan += ", cooled to 0 at a confirmed floor or over the last epochs"
        limits = f"max_epochs {schedule.max_epochs}" + (f", max_steps {schedule.max_steps}" if schedule.max_steps
                                                        else "")
        return True, (f"training had finished at epoch {trained}; its limit is now higher ({limits}): training on "
                      f"from epoch {progress.epoch} (step {progress.global_step}) with the learning-rate schedule "
                      f"re-planned: {plan}. The epochs already trained stay as they are.")
    if trained > schedule.max_epochs or (schedule.max_steps and progress.global_step > schedule.max_steps):
        lowered = (f"max_epochs {schedule.max_epochs}" if trained > schedule.max_epochs
                   else f"max_steps {schedule.max_steps}")
        return False, (f"{done} (step {progress.global_step}); {lowered} is now below what was trained. Nothing is "
                       f"deleted: every epoch file stays in {paths.epochs_dir} and the review still weighs all "
                       f"{trained} epochs. Raise the limit above what was trained to train on.")
    what = f"max_steps above {progress.global_step}" if limit.startswith("reached max_steps") else \
        f"max_epochs above {trained}"
    return False, (f"{done} ({limit}). To train on from its last state, raise schedule.{what} in job.yaml and "
                   "run again.")


def replan_schedule(run: Run, progress: Progress, reopened: bool) -> None:
    """After a resume: a cooldown planned for an end that has moved (the limits were raised or lowered
    since) is planned again for the new end, and the LR in force is the schedule's at this step.

    The schedule itself is a function of the step and the run's total (built from the limits as they
    are now); only the cooldown and the optimizer's current LR come from the saved state.
    """
    sizes, selection, scheduler = run.sizes, run.config.selection, run.parts.scheduler
    if reopened and not selection.stop_at_floor:
        progress.floor_confirmed = None  # the floor no longer ends this run
    end_of_run = progress.cooldown_after is not None and progress.floor_confirmed is None
    if end_of_run and progress.cooldown_start_step + progress.cooldown_steps != sizes.total_steps:
        log.info("the run's end moved (now %s): the cooldown planned for the old end is dropped and planned again",
                 f"max_steps {sizes.max_steps}" if sizes.max_steps else f"max_epochs {sizes.max_epochs}")
        progress.cooldown_after, progress.cooldown_epochs = None, 0
        progress.cooldown_start_step, progress.cooldown_steps = 0, 0
        follow_cooldown(scheduler, run.config.schedule, selection, sizes.total_steps, None)
        sync_lr(scheduler)
        if selection.stop_at_floor:
            plan_cooldown(run, progress, after=progress.epoch - 1)
    sync_lr(scheduler)


def sync_lr(scheduler) -> None:
    """Set the optimizer's LR to the scheduler's function at its step: the saved LR was the old plan's.

    Where nothing changed this is the very value LambdaLR computed (the same expression), so an
    exact resume stays exact.
    """
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports (LambdaLR keeps it in this attribute)


# -- the loop ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Pace:
    """This launch's clock (never saved): recent step times for s/it and the ETA, and the last state save."""

    step_seconds: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=20))
    last_save: float = dataclasses.field(default_factory=time.monotonic)


def finish_reason(progress: Progress, sizes: Sizes) -> str | None:
    """Why the run is over at this point, or None while there is an epoch left to train.

    An epoch under way (batch_index > 0) is always finished first: its eval and file are still due.
    """
    cooled = progress.cooldown_after is not None and progress.epoch > progress.cooldown_after + \
        progress.cooldown_epochs
    if cooled and progress.floor_confirmed is not None:
        return (f"stopped at the confirmed loss floor after epoch {progress.floor_confirmed}, then cooled the "
                f"learning rate to 0 over {progress.cooldown_epochs} epochs")
    return limit_reached(progress, sizes.max_epochs, sizes.max_steps)


def limit_reached(progress: Progress, max_epochs: int, max_steps: int | None) -> str | None:
    """Why max_epochs or max_steps ends the run at this point, or None."""
    trained = progress.epoch - 1
    if progress.epoch > max_epochs:
        if trained > max_epochs:  # lowered under a run that had gone further: nothing is undone
            return (f"reached max_epochs {max_epochs} (lowered after {trained} epochs were trained; every one of "
                    "them stays)")
        return f"reached max_epochs {max_epochs}"
    if max_steps and progress.global_step >= max_steps and progress.batch_index == 0:
        return f"reached max_steps {max_steps}"
    return None


def out_of_steps(progress: Progress, sizes: Sizes) -> bool:
    return bool(sizes.max_steps) and progress.global_step >= sizes.max_steps


def plan_cooldown(run: Run, progress: Progress, after: int | None = None) -> str | None:
    """After an epoch with stop-at-floor on and no cooldown yet: start one if it is due.

    A cooldown is due when the floor was just confirmed, or, for a schedule that never decays by
    itself (constant), when the cooldown would reach the end of the run anyway: a run that finds no
    floor then still ends annealed. Returns why the run ends now: a floor with no room (or no wish)
    for a cooldown stops at once, as without one. `after` is the epoch just trained (progress.epoch
    unless the plan is made on a resume, before the next epoch starts).
    """
    selection, sizes = run.config.selection, run.sizes
    after = progress.epoch if after is None else after
    wanted = max(selection.cooldown_min_epochs, round(selection.cooldown_fraction * after)) \
        if selection.cooldown_fraction > 0 else 0
    steps_left = sizes.total_steps - progress.global_step
    steps = min(wanted * sizes.steps_per_epoch, steps_left)
    floor = progress.floor_confirmed is not None
    if floor and steps <= 0:
        return f"stopped at the confirmed loss floor after epoch {after}"
    constant = schedule_kind(run.config.schedule, selection) == "constant"
    if not floor and not (constant and wanted and steps_left <= wanted * sizes.steps_per_epoch):
        return None
    if steps <= 0:
        return None
    progress.cooldown_after, progress.cooldown_epochs = after, math.ceil(steps / sizes.steps_per_epoch)
    progress.cooldown_start_step, progress.cooldown_steps = progress.global_step, steps
    follow_cooldown(run.parts.scheduler, run.config.schedule, selection, sizes.total_steps, progress.cooldown())
    log.info("%s after epoch %d: cooling the learning rate from %.3g to 0 over %d epochs (%d steps)",
             "loss floor confirmed" if floor else "no floor yet, the end of the run is near",
             after, run.parts.scheduler.get_last_lr()[0], progress.cooldown_epochs, steps)
    return None


def train_epoch(run: Run, progress: Progress, pace: Pace) -> bool:
    """Train the rest of progress.epoch; False if a stop request paused it (the state is saved)."""
    config, sizes = run.config, run.sizes
    plan = epoch_plan(run.dataset, run.caches.buckets, config.data.batch_size, config.seed, progress.epoch)
    while progress.batch_index < len(plan) and not out_of_steps(progress, sizes):
        t_step = time.perf_counter()
        batches = plan[progress.batch_index: progress.batch_index + sizes.batches_per_step]
        step = train_step(run, progress, batches)
        progress.batch_index += len(batches)
        progress.global_step += 1
        progress.loss_sum += step.loss
        progress.loss_count += 1
        pace.step_seconds.append(time.perf_counter() - t_step)
        progress.epoch_seconds += pace.step_seconds[-1]
        report_step(run, progress, pace, step)
        if run.group.any(run.should_stop()):
            save_state(run, progress)
            log.info("stopped at epoch %d, step %d; state saved", progress.epoch, progress.global_step)
            return False
        minutes = config.schedule.state_every_minutes
        if minutes and time.monotonic() - pace.last_save > minutes * 60:
            save_state(run, progress)
            pace.last_save = time.monotonic()
    return True


@dataclasses.dataclass(frozen=True)
class StepResult:
    loss: float  # the step's mean loss over all ranks
    max_norm: tuple[int, float, float] | None = None  # network.scale_weight_norms: modules scaled, mean, max norm


def train_step(run: Run, progress: Progress, batches: list) -> StepResult:
    """One optimizer step over `batches` (this rank trains its share)."""
    parts, group = run.parts, run.group
    step_loss = accumulate_gradients(run, progress, batches)
    # The step's one host read, before the optimizer applies anything: the loss is logged and
    # reported, and a NaN/inf loss (a sum keeps it) must stop the run. float64, so the sum is the
    # one Python floats would give. (fp16 adds the scaler's own read in step().)
    local = host_values(step_loss)[0]
    bad_here = not math.isfinite(local)
    step_loss, bad = group.sum([local, 1.0 if bad_here else 0.0])
    if bad:
        raise UserError(f"loss became {local if bad_here else 'NaN/inf'} at epoch {progress.epoch}, step "
                        f"{progress.global_step + 1}. Lower the learning rate, or use precision.mixed: bf16 "
                        "instead of fp16.")
    group.sum_grads(parts.params)
    parts.scaler.unscale_(parts.optimizer)  # clipping must see the true gradients
    if run.config.optimizer.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(parts.params, run.config.optimizer.max_grad_norm)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    max_norm = None
    if run.config.network.scale_weight_norms:
        # After the optimizer step, as sd-scripts does; its figures cost one more host read, and
        # only with this option on.
        scaled, mean, largest = host_values(parts.network.apply_max_norm(run.config.network.scale_weight_norms))
        max_norm = (int(scaled), mean, largest)
    return StepResult(step_loss, max_norm)


def accumulate_gradients(run: Run, progress: Progress, batches: list) -> torch.Tensor:
    """Forward and backward of this rank's micro-batches; returns the step loss, still on the device.

    A GPU out-of-memory error in a micro-batch starts the accumulation over with half the
    micro-batch and twice the accumulation (the same effective batch, the same gradient up to
    summation order), and the run keeps the smaller size; at one image per micro-batch the error
    stands. (Nothing is applied before this returns, so starting over is exact.)
    """
    while True:
        try:
            # Summed on the device: reading the loss per micro-batch would be a host sync each time.
            step_loss = torch.zeros((), dtype=torch.float64, device=run.precision.device)
            for offset, batch in run.group.share(batches):
                for rows in micro_batches(len(batch.items), progress.micro_batch):
                    step_loss += micro_batch_backward(run, batch, progress.epoch, progress.batch_index + offset,
                                                      rows, len(batches))
            return step_loss
        except torch.OutOfMemoryError:
            if (progress.micro_batch or max(len(b.items) for b in batches)) <= 1:
                raise
        # Outside the except block, so the error's traceback (and the activations it holds) is freed.
        halve_micro_batch(run, progress, batches)


def halve_micro_batch(run: Run, progress: Progress, batches: list) -> None:
    before = progress.micro_batch or max(len(b.items) for b in batches)
    progress.micro_batch = max(1, before // 2)
    run.parts.optimizer.zero_grad(set_to_none=True)  # the failed attempt's partial gradients
    if run.precision.device.type == "cuda":
        torch.cuda.empty_cache()
    log.warning("out of GPU memory at epoch %d, step %d with %d images per forward: retrying the step with %d "
                "(gradient accumulation doubled, the same effective batch) and keeping that size", progress.epoch,
                progress.global_step + 1, before, progress.micro_batch)


def micro_batches(size: int, limit: int | None) -> list[slice]:
    """The rows of a batch each forward takes: all of them, or chunks of `limit` after an OOM."""
    if not limit or limit >= size:
        return [slice(0, size)]
    return [slice(start, min(size, start + limit)) for start in range(0, size, limit)]


def host_values(tensor: torch.Tensor) -> list[float]:
    """A small device tensor's values on the host: one copy, the one sync the caller pays.

    Every deliberate host read of the step goes through here, so the sync counter
    (bench/step_counts.py) counts it: on the CPU the copy dispatches nothing it could see.
    """
    return tensor.detach().double().cpu().reshape(-1).tolist()


def step_seed(seed: int, epoch: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{epoch}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def micro_batch_backward(run: Run, batch, epoch: int, batch_number: int, rows: slice, batches: int) -> torch.Tensor:
    """Forward and backward of `rows` of one batch; returns their share of the step loss, on the device."""
    loss = micro_batch_loss(run, batch, epoch, batch_number, rows) / batches
    # The backward under the attention backend too: with checkpointing it recomputes every block's
    # forward, which must pick the kernel the forward picked (autocast the checkpoint restores itself).
    with run.precision.attention_context():
        run.parts.scaler.scale(loss).backward()
    return loss.detach().double()


def micro_batch_loss(run: Run, batch, epoch: int, batch_number: int, rows: slice | None = None) -> torch.Tensor:
    """The flow-matching loss of one batch, or of `rows` of it (their share of the batch mean).

    Flips, caption shuffles, noise and sigmas are seeded by the batch's place and drawn for the whole
    batch before `rows` are taken, so a batch split after an OOM trains what it would have trained whole.
    """
    config, dataset, latents, device = run.config, run.dataset, run.caches.latents, run.precision.device
    rows = rows or slice(0, len(batch.items))
    rng = random.Random(step_seed(config.seed, epoch, batch_number))
    torch.manual_seed(step_seed(config.seed, epoch, batch_number))
    items = [dataset.items[i] for i in batch.items]
    subsets = [dataset.subsets[i.subset] for i in items]
    x0 = torch.stack([latents[i].flipped if s.flip and rng.random() < 0.5 else latents[i].latents
                      for i, s in zip(batch.items, subsets)]).to(device)
    mask = None
    if any(s.alpha_mask for s in subsets):
        mask = torch.stack([latents[i].mask if latents[i].mask is not None else torch.ones(
            1, *x0.shape[-2:]) for i in batch.items])[rows].to(device)
    captions = [augment_caption(item.caption, subset, rng) for item, subset in zip(items, subsets)]
    live = [run.caches.live_text and (is_dynamic(s) or config.network.train_text_encoder or c not in run.caches.texts)
            for s, c in zip(subsets, captions)]
    noise = torch.randn_like(x0)
    if config.timesteps.noise_offset:
        noise = noise + config.timesteps.noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1, device=device)
    sigma = sample_sigmas(x0.shape[0], config.timesteps, device)
    x_t = noisy(x0, noise, sigma)
    if config.timesteps.ip_noise_gamma:
        x_t = x_t + input_perturbation(x0, sigma, config.timesteps)
    prediction = velocity(run, x_t[rows], sigma[rows], embed_captions(run, captions[rows], live[rows]))
    return flow_loss(prediction, x0[rows], noise[rows], mask).sum() / len(batch.items)


def embed_captions(run: Run, captions: list[str], live: list[bool]) -> list[TextEmbedding]:
    """Cached embeddings where the caption is fixed; the text encoder for shuffled ones."""
    out = [run.caches.texts.get(c) if not use_live else None for c, use_live in zip(captions, live)]
    todo = [i for i, e in enumerate(out) if e is None]
    if todo:
        grad = torch.enable_grad() if run.config.network.train_text_encoder else torch.no_grad()
        with grad, run.precision.autocast():
            for i, embedding in zip(todo, run.anima.encode_text([captions[i] for i in todo])):
                out[i] = embedding
    return out


def velocity(run: Run, x_t: torch.Tensor, sigma: torch.Tensor, embeddings: list[TextEmbedding]) -> torch.Tensor:
    with run.precision.autocast(), run.precision.attention_context():
        return run.anima.velocity(x_t, sigma, run.anima.context(embeddings))


def report_step(run: Run, progress: Progress, pace: Pace, step: StepResult) -> None:
    """TensorBoard's step scalars and the progress the daemon shows."""
    sizes, parts = run.sizes, run.parts
    s_per_it = sum(pace.step_seconds) / len(pace.step_seconds)
    run.tracker.step(progress.global_step, step.loss, parts.scheduler.get_last_lr()[0], effective_lr(parts.optimizer))
    if step.max_norm is not None and run.group.is_main:
        run.tracker.max_norm(progress.global_step, *step.max_norm)
    end = run_end(run, progress)
    if progress.micro_batch:  # after an OOM: status shows the smaller micro-batch
        end = {**end, "micro_batch": progress.micro_batch}
    run.on_progress({"phase": "training", "epoch": progress.epoch, "max_epochs": sizes.max_epochs,
                     "step": progress.global_step, "total_steps": sizes.total_steps,
                     "step_in_epoch": math.ceil(progress.batch_index / sizes.batches_per_step),
                     "steps_per_epoch": sizes.steps_per_epoch, "loss": progress.loss_sum / progress.loss_count,
                     "s_per_it": s_per_it, "eta_seconds": max(0, end["end_step"] - progress.global_step) * s_per_it,
                     **end})


def run_end(run: Run, progress: Progress) -> dict:
    """Where the run stands on its way to the end, for `status`: the floor's state and what the ETA counts to.

    floor: "off" (stop_at_floor is off), "not yet", or "confirmed at epoch N"; cooldown_epochs_left
    while cooling (this epoch included); eta_until says what the ETA is the time to.
    """
    sizes, selection = run.sizes, run.config.selection
    floor = ("off" if not selection.stop_at_floor else "not yet" if progress.floor_confirmed is None
             else f"confirmed at epoch {progress.floor_confirmed}")
    limit = f"max_steps {sizes.max_steps}" if sizes.max_steps else f"max_epochs {sizes.max_epochs}"
    if progress.cooling(progress.epoch):
        end_epoch = progress.end_epoch(sizes)
        return {"floor": floor, "cooling": True, "cooldown_epochs_left": end_epoch - progress.epoch + 1,
                "end_epoch": end_epoch,
                "end_step": min(sizes.total_steps, progress.cooldown_start_step + progress.cooldown_steps),
                "eta_until": f"the end of the cooldown (epoch {end_epoch})"}
    sooner = " (a confirmed floor ends it sooner)" if selection.stop_at_floor else ""
    return {"floor": floor, "cooling": False, "end_epoch": sizes.max_epochs, "end_step": sizes.total_steps,
            "eta_until": f"{limit}{sooner}"}


def end_epoch(run: Run, progress: Progress, seconds: float) -> None:
    """Rank 0 after each epoch: the stable eval, the epoch's LoRA file, its record and its log line.

    The epoch's time is progress.epoch_seconds, its steps' time over every launch; `seconds` (this
    launch's part alone) would make an epoch resumed near its end look as if eval took all of it.
    """
    config, paths, parts, epoch = run.config, run.paths, run.parts, progress.epoch
    run.on_progress({"phase": "eval", "epoch": epoch})
    t_eval = time.perf_counter()
    parts.network.eval()
    eval_loss, eval_by_sigma = evaluate(run.eval_set, run.dataset, run.caches.latents, run.caches.texts,
                                        functools.partial(eval_velocity, run))
    parts.network.train()
    eval_seconds = time.perf_counter() - t_eval
    run.on_progress({"phase": "saving", "epoch": epoch})
    epoch_file = paths.epoch_file(config.name, epoch)
    state = parts.network.state_dict()
    checkpoint.save_lora(epoch_file, state, config.precision.save, checkpoint.lora_metadata(
        config, epoch=epoch, step=progress.global_step, dataset=run.dataset, files=run.files,
        base_hash=run.hashes.dit, started=progress.started, session=progress.session,
        rank_dims=checkpoint.rank_and_alpha(state), schedule=followed_schedule(run, progress)))
    record = {"epoch": epoch, "step": progress.global_step, "loss": progress.loss_sum / max(1, progress.loss_count),
              "eval_loss": eval_loss, "eval_by_sigma": eval_by_sigma, "lr": parts.scheduler.get_last_lr()[0],
              "d_lr": effective_lr(parts.optimizer), "prodigy_d": parts.optimizer.param_groups[0].get("d"),
              "cooldown": progress.cooling(epoch),
              "seconds": progress.epoch_seconds + time.perf_counter() - t_eval, "eval_seconds": eval_seconds,
              "file": str(epoch_file.relative_to(paths.root)), "time": now_iso()}
    run.tracker.epoch(record)
    log.info("epoch %d: loss %.5f, eval %.5f (eval took %.0f%% of the epoch)", epoch, record["loss"],
             eval_loss, 100 * eval_seconds / max(1e-9, record["seconds"]))


def followed_schedule(run: Run, progress: Progress) -> checkpoint.FollowedSchedule:
    """What the LR schedule was up to this epoch, and where the run is headed (the LoRA file says both)."""
    sizes, kind = run.sizes, schedule_kind(run.config.schedule, run.config.selection)
    cooling = progress.cooling(progress.epoch)
    end_epoch = progress.end_epoch(sizes) if cooling else sizes.max_epochs
    end_step = progress.cooldown_start_step + progress.cooldown_steps if cooling else sizes.total_steps
    return checkpoint.FollowedSchedule(
        kind=kind, warmup_steps=warmup_steps(run.config.schedule, sizes.total_steps), end_epoch=end_epoch,
        end_step=min(end_step, sizes.total_steps), cooldown_after=progress.cooldown_after if cooling else None,
        cooldown_epochs=progress.cooldown_epochs if cooling else 0,
        floor_confirmed=progress.floor_confirmed if cooling else None)


def eval_velocity(run: Run, x_t: torch.Tensor, sigma: torch.Tensor, captions: list[str]) -> torch.Tensor:
    device = run.precision.device
    return velocity(run, x_t.to(device), sigma.to(device), [run.caches.texts[c] for c in captions])


def save_state(run: Run, progress: Progress, finished: bool = False) -> None:
    """The resume state (rank 0 writes it for every rank): the trained parts and the progress record."""
    if not run.group.is_main:
        return
    parts = run.parts
    checkpoint.save_resume_state(run.paths.resume_state, {
        "lora": parts.network.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(), **dataclasses.asdict(progress),
        "fingerprint": run.fingerprint, "finished": finished, "rng_cpu": torch.get_rng_state(),
        "world": run.group.world})


class NoTracker:
    """What ranks other than 0 log to: nothing (rank 0 reports for the whole job)."""

    def step(self, *args) -> None:
        pass

    def epoch(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass
