"""Epoch LoRA files (sd-scripts format + metadata) and the atomic resume state."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import io
import json
from pathlib import Path

import torch
from safetensors.torch import save

from animad import __version__
from animad.anima.facts import LORA_FILE_IDS
from animad.config.job import JobConfig
from animad.fsutil import write_atomic
from animad.train.networks import kind_named, kind_of_file
from animad.train.networks.network import file_modules
from animad.train.optim import default_lr

SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def save_lora(path: Path, state: dict[str, torch.Tensor], dtype: str, metadata: dict[str, str]) -> None:
    """Write a LoRA file atomically; a kill mid-write leaves no half file under the real name."""
    tensors = {k: v.detach().to("cpu", SAVE_DTYPES[dtype]).contiguous() for k, v in sorted(state.items())}
    metadata = dict(metadata)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = sshs_hashes(tensors, metadata)
    # Serialise in memory and write the bytes ourselves: safetensors' own file writer reports a
    # full disk as a SafetensorError without errno, and we need ENOSPC to tell the user what to do.
    write_atomic(path, save(tensors, metadata=metadata))


LEGACY_HASH_OFFSET = 0x100000  # sd-scripts' (and the webui's) old model hash reads 64 KiB from 1 MiB in
LEGACY_HASH_BYTES = 0x10000


def sshs_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """sshs_model_hash and sshs_legacy_hash, as sd-scripts' precalculate_safetensors_hashes computes them.

    Both hash the file sd-scripts would write with only the ss_* metadata (user metadata such as
    modelspec.* may be edited later, the training record may not). The model hash is sha256 over the
    bytes after the 8-byte header length and the header, i.e. the tensor data alone, which is what
    sd-webui-additional-networks recomputes from any copy of the file. The legacy hash is the first 8
    hex digits of sha256 over the 64 KiB at offset 1 MiB (empty, so sha256(b""), for smaller files).
    """
    data = save(tensors, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length:]).hexdigest()
    legacy_hash = hashlib.sha256(data[LEGACY_HASH_OFFSET:LEGACY_HASH_OFFSET + LEGACY_HASH_BYTES]).hexdigest()[:8]
    return model_hash, legacy_hash


def rank_and_alpha(state: dict[str, torch.Tensor]) -> tuple[int | None, float]:
    """The (dim, alpha) a network state holds, for ss_network_dim/alpha: read from the tensors, so a
    network continued from another file reports that file's rank (mixed ranks: the one most modules
    have). dim None: a LoKr with full matrices, which has no rank in its tensors."""
    kind = kind_of_file(state)
    counts = collections.Counter(kind.dim_alpha(state, name) for name in file_modules(state)) if kind else None
    if not counts:
        return 0, 0.0
    return max(counts, key=lambda pair: (counts[pair], pair[0] or 0))


@dataclasses.dataclass(frozen=True)
class FollowedSchedule:
    """The LR schedule an epoch file was trained on, and the run's end as known when it was written."""

    kind: str  # constant, cosine, ...
    warmup_steps: int
    end_epoch: int  # max_epochs, or the cooldown's last epoch once it is under way
    end_step: int
    cooldown_after: int | None = None  # the last epoch before the cooldown, when this file is in one
    cooldown_epochs: int = 0
    floor_confirmed: int | None = None  # the epoch the floor was confirmed after (None: cooled to reach the end)

    def describe(self) -> str:
        """In words, e.g. "constant, cooled linearly to 0 from epoch 31 over 6 epochs (floor confirmed at 30)"."""
        text = self.kind + (f" after {self.warmup_steps} warmup steps" if self.warmup_steps else "")
        if self.cooldown_after is None:
            return text
        why = (f"floor confirmed at epoch {self.floor_confirmed}" if self.floor_confirmed is not None
               else "to end at the last epoch")
        return (f"{text}, cooled linearly to 0 from epoch {self.cooldown_after + 1} over {self.cooldown_epochs} "
                f"epochs ({why})")


