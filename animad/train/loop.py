"""The training loop: flat, top to bottom, in the order things happen.

    load models -> fill caches -> attach LoRA -> (resume) -> epochs of steps -> eval + save each epoch

Every micro-batch seeds its own randomness from (seed, epoch, batch index), and the epoch order is a
pure function of (seed, epoch). A resumed run therefore replays exactly what an uninterrupted run
would have done, and epoch/step counters come from the saved state, never from counting launches.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import random
import time
import uuid

import torch

from animad.errors import UserError
from animad.layout import JobPaths, read_epochs_log
from animad.anima import load as model_load
from animad.anima.files import ModelFiles
from animad.anima.text import T5Ids, TextEncoder, adapter_context, load_qwen_tokenizer
from animad.train import checkpoint
from animad.train.batches import epoch_plan, item_buckets, plan_length
from animad.train.caches import TensorCache, cache_latents, cache_texts, dir_fingerprint, model_fingerprint
from animad.train.captions import augment_caption, is_dynamic
from animad.train.ranks import SINGLE, Group, rank_device
from animad.train.evaluation import build_eval_set, evaluate
from animad.train.flow import flow_loss, noisy, sample_sigmas
from animad.train.lora import build_network, read_lora_file
from animad.train.optim import build_optimizer, build_scheduler, effective_lr
from animad.train.precision import resolve_precision
from animad.train.tracking import Tracker

log = logging.getLogger("animad.train")


def step_seed(seed: int, epoch: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{epoch}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def run_fingerprint(config, dataset, base_hash: str) -> str:
    """What a resume state must agree with: the model, the data and every shape-defining setting."""
    net = config.network
    parts = [base_hash, config.seed, net.dim, net.alpha, net.targets, net.blocks, net.include, net.exclude,
             net.train_llm_adapter, net.train_text_encoder, net.text_encoder_dim, config.optimizer.type,
             config.data.batch_size, config.data.grad_accum, dataset.samples_per_epoch(),
             [(i.rel, i.sha256, i.caption) for i in dataset.items]]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def load_text_encoder(files: ModelFiles, device, dtype) -> TextEncoder:
    model = model_load.load_text_encoder(files.text_encoder, device, dtype)
    return TextEncoder(model, load_qwen_tokenizer(files.qwen_tokenizer), T5Ids(files.t5_tokenizer))


def run_training(paths: JobPaths, config, files: ModelFiles, dataset, *, cache_dir, should_stop,
                 on_progress, group: Group = SINGLE) -> str:
    """Train or resume; returns "finished" or "paused" (state saved at a step boundary).

    With several ranks (train/distributed.py) only rank 0 writes files, logs and reports.
    """
    precision = resolve_precision(config, rank_device(group.rank) if group.world > 1 else None)
    device, weight_dtype = precision.device, precision.weight_dtype
    state = checkpoint.load_resume_state(paths.resume_state)
    if state and state.get("finished"):
        log.info("training already finished at epoch %s", state["epoch"] - 1)
        return "finished"
    if state and state.get("world", 1) != group.world:
        raise UserError(f"{paths.resume_state}: this job was started on {state.get('world', 1)} GPU(s) and would "
                        f"resume on {group.world}. Set gpus: {state.get('world', 1)} in animad.yaml to resume it "
                        "(the schedule and step counts depend on it), or start a new job.")
    name = config.name
    cache = TensorCache(cache_dir)

    # 1) Fingerprints: cache keys, resume safety and the base-model hash in the LoRA metadata.
    #    Rank 0 hashes and caches first; the other ranks then find everything in the cache.
    on_progress({"phase": "loading"})
    if not group.is_main:
        group.barrier()
    dit_hash = model_fingerprint(files.dit, cache_dir)
    te_hash = model_fingerprint(files.text_encoder, cache_dir)
    vae_hash = model_fingerprint(files.vae, cache_dir)
    tokenizer_hash = hashlib.sha256((dir_fingerprint(files.qwen_tokenizer) + dir_fingerprint(
        files.t5_tokenizer)).encode()).hexdigest()
    fingerprint = run_fingerprint(config, dataset, dit_hash)
    if state and state.get("fingerprint") != fingerprint:
        raise UserError(f"{paths.resume_state}: the saved state belongs to a different model, dataset or network "
                        "setup than this job now has. Start a new job (or move the state/ folder away to start "
                        "this one over).")

    # 2) Caches. The VAE is loaded only for images not cached yet, and dropped right after.
    on_progress({"phase": "caching"})
    buckets = item_buckets(dataset, config.data)
    t0 = time.perf_counter()
    latents = cache_latents(dataset, buckets, lambda: model_load.load_vae(files.vae, device, weight_dtype),
                            vae_hash, cache,
                            on_item=lambda done, total: on_progress({"phase": "caching", "done": done,
                                                                     "total": total}))
    dynamic = any(is_dynamic(s) for s in dataset.subsets) or config.network.train_text_encoder or (
        not config.precision.cache_text)
    text_encoder = load_text_encoder(files, device, weight_dtype) if dynamic else None
    texts = cache_texts([i.caption for i in dataset.items], lambda: text_encoder or load_text_encoder(
        files, device, weight_dtype), te_hash, tokenizer_hash, cache)
    cache_seconds = time.perf_counter() - t0
    if group.is_main:
        group.barrier()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("caches ready in %.1fs (%d images; text encoder %s)", cache_seconds, len(dataset.items),
             "runs in the loop (captions change every step)" if dynamic else "cached and unloaded")

    # 3) Models and the LoRA network. Base weights are frozen in the training dtype; LoRA stays fp32.
    dit, adapter = model_load.load_dit(files.dit, device, weight_dtype)
    for module in (dit, adapter, text_encoder.model if text_encoder else None):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    dit.gradient_checkpointing = config.precision.gradient_checkpointing
    init_state = None
    if config.network.init_from:
        from animad.config.daemon import resolve_path

        init_path = resolve_path(paths.dataset, config.network.init_from)
        try:
            init_state = read_lora_file(init_path)
        except (OSError, ValueError) as error:
            raise UserError(f"network.init_from: cannot read {init_path}: {error}") from None
    torch.manual_seed(config.seed)  # LoRA init must not depend on what ran before (caching, loading)
    network = build_network(dit, adapter, text_encoder.model if text_encoder else None, config.network, init_state)
    network.to(device=device, dtype=torch.float32)
    if config.precision.compile:
        compile_blocks(dit, device)
    optimizer = build_optimizer(network.unet_parameters(), network.text_encoder_parameters(), config.optimizer)
    batch_size, accum = config.data.batch_size, config.data.grad_accum
    batches_per_epoch = plan_length(dataset, buckets, batch_size)
    batches_per_step = accum * group.world  # one optimizer step consumes this many batches of the plan
    steps_per_epoch = math.ceil(batches_per_epoch / batches_per_step)
    max_epochs = config.schedule.max_epochs
    total_steps = config.schedule.max_steps or steps_per_epoch * max_epochs
    scheduler = build_scheduler(optimizer, config.schedule, total_steps)
    scaler = torch.amp.GradScaler(device.type) if precision.mixed == "fp16" else None
    samples_per_epoch = dataset.samples_per_epoch()
    eval_set = build_eval_set(dataset, latents, config.eval, config.timesteps, config.seed, samples_per_epoch)
    params = [p for p in network.parameters() if p.requires_grad]
    log.info("LoRA: %d modules, %.2fM parameters; %d steps/epoch, %d epochs max; eval on %d images x %d sigmas%s",
             len(network.loras), sum(p.numel() for p in params) / 1e6, steps_per_epoch, max_epochs,
             len(eval_set.items), len(eval_set.sigmas), f"; {group.world} GPUs" if group.world > 1 else "")

    # 4) Resume: every counter comes from the state, so any number of resumes keeps them true.
    epoch, batch_index, global_step = 1, 0, 0
    loss_sum, loss_count = 0.0, 0
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    session = uuid.uuid4().hex
    if state:
        network.load_state_dict(state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, batch_index, global_step = state["epoch"], state["batch_index"], state["global_step"]
        loss_sum, loss_count = state["loss_sum"], state["loss_count"]
        started, session = state["started"], state["session"]
        log.info("resuming at epoch %d, batch %d/%d (optimizer step %d)", epoch, batch_index, batches_per_epoch,
                 global_step)
    tracker = Tracker(paths.tensorboard, paths.epochs_log, global_step, epoch - 1) if group.is_main else NoTracker()
    if group.is_main:
        checkpoint_cleanup(paths)

    def snapshot(finished: bool = False) -> None:
        if not group.is_main:
            return
        checkpoint.save_resume_state(paths.resume_state, {
            "lora": network.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
            "batch_index": batch_index, "global_step": global_step, "loss_sum": loss_sum,
            "loss_count": loss_count, "started": started, "session": session, "fingerprint": fingerprint,
            "finished": finished, "rng_cpu": torch.get_rng_state(), "world": group.world})

    def encode_batch(captions: list[str], live: list[bool]):
        """Cached embeddings where the caption is fixed; the text encoder for shuffled ones."""
        out = [texts.get(c) if not use_live else None for c, use_live in zip(captions, live)]
        todo = [i for i, e in enumerate(out) if e is None]
        if todo:
            grad = torch.enable_grad() if config.network.train_text_encoder else torch.no_grad()
            with grad, precision.autocast():
                for i, emb in zip(todo, text_encoder.encode([captions[i] for i in todo])):
                    out[i] = emb
        return out

    def velocity(x_t, sigma, embeddings):
        with precision.autocast(), precision.attention_context():
            context = adapter_context(adapter, embeddings, device, weight_dtype)
            return dit(x_t, sigma, context)

    def eval_step(x_t, sigma, captions):
        return velocity(x_t.to(device), sigma.to(device), [texts[c] for c in captions])

    def train_micro_batch(batch, batch_number: int) -> torch.Tensor:
        rng = random.Random(step_seed(config.seed, epoch, batch_number))
        torch.manual_seed(step_seed(config.seed, epoch, batch_number))
        items = [dataset.items[i] for i in batch.items]
        subsets = [dataset.subsets[i.subset] for i in items]
        x0 = torch.stack([latents[i].flipped if s.flip and rng.random() < 0.5 else latents[i].latents
                          for i, s in zip(batch.items, subsets)]).to(device)
        mask = None
        if any(s.alpha_mask for s in subsets):
            mask = torch.stack([latents[i].mask if latents[i].mask is not None else torch.ones(
                1, *x0.shape[-2:]) for i in batch.items]).to(device)
        captions = [augment_caption(item.caption, subset, rng) for item, subset in zip(items, subsets)]
        live = [text_encoder is not None and (is_dynamic(s) or config.network.train_text_encoder or
                                              c not in texts) for s, c in zip(subsets, captions)]
        noise = torch.randn_like(x0)
        if config.timesteps.noise_offset:
            noise = noise + config.timesteps.noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1,
                                                                        device=device)
        sigma = sample_sigmas(x0.shape[0], config.timesteps, device)
        prediction = velocity(noisy(x0, noise, sigma), sigma, encode_batch(captions, live))
        return flow_loss(prediction, x0, noise, mask).mean()

    def end_epoch(epoch: int, global_step: int, average_loss: float, seconds: float) -> None:
        on_progress({"phase": "eval", "epoch": epoch})
        t_eval = time.perf_counter()
        network.eval()
        eval_loss, eval_by_sigma = evaluate(eval_set, dataset, latents, texts, eval_step)
        network.train()
        eval_seconds = time.perf_counter() - t_eval
        on_progress({"phase": "saving", "epoch": epoch})
        epoch_file = paths.epoch_file(name, epoch)
        checkpoint.save_lora(epoch_file, network.state_dict(), config.precision.save, checkpoint.lora_metadata(
            config, epoch=epoch, step=global_step, dataset=dataset, files=files, base_hash=dit_hash,
            started=started, rank_dims=(config.network.dim, config.network.alpha or config.network.dim),
            session=session))
        record = {"epoch": epoch, "step": global_step, "loss": average_loss, "eval_loss": eval_loss,
                  "eval_by_sigma": eval_by_sigma, "lr": scheduler.get_last_lr()[0], "d_lr": effective_lr(optimizer),
                  "prodigy_d": optimizer.param_groups[0].get("d"), "seconds": seconds + time.perf_counter() - t_eval,
                  "eval_seconds": eval_seconds, "file": str(epoch_file.relative_to(paths.root)),
                  "time": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        tracker.epoch(record)
        log.info("epoch %d: loss %.5f, eval %.5f (eval took %.0f%% of the epoch)", epoch, record["loss"],
                 eval_loss, 100 * eval_seconds / max(1e-9, record["seconds"]))

    # 5) The loop.
    network.train()
    last_state_save = time.monotonic()
    step_times: list[float] = []
    reason = f"reached max_epochs {max_epochs}"
    try:
        while epoch <= max_epochs and not (config.schedule.max_steps and global_step >= config.schedule.max_steps):
            plan = epoch_plan(dataset, buckets, batch_size, config.seed, epoch)
            epoch_start = time.perf_counter()
            while batch_index < len(plan):
                t_step = time.perf_counter()
                batches = plan[batch_index: batch_index + batches_per_step]
                step_loss, bad_loss = 0.0, None
                for offset, batch in group.share(batches):
                    loss = train_micro_batch(batch, batch_index + offset)
                    if not torch.isfinite(loss):
                        bad_loss = loss.item()
                        break
                    scaled = loss / len(batches)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    step_loss += loss.item() / len(batches)
                step_loss, bad = group.sum([step_loss, 1.0 if bad_loss is not None else 0.0])
                if bad:
                    raise UserError(f"loss became {bad_loss if bad_loss is not None else 'NaN/inf'} at epoch {epoch}, "
                                    f"step {global_step + 1}. Lower the learning rate, or use precision.mixed: bf16 "
                                    "instead of fp16.")
                group.sum_grads(params)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if config.optimizer.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, config.optimizer.max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                batch_index += len(batches)
                global_step += 1
                loss_sum += step_loss
                loss_count += 1
                step_times.append(time.perf_counter() - t_step)
                s_per_it = sum(step_times[-20:]) / len(step_times[-20:])
                lr = scheduler.get_last_lr()[0]
                tracker.step(global_step, step_loss, lr, effective_lr(optimizer))
                remaining = total_steps - global_step
                on_progress({"phase": "training", "epoch": epoch, "max_epochs": max_epochs, "step": global_step,
                             "total_steps": total_steps, "step_in_epoch": math.ceil(batch_index / batches_per_step),
                             "steps_per_epoch": steps_per_epoch, "loss": loss_sum / loss_count,
                             "s_per_it": s_per_it, "eta_seconds": remaining * s_per_it})
                if group.any(should_stop()):
                    snapshot()
                    log.info("stopped at epoch %d, step %d; state saved", epoch, global_step)
                    return "paused"
                minutes = config.schedule.state_every_minutes
                if minutes and time.monotonic() - last_state_save > minutes * 60:
                    snapshot()
                    last_state_save = time.monotonic()
                if config.schedule.max_steps and global_step >= config.schedule.max_steps:
                    break

            # End of epoch (rank 0): stable eval, the epoch file, the log line, then the state.
            if group.is_main:
                end_epoch(epoch, global_step, loss_sum / max(1, loss_count), time.perf_counter() - epoch_start)
            epoch, batch_index, loss_sum, loss_count = epoch + 1, 0, 0.0, 0
            floor = group.is_main and config.selection.stop_at_floor and floor_confirmed(paths, config)
            if group.any(floor):  # also where the other ranks wait for rank 0's eval and save
                reason = f"stopped at the confirmed loss floor after epoch {epoch - 1}"
                snapshot(finished=True)
                break
            snapshot(finished=epoch > max_epochs)
            last_state_save = time.monotonic()
        else:
            snapshot(finished=True)
    finally:
        tracker.close()
    log.info("training finished: %s", reason)
    if group.is_main:
        (paths.root / "finished.txt").write_text(reason + "\n")
    return "finished"


class NoTracker:
    """What ranks other than 0 log to: nothing (rank 0 reports for the whole job)."""

    def step(self, *args) -> None:
        pass

    def epoch(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def floor_confirmed(paths: JobPaths, config) -> bool:
    """Ask the floor detector about the eval curve so far (the same rule select/ uses afterwards)."""
    from animad.select.shortlist import analyze_curve

    records = read_epochs_log(paths.epochs_log)
    epochs = [r["epoch"] for r in records]
    losses = [r["eval_loss"] if r.get("eval_loss") is not None else r["loss"] for r in records]
    sel = config.selection
    analysis = analyze_curve(epochs, losses, patience=sel.patience, shortlist_size=sel.shortlist_size,
                             min_epoch=sel.min_epoch)
    return analysis.status == "floor"


def checkpoint_cleanup(paths: JobPaths) -> None:
    """Remove our own half-written temp files left by a kill mid-save."""
    from animad.fsutil import remove_stale_temp_files

    for directory in (paths.epochs_dir, paths.state_dir, paths.root):
        remove_stale_temp_files(directory)


def compile_blocks(dit, device, backend: str | None = None) -> None:
    """torch.compile each DiT block separately: compiles fast, and checkpointing still wraps whole blocks."""
    import os

    backend = backend or os.environ.get("ANIMAD_COMPILE_BACKEND") or ("inductor" if device.type == "cuda"
                                                                        else "eager")
    for block in dit.blocks:
        block.compile(backend=backend, dynamic=False)

