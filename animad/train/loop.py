"""The training loop: flat, top to bottom, in the order things happen.

    load models -> fill caches -> attach the network -> (resume) -> epochs of steps -> eval + save each epoch

Every micro-batch seeds its own randomness from (seed, epoch, batch index), and the epoch order is a
pure function of (seed, epoch). A resumed run therefore replays exactly what an uninterrupted run
would have done, and epoch/step counters come from the saved state, never from counting launches.

run_training reads top to bottom: its setup helpers come next, in the order it calls them, then the
loop (train_epochs -> train_epoch -> train_step, whose body computes each micro-batch's loss one call
below it, in micro_batch_loss). The setup returns plain records (Caches, Sizes, Parts), gathered in a
Run that never changes inside the loop; all the loop's state is one Progress record
(train/progress.py), passed explicitly to whatever steps, saves or reports. When the run ends, and
why, is train/ending.py's to say.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import os
import random
import time
from typing import Callable

import torch

from animad.anima.files import ModelFiles
from animad.anima.pipeline import Anima
from animad.anima.text import TextEmbedding
from animad.config.daemon import resolve_path
from animad.config.job import JobConfig, NetworkConfig, parse_job_reference
from animad.errors import UserError
from animad.fsutil import remove_stale_temp_files
from animad.intake.dataset import Dataset
from animad.layout import Ending, EpochRecord, JobPaths
from animad.progress_report import Report
from animad.train import checkpoint, ending
from animad.train.batches import Batch, epoch_plan, item_buckets, plan_length
from animad.train.caches import (LatentEntry, TensorCache, cache_latents, cache_texts, dir_fingerprint,
                                 model_fingerprint)
from animad.train.captions import augment_caption, is_dynamic
from animad.train.evaluation import EvalSet, build_eval_set, evaluate
from animad.train.floor import floor_reached
from animad.train.flow import flow_loss, input_perturbation, noisy, sample_sigmas
from animad.train.networks.network import Network, build_network, read_network_file
from animad.train.optim import build_optimizer, build_scheduler, effective_lr
from animad.train.precision import Precision, resolve_precision
from animad.train.progress import Progress, Sizes, now_iso, saved_progress
from animad.train.ranks import SINGLE, Group, rank_device
from animad.train.tracking import Tracker
from animad.train.vram import VramPlan, device_budget, plan_for_job

log = logging.getLogger("animad.train")


# -- the records the loop works with ---------------------------------------------------------------

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
class Parts:
    network: Network
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # disabled (every call passes through) unless fp16
    params: list[torch.Tensor]  # the trainable network parameters


class NoTracker:
    """What ranks other than 0 log to: nothing (rank 0 reports for the whole job)."""

    def step(self, *args) -> None:
        pass

    def epoch(self, record: EpochRecord) -> None:
        pass

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything fixed for one launch of the loop; what changes is the Progress next to it."""

    paths: JobPaths
    config: JobConfig
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


@dataclasses.dataclass
class Pace:
    """This launch's clock (never saved): recent step times for s/it and the ETA, and the last state save."""

    step_seconds: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=20))
    last_save: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass(frozen=True)
class StepResult:
    loss: float  # the step's mean loss over all ranks
    max_norm: tuple[int, float, float] | None = None  # network.scale_weight_norms: modules scaled, mean, max norm


# -- the run -------------------------------------------------------------------------------------

