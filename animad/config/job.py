"""job.yaml: what one training job says, with the defaults our users' guides use.

Every key is optional; an empty job.yaml trains with these defaults. The dataclasses below are the
single source of truth: validation, the resolved config written next to a frozen job, LoRA metadata
and the example in inbox/README.md all come from them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from animad.anima.facts import LORA_TARGET_GROUPS, SIDE_MULTIPLE
from animad.config.problems import ConfigError, Problems
from animad.config.schema import option, parse, section, to_dict
from animad.config.yamlio import load_yaml_file


@dataclasses.dataclass
class ModelFileOptions:
    dit: str | None = option(None, "Anima DiT .safetensors (ComfyUI models/diffusion_models).",
                             example="~/ComfyUI/models/diffusion_models/anima-base-v1.0.safetensors")
    text_encoder: str | None = option(None, "Qwen3-0.6B text encoder .safetensors (models/text_encoders).",
                                      example="~/ComfyUI/models/text_encoders/qwen_3_06b_base.safetensors")
    vae: str | None = option(None, "Qwen-Image VAE .safetensors (models/vae).",
                             example="~/ComfyUI/models/vae/qwen_image_vae.safetensors")


@dataclasses.dataclass
class NetworkConfig:
    dim: int = option(16, "LoRA rank.", min=1, max=1024)
    alpha: float | None = option(None, "LoRA alpha; null means alpha = dim (scale 1.0).", min=0)
    dropout: float = option(0.0, "Dropout on the LoRA down-projection output.", min=0, max=0.99)
    rank_dropout: float = option(0.0, "Drop whole ranks per sample (rescaled).", min=0, max=0.99)
    module_dropout: float = option(0.0, "Skip a whole LoRA module for a step with this probability.", min=0, max=0.99)
    targets: list[str] = option(list(LORA_TARGET_GROUPS),
                                "Which DiT linears get LoRA: self_attn (q/k/v/output), cross_attn, mlp.",
                                choices=LORA_TARGET_GROUPS)
    blocks: list[int] | None = option(None, "Only these DiT block indices (null = all blocks).", min=0,
                                      example=[0, 1, 2])
    include: list[str] = option([], "Extra module-name regexes to add (e.g. 'final_layer.linear').")
    exclude: list[str] = option([], "Module-name regexes to leave out (e.g. 'blocks\\.2[0-7]\\..*').")
    train_llm_adapter: bool = option(False, "Also put LoRA on the LLM adapter (off in all the guides).")
    train_text_encoder: bool = option(False, "Also train a LoRA on the Qwen3 text encoder.")
    text_encoder_dim: int | None = option(None, "Rank for the text-encoder LoRA (null = dim).", min=1)
    init_from: str | None = option(None, "Continue from this LoRA file (relative to the job folder or absolute).",
                                   example="previous-outfit.safetensors")


@dataclasses.dataclass
class OptimizerConfig:
    type: str = option("prodigy", "prodigy, adamw, adamw8bit or adafactor.",
                       choices=("prodigy", "adamw", "adamw8bit", "adafactor"))
    lr: float | None = option(None, "Learning rate. null: 1.0 for Prodigy, 1e-4 for the others.", min=0)
    text_encoder_lr: float | None = option(None, "Text-encoder LoRA learning rate (null = lr).", min=0)
    weight_decay: float = option(0.1, "Decoupled weight decay.", min=0)
    betas: list[float] = option([0.9, 0.99], "Adam/Prodigy betas.", min=0, max=1)
    eps: float = option(1e-8, "Adam/Prodigy epsilon.", min=0)
    d_coef: float = option(1.0, "Prodigy: multiplier on the adapted step size d.", min=0)
    safeguard_warmup: bool = option(True, "Prodigy: safeguard warmup (use with a warmup schedule).")
    use_bias_correction: bool = option(True, "Prodigy: Adam-style bias correction.")
    max_grad_norm: float = option(1.0, "Clip gradients to this norm (0 = off).", min=0)


@dataclasses.dataclass
class ScheduleConfig:
    type: str = option("cosine", "cosine, cosine_with_restarts, constant or linear.",
                       choices=("cosine", "cosine_with_restarts", "constant", "linear"))
    cycles: int = option(1, "Restart cycles for cosine_with_restarts.", min=1)
    warmup_steps: int = option(0, "Linear warmup optimizer steps.", min=0)
    warmup_percent: float = option(0.0, "Warmup as a fraction of all steps (used when warmup_steps is 0).",
                                   min=0, max=0.5)
    max_epochs: int = option(200, "Stop after this many epochs (the floor detector usually stops earlier).",
                             min=1, max=100000)
    max_steps: int | None = option(None, "Stop after this many optimizer steps (null = by epochs).", min=1)
    state_every_minutes: float = option(10.0, "Also save the resume state this often within an epoch "
                                              "(it is always saved at epoch ends and when stopping).", min=0.0)


@dataclasses.dataclass
class SubsetConfig:
    repeats: int | None = option(None, "Repeats per epoch (a '10_name' folder prefix also sets 10).", min=1)
    keep_tokens: int | None = option(None, "Leading tags kept in place when shuffling.", min=0)
    class_tokens: str | None = option(None, "Caption for images that have no caption file.")
    shuffle_captions: bool | None = option(None, "Shuffle comma-separated tags.")
    tag_dropout: float | None = option(None, "Drop each non-kept tag with this probability.", min=0, max=1)
    caption_dropout: float | None = option(None, "Train with the empty caption this often.", min=0, max=1)
    flip: bool | None = option(None, "Random horizontal flips.")
    alpha_mask: bool | None = option(None, "Use PNG alpha as a loss mask.")


@dataclasses.dataclass
class DataConfig:
    resolution: int | list[int] = option(1024, "Training resolution: 1024, or [width, height].", min=64,
                                         example=[1024, 1024])
    buckets: bool = option(True, "Aspect-ratio buckets.")
    min_bucket: int = option(256, "Smallest bucket side.", min=64)
    max_bucket: int = option(2048, "Largest bucket side (Anima's RoPE table allows 2048).", min=64, max=2048)
    bucket_step: int = option(64, "Bucket side step (a multiple of 16).", min=16)
    upscale: bool = option(False, "Upscale small images to the training area.")
    batch_size: int = option(4, "Images per step.", min=1, max=256)
    grad_accum: int = option(1, "Gradient accumulation steps.", min=1)
    repeats: int = option(1, "Default repeats per epoch.", min=1)
    shuffle_captions: bool = option(True, "Shuffle comma-separated tags (text encoder then runs in the loop).")
    keep_tokens: int = option(1, "Leading tags kept in place when shuffling (the trigger).", min=0)
    tag_dropout: float = option(0.0, "Drop each non-kept tag with this probability.", min=0, max=1)
    caption_dropout: float = option(0.0, "Train with the empty caption this often.", min=0, max=1)
    flip: bool = option(False, "Random horizontal flips.")
    alpha_mask: bool = option(False, "Use PNG alpha channels as loss masks.")
    caption_extension: str = option(".txt", "Caption file extension.")
    subsets: dict[str, SubsetConfig] = option({}, "Per-subfolder overrides, keyed by subfolder name.",
                                              example={"10_outfit_a": {"keep_tokens": 2}})


@dataclasses.dataclass
class PrecisionConfig:
    mixed: str = option("auto", "auto (bf16 on a GPU, fp32 on the CPU), bf16, fp16 or fp32.",
                        choices=("auto", "bf16", "fp16", "fp32"))
    save: str = option("bf16", "dtype of saved LoRA files: bf16, fp16 or fp32.", choices=("bf16", "fp16", "fp32"))
    gradient_checkpointing: bool = option(True, "Recompute activations to save memory.")
    attention: str = option("auto", "auto (SDPA; flash where available), sdpa, flash or math.",
                            choices=("auto", "sdpa", "flash", "math"))
    compile: bool = option(False, "torch.compile each DiT block (GPU; slower start, faster steps).")
    cache_latents: bool = option(True, "Cache VAE latents on disk (always on; kept for sd-scripts users).")
    cache_text: bool = option(True, "Cache text embeddings when captions are fixed (no shuffle/dropout).")


@dataclasses.dataclass
class TimestepConfig:
    sampling: str = option("logit_normal", "logit_normal (sd-scripts' Anima default) or uniform.",
                           choices=("logit_normal", "uniform"))
    logit_mean: float = option(0.0, "Mean of the logit-normal.")
    logit_std: float = option(1.0, "Std of the logit-normal.", min=0.01)
    shift: float = option(1.0, "Flow shift applied to sampled sigmas (1.0 = none; 3.0 = 'shifted').", min=0.01)
    noise_offset: float = option(0.0, "Noise offset.", min=0)


@dataclasses.dataclass
class EvalConfig:
    images: int | None = option(None, "Images in the stable eval set (null = chosen to cost ~10% of an epoch).",
                                min=1)
    sigmas: int = option(8, "Fixed sigmas spread over the training timestep distribution.", min=1, max=64)


@dataclasses.dataclass
class SelectionConfig:
    stop_at_floor: bool = option(True, "Stop training once the loss floor is confirmed.")
    patience: int = option(15, "Epochs after a candidate floor before it counts as confirmed.", min=2)
    shortlist_size: int = option(4, "Epochs in the shortlist.", min=1, max=6)
    min_epoch: int = option(1, "Never pick or stop before this epoch.", min=1)


@dataclasses.dataclass
class PreviewConfig:
    prompts: list[str] = option([], "Preview prompts (empty: built from the dataset, see the docs).")
    negative_prompt: str = option("", "Negative prompt for CFG.")
    seeds: list[int] = option([], "One fixed seed per prompt (empty: 1000, 1001, ...).", min=0)
    steps: int = option(30, "Sampler steps.", min=1, max=200)
    cfg: float = option(4.0, "Classifier-free guidance scale.", min=0)
    flow_shift: float = option(3.0, "Flow shift of the sampling schedule (ComfyUI uses 3.0).", min=0.01)
    sampler: str = option("euler", "Sampler (Euler on the flow).", choices=("euler",))
    width: int = option(1024, "Preview width (a multiple of 16).", min=64, max=2048)
    height: int = option(1024, "Preview height (a multiple of 16).", min=64, max=2048)
    strengths: list[float] = option([1.0], "LoRA strengths to render.", min=0)


@dataclasses.dataclass
class JobConfig:
    name: str | None = option(None, "Job and LoRA file name (default: the folder name).")
    trigger: str | None = option(None, "Trigger word, expected as the first tag of every caption.",
                                 example="@boerboer")
    author: str = option("", "Written into the LoRA metadata.")
    description: str = option("", "Written into the LoRA metadata.")
    base_model: str | None = option(None, "A model set named in animad.yaml (null = the configured default).")
    model_files: ModelFileOptions = section(ModelFileOptions, "Explicit model files; they override base_model.")
    network: NetworkConfig = section(NetworkConfig, "LoRA network.")
    optimizer: OptimizerConfig = section(OptimizerConfig, "Optimizer.")
    schedule: ScheduleConfig = section(ScheduleConfig, "Learning-rate schedule and length.")
    data: DataConfig = section(DataConfig, "Dataset handling.")
    precision: PrecisionConfig = section(PrecisionConfig, "Precision, memory and speed.")
    timesteps: TimestepConfig = section(TimestepConfig, "Timestep sampling.")
    eval: EvalConfig = section(EvalConfig, "Stable evaluation loss (the curve the floor detector reads).")
    selection: SelectionConfig = section(SelectionConfig, "Loss floor and shortlist.")
    previews: PreviewConfig = section(PreviewConfig, "Preview rendering for the review package.")
    priority: int = option(0, "Queue priority: higher runs first; equal priorities run in drop order.",
                           min=-100, max=100)
    device: str = option("auto", "auto, cuda, cuda:N or cpu.")
    seed: int = option(0, "Seed for data order, noise and timesteps.", min=0)


def parse_job(data: dict | None, file, problems: Problems) -> JobConfig:
    config = parse(JobConfig, data, file, problems)
    check_job_logic(config, file, problems)
    return config


def check_job_logic(config: JobConfig, file, problems: Problems) -> None:
    """Cross-field checks that a per-key type check cannot see."""
    data = config.data
    if isinstance(data.resolution, list):
        if len(data.resolution) != 2:
            problems.error(file, "data.resolution", f"{data.resolution} is not [width, height]",
                           "write one number (1024) or two ([1024, 768])")
        sides = data.resolution
    else:
        sides = [data.resolution]
    # Image sides become latent sides (/8) cut into 2x2 patches: they must divide by 16.
    for side in sides:
        if isinstance(side, int) and side % SIDE_MULTIPLE:
            problems.error(file, "data.resolution", f"{side} is not a multiple of {SIDE_MULTIPLE}",
                           f"use {side - side % SIDE_MULTIPLE or SIDE_MULTIPLE}")
    if data.bucket_step % SIDE_MULTIPLE:
        problems.error(file, "data.bucket_step", f"{data.bucket_step} is not a multiple of {SIDE_MULTIPLE}",
                       f"use 64 (the guides' value) or another multiple of {SIDE_MULTIPLE}")
    if data.min_bucket > data.max_bucket:
        problems.error(file, "data.min_bucket", f"min_bucket {data.min_bucket} > max_bucket {data.max_bucket}",
                       "make min_bucket smaller than max_bucket")
    for side_key in ("width", "height"):
        if getattr(config.previews, side_key) % SIDE_MULTIPLE:
            problems.error(file, f"previews.{side_key}", f"must be a multiple of {SIDE_MULTIPLE}",
                           "use 1024, 896 or 1152")
    if len(config.optimizer.betas) != 2:
        problems.error(file, "optimizer.betas", "needs exactly two values", "for example: [0.9, 0.99]")
    if config.previews.seeds and config.previews.prompts and len(config.previews.seeds) not in (
            1, len(config.previews.prompts)):
        problems.error(file, "previews.seeds", f"{len(config.previews.seeds)} seeds for "
                       f"{len(config.previews.prompts)} prompts", "give one seed, or one seed per prompt")
    if not config.network.targets and not config.network.include and not config.network.train_llm_adapter:
        problems.error(file, "network.targets", "no module would be trained",
                       "list at least one of self_attn, cross_attn, mlp")
    if config.network.train_text_encoder and config.precision.cache_text:
        pass  # resolved later: the text encoder simply runs in the loop when it is trained.
    import re

    for key in ("include", "exclude"):
        for index, pattern in enumerate(getattr(config.network, key)):
            try:
                re.compile(pattern)
            except re.error as error:
                problems.error(file, f"network.{key}[{index}]", f"bad regular expression: {error}",
                               "escape dots as '\\.'")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        problems.error(file, "device", f"'{config.device}' is not a device", "use auto, cuda, cuda:0 or cpu")


def load_job_file(path: Path, problems: Problems) -> JobConfig | None:
    """Read job.yaml; returns None when it cannot be read or parsed (problems say why)."""
    data = load_yaml_file(path, problems)
    if data is None:
        return None
    return parse_job(data, path, problems)


def load_resolved(path: Path) -> JobConfig:
    """Load a resolved config written by animad (job.resolved.yaml). Raises ConfigError."""
    problems = Problems()
    config = load_job_file(path, problems)
    if problems or config is None:
        raise ConfigError(problems, f"Resolved job config {path}")
    return config


def resolved_dict(config: JobConfig) -> dict:
    return to_dict(config)