def number(value: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5": as sd-scripts writes an integral alpha."""
    return f"{value:g}"


def lora_metadata(config: JobConfig, *, epoch: int, step: int, dataset, files, base_hash: str, started: str,
                  rank_dims: tuple[int, float], session: str, schedule: FollowedSchedule) -> dict[str, str]:
    """ss_* keys (what LoRA inspectors and sd-scripts read) and ModelSpec 1.0.1 keys; Anima's ids come from anima/.

    What the counts mean (each file is true when written; the run's last file is true for the run):
    ss_epoch and ss_num_epochs are the epochs trained into this file, ss_steps its optimizer steps;
    ss_max_train_epochs / ss_max_train_steps are where the run is headed: max_epochs until a cooldown
    starts, then the cooldown's last epoch. ss_lr_scheduler is the schedule followed, in words.
    """
    net, opt, data, ts = config.network, config.optimizer, config.data, config.timesteps
    resolution = data.resolution if isinstance(data.resolution, list) else [data.resolution, data.resolution]
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    kind = kind_named(net.type)
    meta = {
        "ss_network_module": kind.network_module,
        **LORA_FILE_IDS,
        "ss_v2": "False",
        # A LoKr of full matrices has no rank in its tensors: the job's dim, as sd-scripts writes it.
        "ss_network_dim": str(net.dim if rank_dims[0] is None else rank_dims[0]),
        "ss_network_alpha": number(rank_dims[1]),
        "ss_network_dropout": str(net.dropout),
        "ss_network_args": kind.network_args(net),
        "ss_learning_rate": str(default_lr(opt)),
        "ss_unet_lr": str(default_lr(opt)),
        "ss_text_encoder_lr": str(opt.text_encoder_lr if opt.text_encoder_lr is not None else default_lr(opt)),
        "ss_optimizer": opt.type,
        "ss_lr_scheduler": schedule.describe(),
        "ss_lr_warmup_steps": str(schedule.warmup_steps),
        "ss_max_grad_norm": str(opt.max_grad_norm),
        "ss_epoch": str(epoch),
        "ss_steps": str(step),
        "ss_max_train_epochs": str(schedule.end_epoch),
        "ss_max_train_steps": str(schedule.end_step),
        "ss_batch_size_per_device": str(data.batch_size),
        "ss_gradient_accumulation_steps": str(data.grad_accum),
        "ss_resolution": f"({resolution[0]}, {resolution[1]})",
        "ss_enable_bucket": str(data.buckets),
        "ss_min_bucket_reso": str(data.min_bucket),
        "ss_max_bucket_reso": str(data.max_bucket),
        "ss_bucket_no_upscale": str(not data.upscale),
        "ss_num_train_images": str(dataset.samples_per_epoch()),
        "ss_num_epochs": str(epoch),
        "ss_mixed_precision": config.precision.mixed,
        "ss_gradient_checkpointing": str(config.precision.gradient_checkpointing),
        "ss_seed": str(config.seed),
        "ss_caption_dropout_rate": str(data.caption_dropout),
        "ss_caption_tag_dropout_rate": str(data.tag_dropout),
        "ss_shuffle_caption": str(data.shuffle_captions),
        "ss_keep_tokens": str(data.keep_tokens),
        "ss_flip_aug": str(data.flip),
        "ss_noise_offset": str(ts.noise_offset),
        # As sd-scripts writes them: str() of its argument, whose "off" is None.
        "ss_scale_weight_norms": str(net.scale_weight_norms),
        "ss_ip_noise_gamma": str(ts.ip_noise_gamma) if ts.ip_noise_gamma else "None",
        "ss_ip_noise_gamma_random_strength": str(ts.ip_noise_gamma_random_strength),
        "ss_timestep_sampling": "sigmoid" if ts.sampling == "logit_normal" else "uniform",
        "ss_sigmoid_scale": str(ts.logit_std),
        "ss_logit_mean": str(ts.logit_mean),
        "ss_logit_std": str(ts.logit_std),
        "ss_discrete_flow_shift": str(ts.shift),
        "ss_weighting_scheme": "none",
        "ss_tag_frequency": json.dumps(dataset.tag_frequency(), ensure_ascii=False),
        "ss_dataset_dirs": json.dumps({(s.name or "."): {"n_repeats": s.repeats, "img_count": sum(
            1 for i in dataset.items if dataset.subsets[i.subset] is s)} for s in dataset.subsets}),
        "ss_sd_model_name": Path(files.dit).name,
        "ss_sd_model_hash": base_hash,
        "ss_vae_name": Path(files.vae).name,
        "ss_text_encoder_name": Path(files.text_encoder).name,
        "ss_output_name": config.name or "",
        "ss_training_started_at": started,
        "ss_training_finished_at": now,
        "ss_session_id": session,
        "ss_trigger_word": config.trigger or "",
        "ss_training_comment": f"trained by animad {__version__}",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.title": f"{config.name} epoch {epoch}",
        "modelspec.author": config.author,
        "modelspec.description": config.description,
        "modelspec.date": now,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.trigger_phrase": config.trigger or "",
        "modelspec.hash_sha256": base_hash,
        "format": "pt",
    }
    return {k: v for k, v in meta.items() if v is not None}


def save_resume_state(path: Path, state: dict) -> None:
    """torch.save through a temp file + fsync + rename: a kill leaves the previous state intact.

    Beside it, resume.json says where that state stands (epoch, step), written after it: `animad
    status` tells the true resume point from it without loading torch (daemon/progress.saved_point).
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getbuffer())
    point = {"epoch": state.get("epoch"), "batch_index": state.get("batch_index"),
             "step": state.get("global_step"), "finished": bool(state.get("finished"))}
    write_atomic(Path(path).with_suffix(".json"), json.dumps(point).encode())


def load_resume_state(path: Path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    # weights_only=False: the state holds optimizer dicts and RNG states we wrote ourselves.
    return torch.load(path, map_location="cpu", weights_only=False)