def run_training(paths: JobPaths, config: JobConfig, files: ModelFiles, dataset: Dataset, *, cache_dir,
                 should_stop: Callable[[], bool], on_progress: Callable[[dict], None], group: Group = SINGLE) -> str:
    """Train or resume; returns "finished" or "paused" (state saved at a step boundary).

    With several ranks (train/launch.py) only rank 0 writes files, logs and reports.
    """
    precision = resolve_precision(config, rank_device(group.rank) if group.world > 1 else None)
    state = checkpoint.load_resume_state(paths.resume_state)
    reopened = False
    if state and state.get("finished"):
        # A finished run trains on when its limits were raised since (max_epochs, max_steps); the
        # message says which way it went and what to change otherwise.
        reopened, message = ending.reopen_finished(paths, config, state)
        log.info("%s", message)
        if not reopened:
            return "finished"
    refuse_other_world(paths, state, group)

    # 1) Fingerprints, then the caches. Rank 0 hashes and caches first; the other ranks then find
    #    everything in the cache.
    on_progress(Report(phase="loading").sent())
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

    # 2) The DiT and the network. Base weights are frozen in the training dtype; the network stays fp32.
    sizes = plan_sizes(config, dataset, caches.buckets, group.world)
    parts = build_parts(paths, config, anima, precision, sizes)
    eval_set = build_eval_set(dataset, caches.latents, config.eval, config.timesteps, config.seed,
                              dataset.samples_per_epoch())
    log.info("%s: %d modules, %.2fM parameters; %d steps/epoch, %d epochs max; eval on %d images x %d sigmas%s",
             parts.network.kind.title, len(parts.network.loras), sum(p.numel() for p in parts.params) / 1e6,
             sizes.steps_per_epoch, sizes.max_epochs, len(eval_set.items), len(eval_set.sigmas),
             f"; {group.world} GPUs" if group.world > 1 else "")

    # 3) Resume: every counter comes from the state, so any number of resumes keeps them true.
    progress = resume(parts, state, sizes) if state else Progress()
    if group.is_main:
        for directory in (paths.epochs_dir, paths.state_dir, paths.root):
            remove_stale_temp_files(directory)  # our own half-written files from a kill mid-save
    tracker = Tracker(paths.tensorboard, paths.epochs_log, progress.global_step, progress.epoch - 1) \
        if group.is_main else NoTracker()
    run = Run(paths=paths, config=config, files=files, dataset=dataset, group=group, precision=precision,
              anima=anima, hashes=hashes, fingerprint=fingerprint, caches=caches, sizes=sizes, parts=parts,
              eval_set=eval_set, tracker=tracker, should_stop=should_stop, on_progress=on_progress)
    if state:
        ending.resume_schedule(progress, sizes, config, parts.scheduler, reopened)
    if reopened and group.is_main:
        paths.clear_ending()  # ours, and no longer true; written again at the end

    # 4) The loop.
    try:
        end = train_epochs(run, progress)
    finally:
        tracker.close()
    if end is None:
        return "paused"
    log.info("training finished: %s", end.sentence)
    if group.is_main:
        paths.write_ending(end)
    return "finished"


# -- setup ---------------------------------------------------------------------------------------

def refuse_other_world(paths: JobPaths, state: dict | None, group: Group) -> None:
    if state and state.get("world", 1) != group.world:
        raise UserError(f"{paths.resume_state}: this job was started on {state.get('world', 1)} GPU(s) and would "
                        f"resume on {group.world}. Set gpus: {state.get('world', 1)} in animad.yaml to resume it "
                        "(the schedule and step counts depend on it), or start a new job.")


def hash_models(files: ModelFiles, cache_dir) -> Hashes:
    tokenizers = hashlib.sha256((dir_fingerprint(files.qwen_tokenizer) + dir_fingerprint(
        files.t5_tokenizer)).encode()).hexdigest()
    return Hashes(dit=model_fingerprint(files.dit, cache_dir),
                  text_encoder=model_fingerprint(files.text_encoder, cache_dir),
                  vae=model_fingerprint(files.vae, cache_dir), tokenizers=tokenizers)


def run_fingerprint(config: JobConfig, dataset: Dataset, base_hash: str) -> str:
    """What a resume state must agree with: the model, the data and every shape-defining setting."""
    net = config.network
    parts = [base_hash, config.seed, net.dim, net.alpha, net.targets, net.blocks, net.include, net.exclude,
             net.train_llm_adapter, net.train_text_encoder, net.text_encoder_dim, config.optimizer.type,
             config.data.batch_size, config.data.grad_accum, dataset.samples_per_epoch(),
             [(i.rel, i.sha256, i.caption) for i in dataset.items]]
    if net.type != "lora":  # the kind shapes the tensors too (added only then: LoRA states made before still resume)
        parts += [net.type, net.factor]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def refuse_other_run(paths: JobPaths, state: dict | None, fingerprint: str) -> None:
    if state and state.get("fingerprint") != fingerprint:
        raise UserError(f"{paths.resume_state}: the saved state belongs to a different model, dataset or network "
                        "setup than this job now has. Start a new job (or move the state/ folder away to start "
                        "this one over).")


def fill_caches(anima: Anima, dataset: Dataset, config: JobConfig, hashes: Hashes, cache: TensorCache,
                on_progress: Callable[[dict], None]) -> Caches:
    """Latents and caption embeddings, from the cache where possible.

    The VAE is loaded only for images not cached yet, and dropped right after; the text encoder
    stays loaded only if it runs in the loop.
    """
    on_progress(Report(phase="caching").sent())
    buckets = item_buckets(dataset, config.data)
    t0 = time.perf_counter()
    latents = cache_latents(dataset, buckets, anima.load_vae, hashes.vae, cache,
                            on_item=lambda done, total: on_progress(Report(phase="caching", done=done,
                                                                           total=total).sent()))
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
    return Caches(buckets=buckets, latents=latents, texts=texts, live_text=live_text)


def plan_sizes(config: JobConfig, dataset: Dataset, buckets: list[tuple[int, int]], world: int) -> Sizes:
    batches_per_epoch = plan_length(dataset, buckets, config.data.batch_size)
    batches_per_step = config.data.grad_accum * world
    steps_per_epoch = math.ceil(batches_per_epoch / batches_per_step)
    max_epochs, max_steps = config.schedule.max_epochs, config.schedule.max_steps
    return Sizes(batches_per_epoch=batches_per_epoch, batches_per_step=batches_per_step,
                 steps_per_epoch=steps_per_epoch, max_epochs=max_epochs, max_steps=max_steps,
                 total_steps=max_steps or steps_per_epoch * max_epochs)


def build_parts(paths: JobPaths, config: JobConfig, anima: Anima, precision: Precision, sizes: Sizes) -> Parts:
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
    return Parts(network=network, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                 params=[p for p in network.parameters() if p.requires_grad])


def read_init_lora(paths: JobPaths, network_config: NetworkConfig) -> dict | None:
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


def apply_vram_plan(config: JobConfig, anima: Anima, precision: Precision) -> VramPlan:
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


def compile_backend(device: torch.device) -> str:
    """inductor on CUDA; elsewhere eager (inductor on the CPU buys nothing). ANIMAD_COMPILE_BACKEND overrides."""
    return os.environ.get("ANIMAD_COMPILE_BACKEND") or ("inductor" if device.type == "cuda" else "eager")


def resume(parts: Parts, state: dict, sizes: Sizes) -> Progress:
    """The saved network, optimizer and progress (the scheduler's cooldown is train/ending.py's to restore)."""
    parts.network.load_state_dict(state["lora"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    # A state saved before the cooldown existed lacks its fields: their defaults (no cooldown) hold.
    progress = saved_progress(state)
    log.info("resuming at epoch %d, batch %d/%d (optimizer step %d)", progress.epoch, progress.batch_index,
             sizes.batches_per_epoch, progress.global_step)
    return progress


# -- the loop ------------------------------------------------------------------------------------

def train_epochs(run: Run, progress: Progress) -> Ending | None:
    """Epochs of optimizer steps; after each, rank 0 evaluates and saves, then the resume state is saved.

    Returns how training ended, or None if a stop request paused it (the state is saved).
    """
    config, sizes, group = run.config, run.sizes, run.group
    run.parts.network.train()
    pace = Pace()
    end = ending.verdict(progress, sizes)
    if end:  # the run ended just before a state saying so was written
        save_state(run, progress, finished=True)
    while end is None:
        if not train_epoch(run, progress, pace):
            return None
        if group.is_main:
            evaluate_and_save_epoch(run, progress)
        # Once cooling, the end is fixed: the floor is not asked again.
        watching = ending.watching_floor(progress, config)
        floor = group.is_main and watching and floor_reached(run.tracker.records, config.selection)
        if group.any(floor):  # also where the other ranks wait for rank 0's eval and save
            progress.floor_confirmed = progress.epoch
        # Every rank plans the same cooldown from the same shared facts.
        stopped = ending.after_floor_check(progress, sizes, config, run.parts.scheduler) if watching else None
        progress.next_epoch()
        end = stopped or ending.verdict(progress, sizes)
        save_state(run, progress, finished=end is not None)
        pace.last_save = time.monotonic()
    return end


def train_epoch(run: Run, progress: Progress, pace: Pace) -> bool:
    """Train the rest of progress.epoch; False if a stop request paused it (the state is saved)."""
    config, sizes = run.config, run.sizes
    plan = epoch_plan(run.dataset, run.caches.buckets, config.data.batch_size, config.seed, progress.epoch)
    while progress.batch_index < len(plan) and not ending.out_of_steps(progress, sizes):
        t_step = time.perf_counter()
        step_batches = plan[progress.batch_index: progress.batch_index + sizes.batches_per_step]
        step = train_step(run, progress, step_batches)
        progress.batch_index += len(step_batches)
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


def train_step(run: Run, progress: Progress, step_batches: list[Batch]) -> StepResult:
    """One optimizer step over `step_batches` (this rank trains its share): forward and backward of each
    micro-batch, one host read of the loss, then the optimizer.

    A GPU out-of-memory error in a micro-batch starts the accumulation over with half the micro-batch
    and twice the accumulation (the same effective batch, the same gradient up to summation order), and
    the run keeps the smaller size; at one image per micro-batch the error stands. (Nothing is applied
    before the accumulation ends, so starting over is exact.)
    """
    parts, group, precision = run.parts, run.group, run.precision
    while True:
        try:
            # Summed on the device: reading the loss per micro-batch would be a host sync each time.
            step_loss = torch.zeros((), dtype=torch.float64, device=precision.device)
            for offset, batch in group.share(step_batches):
                for rows in micro_batches(len(batch.items), progress.micro_batch):
                    loss = micro_batch_loss(run, batch, progress.epoch, progress.batch_index + offset, rows)
                    loss = loss / len(step_batches)
                    # The backward under the attention backend too: with checkpointing it recomputes every
                    # block's forward, which must pick the kernel the forward picked (autocast the
                    # checkpoint restores itself).
                    with precision.attention_context():
                        parts.scaler.scale(loss).backward()
                    step_loss += loss.detach().double()
            break
        except torch.OutOfMemoryError:
            if (progress.micro_batch or max(len(b.items) for b in step_batches)) <= 1:
                raise
        # Outside the except block, so the error's traceback (and the activations it holds) is freed.
        halve_micro_batch(run, progress, step_batches)
    # The step's one host read, before the optimizer applies anything: the loss is logged and
    # reported, and a NaN/inf loss (a sum keeps it) must stop the run. float64, so the sum is the
    # one Python floats would give. (fp16 adds the scaler's own read in step().)
    local = host_values(step_loss)[0]
    bad_here = not math.isfinite(local)
    loss_all_ranks, bad = group.sum([local, 1.0 if bad_here else 0.0])
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
    return StepResult(loss=loss_all_ranks, max_norm=max_norm)


def micro_batch_loss(run: Run, batch: Batch, epoch: int, batch_number: int, rows: slice) -> torch.Tensor:
    """The flow-matching loss of `rows` of one batch (their share of the batch mean).

    Flips, caption shuffles, noise and sigmas are seeded by the batch's place and drawn for the whole
    batch before `rows` are taken, so a batch split after an OOM trains what it would have trained whole.
    """
    config, dataset, latents, device = run.config, run.dataset, run.caches.latents, run.precision.device
    rng = random.Random(step_seed(config.seed, epoch, batch_number))
    torch.manual_seed(step_seed(config.seed, epoch, batch_number))
    items = [dataset.items[i] for i in batch.items]
    subsets = [dataset.subsets[i.subset] for i in items]
    flips = [s.flip and rng.random() < 0.5 for s in subsets]
    x0 = torch.stack([latents[i].flipped if flip else latents[i].latents
                      for i, flip in zip(batch.items, flips)]).to(device)
    mask = None
    if any(s.alpha_mask for s in subsets):
        # The cached mask is the unflipped image's: a flipped sample takes it mirrored, as its latents are.
        mask = torch.stack([torch.ones(1, *x0.shape[-2:]) if latents[i].mask is None
                            else latents[i].mask.flip(-1) if flip else latents[i].mask
                            for i, flip in zip(batch.items, flips)])[rows].to(device)
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
    embeddings = embed_captions(run, captions[rows], live[rows])
    with run.precision.autocast(), run.precision.attention_context():
        prediction = run.anima.velocity(x_t[rows], sigma[rows], run.anima.context(embeddings))
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


def micro_batches(size: int, limit: int | None) -> list[slice]:
    """The rows of a batch each forward takes: all of them, or chunks of `limit` after an OOM."""
    if not limit or limit >= size:
        return [slice(0, size)]
    return [slice(start, min(size, start + limit)) for start in range(0, size, limit)]


def halve_micro_batch(run: Run, progress: Progress, step_batches: list[Batch]) -> None:
    before = progress.micro_batch or max(len(b.items) for b in step_batches)
    progress.micro_batch = max(1, before // 2)
    run.parts.optimizer.zero_grad(set_to_none=True)  # the failed attempt's partial gradients
    if run.precision.device.type == "cuda":
        torch.cuda.empty_cache()
    log.warning("out of GPU memory at epoch %d, step %d with %d images per forward: retrying the step with %d "
                "(gradient accumulation doubled, the same effective batch) and keeping that size", progress.epoch,
                progress.global_step + 1, before, progress.micro_batch)


def host_values(tensor: torch.Tensor) -> list[float]:
    """A small device tensor's values on the host: one copy, the one sync the caller pays.

    Every deliberate host read of the step goes through here, so the sync counter
    (bench/step_counts.py) counts it: on the CPU the copy dispatches nothing it could see.
    """
    return tensor.detach().double().cpu().reshape(-1).tolist()


def step_seed(seed: int, epoch: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{epoch}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def report_step(run: Run, progress: Progress, pace: Pace, step: StepResult) -> None:
    """TensorBoard's step scalars and the progress the daemon shows."""
    sizes, parts = run.sizes, run.parts
    s_per_it = sum(pace.step_seconds) / len(pace.step_seconds)
    run.tracker.step(progress.global_step, step.loss, parts.scheduler.get_last_lr()[0], effective_lr(parts.optimizer))
    if step.max_norm is not None and run.group.is_main:
        run.tracker.max_norm(progress.global_step, *step.max_norm)
    end = ending.outlook(progress, sizes, run.config)
    run.on_progress(Report(
        phase="training", epoch=progress.epoch, max_epochs=sizes.max_epochs, step=progress.global_step,
        total_steps=sizes.total_steps, step_in_epoch=math.ceil(progress.batch_index / sizes.batches_per_step),
        steps_per_epoch=sizes.steps_per_epoch, loss=progress.loss_sum / progress.loss_count, s_per_it=s_per_it,
        eta_seconds=max(0, end.end_step - progress.global_step) * s_per_it, floor=end.floor, cooling=end.cooling,
        cooldown_epochs_left=end.cooldown_epochs_left, end_epoch=end.end_epoch, end_step=end.end_step,
        eta_until=end.eta_until, micro_batch=progress.micro_batch).sent())  # micro_batch: set after an OOM


# -- the end of each epoch -------------------------------------------------------------------------

def evaluate_and_save_epoch(run: Run, progress: Progress) -> None:
    """Rank 0 after each epoch: the stable eval, the epoch's network file, its record and its log line.

    The epoch's time is progress.epoch_seconds, its steps' time over every launch (this launch's
    part alone would make an epoch resumed near its end look as if eval took all of it).
    """
    config, paths, parts, epoch, device = run.config, run.paths, run.parts, progress.epoch, run.precision.device
    run.on_progress(Report(phase="eval", epoch=epoch).sent())
    t_eval = time.perf_counter()

    def model_step(x_t: torch.Tensor, sigma: torch.Tensor, captions: list[str]) -> torch.Tensor:
        x_t, sigma, embeddings = x_t.to(device), sigma.to(device), [run.caches.texts[c] for c in captions]
        with run.precision.autocast(), run.precision.attention_context():
            return run.anima.velocity(x_t, sigma, run.anima.context(embeddings))

    parts.network.eval()
    eval_loss, eval_by_sigma = evaluate(run.eval_set, run.dataset, run.caches.latents, run.caches.texts, model_step)
    parts.network.train()
    eval_seconds = time.perf_counter() - t_eval
    run.on_progress(Report(phase="saving", epoch=epoch).sent())
    epoch_file = paths.epoch_file(config.name, epoch)
    state = parts.network.state_dict()
    checkpoint.save_lora(epoch_file, state, config.precision.save, checkpoint.lora_metadata(
        config, epoch=epoch, step=progress.global_step, dataset=run.dataset, files=run.files,
        base_hash=run.hashes.dit, started=progress.started, session=progress.session,
        rank_dims=checkpoint.rank_and_alpha(state),
        schedule=ending.followed_schedule(progress, run.sizes, config)))
    record = EpochRecord(
        epoch=epoch, step=progress.global_step, loss=progress.loss_sum / max(1, progress.loss_count),
        eval_loss=eval_loss, eval_by_sigma=eval_by_sigma, lr=parts.scheduler.get_last_lr()[0],
        d_lr=effective_lr(parts.optimizer), prodigy_d=parts.optimizer.param_groups[0].get("d"),
        cooldown=progress.cooling(epoch), seconds=progress.epoch_seconds + time.perf_counter() - t_eval,
        eval_seconds=eval_seconds, file=str(epoch_file.relative_to(paths.root)), time=now_iso())
    run.tracker.epoch(record)
    log.info("epoch %d: loss %.5f, eval %.5f (eval took %.0f%% of the epoch)", epoch, record.loss,
             eval_loss, 100 * eval_seconds / max(1e-9, record.seconds))


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
