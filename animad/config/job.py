"""job.yaml: what one training job says, with the defaults our users' guides use.

Every key is optional; an empty job.yaml trains with these defaults. The dataclasses below are the
single source of truth: validation, the resolved config written next to a frozen job, LoRA metadata
and the example in inbox/README.md all come from them. Each option's help says why its default is
what it is (a guide, the spec, a measurement or a reason), and the example file shows it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from animad.anima.comfyui import CFG, HEIGHT, NEGATIVE_PROMPT, SAMPLER, SCHEDULER, SHIFT, STEPS, WIDTH
from animad.anima.facts import LORA_TARGET_GROUPS, SIDE_MULTIPLE
from animad.config.problems import ConfigError, Problems
from animad.config.schema import option, parse, section, template, to_dict
from animad.config.yamlio import load_yaml_file


# What `data.batch_size: auto` means. The guides keep a step's batch at or under 10% of the
# dataset's images (more and each step averages over most of a small set, which trains it worse);
# 4 is the spec's batch for larger sets. Distinct images count, not repeats: repeating an image
# does not make a step's batch more varied.
AUTO_BATCH_SHARE = 10
AUTO_BATCH_MAX = 4


def auto_batch_size(images: int) -> int:
    """The batch that `auto` resolves to: images // 10, at least 1 and at most 4."""
    return max(1, min(AUTO_BATCH_MAX, images // AUTO_BATCH_SHARE))


@dataclasses.dataclass
class ModelFileOptions:
    dit: str | None = option(None, "Anima DiT .safetensors (ComfyUI models/diffusion_models). null: the base_model "
                                   "set's file, so the paths live once in animad.yaml and job folders stay portable.",
                             example="~/ComfyUI/models/diffusion_models/anima-base-v1.0.safetensors")
    text_encoder: str | None = option(None, "Qwen3-0.6B text encoder .safetensors (models/text_encoders). null: the "
                                            "base_model set's file.",
                                      example="~/ComfyUI/models/text_encoders/qwen_3_06b_base.safetensors")
    vae: str | None = option(None, "Qwen-Image VAE .safetensors (models/vae). null: the base_model set's file.",
                             example="~/ComfyUI/models/vae/qwen_image_vae.safetensors")


@dataclasses.dataclass
class NetworkConfig:
    type: str = option("lora", "Network kind: lora, lokr or loha, as sd-scripts' networks/lokr.py and loha.py (and "
                               "LyCORIS) write them; ComfyUI's LoRA loader nodes load all three as they are. lora "
                               "(the default) is the guides' kind and the one their settings are tuned for: ~46 MB a "
                               "file at dim 16. lokr (w1 kron w2 per layer) is the kind Anima users ask for most for "
                               "styles, and small: 1.9 MB at dim 16, 3.2 MB with full matrices (dim 100000) at factor "
                               "-1, 55 MB full at factor 8; its step costs 1.0-1.4x a lora's. loha ((w1a w1b) * (w2a "
                               "w2b) per layer) reaches rank dim^2 with 2x a lora's values (92 MB at dim 16) and "
                               "a step of 1.1-1.6x a lora's (both measured on the CPU: bench/network_forms.py). Sizes are bf16 files on the full DiT, "
                               "computed from its shapes (bench/network_sizes.py). lokr and loha take no "
                               "network.dropout or scale_weight_norms (sd-scripts has neither for them).",
                         choices=("lora", "lokr", "loha"))
    factor: int = option(-1, "LoKr: the Kronecker factor of each linear's out/in sizes. -1 (sd-scripts' and "
                             "LyCORIS' default) splits each size as evenly as it can (2048 = 32 x 64): the "
                             "smallest files. A positive factor f makes w1 f x f and w2 the rest: full-matrix "
                             "files of 14 MB at 16, 55 MB at 8, 220 MB at 4. Only for network.type: lokr.", min=-1)
    dim: int = option(16, "Rank. lora: the rank of up/down; 16 is the spec's default: room for a character with "
                          "several outfits (the guide's single-concept runs use 4-8); each epoch file is ~46 MB in "
                          "bf16 (computed from the DiT's shapes, all three target groups). lokr: the rank of w2; "
                          "at least half of w2's larger side (e.g. 100000, as sd-scripts configs write it) trains "
                          "w2 as a full matrix at scale 1. loha: the rank of both pairs.", min=1, max=100000)
    alpha: float | None = option(None, "LoRA alpha. null means alpha = dim (scale 1.0), as in every guide run "
                                       "(4/4, 8/8), so the learning rate does not change with the rank.", min=0)
    dropout: float = option(0.0, "Dropout on the LoRA down-projection output. 0 (the spec's default): stop-at-floor "
                                 "ends the run near the loss floor instead; the guide's Panchy run uses 0.1.",
                            min=0, max=0.99)
    rank_dropout: float = option(0.0, "Drop whole ranks per sample (rescaled). 0 as sd-scripts' default; the "
                                      "guide's Panchy run uses 0.1.", min=0, max=0.99)
    module_dropout: float = option(0.0, "Skip a whole LoRA module for a step with this probability. 0 as "
                                        "sd-scripts' default; the guide's Panchy run uses 0.1.", min=0, max=0.99)
    targets: list[str] = option(list(LORA_TARGET_GROUPS),
                                "Which DiT linears get LoRA: self_attn (q/k/v/output), cross_attn, mlp. All three, "
                                "as sd-scripts' lora_anima and the guides train them.",
                                choices=LORA_TARGET_GROUPS)
    blocks: list[int] | None = option(None, "Only these DiT block indices. null = all blocks (28 in Anima), as "
                                            "the guides train; a subset is for experiments.", min=0, example=[0, 1, 2])
    include: list[str] = option([], "Extra module-name regexes to add (e.g. 'final_layer.linear'). Empty: the "
                                    "targets above are what the guides train.")
    exclude: list[str] = option([], "Module-name regexes to leave out (e.g. 'blocks\\.2[0-7]\\..*'). Empty: no "
                                    "block is left out.")
    train_llm_adapter: bool = option(False, "Also put LoRA on the LLM adapter. Off in all the guides: it maps "
                                            "Qwen3 into T5 space and is shared by every prompt.")
    train_text_encoder: bool = option(False, "Also train a LoRA on the Qwen3 text encoder. Off, as in the guides: "
                                             "it keeps the encoder in the loop (slower) and older ComfyUI cannot "
                                             "load text-encoder LoRA keys.")
    text_encoder_dim: int | None = option(None, "Rank for the text-encoder LoRA. null = dim: one rank to think "
                                                "about unless you want a smaller encoder LoRA.", min=1)
    init_from: str | None = option(None, "Continue from this LoRA file (relative to the job folder or absolute), "
                                         "or from another job: job:<name> waits in the queue until that job has "
                                         "trained and been selected, then continues from its shortlist's "
                                         "lowest-loss epoch (job:<name>@7 for epoch 7, job:<name>@last for its "
                                         "last). null starts from zero; the guide's four-run outfit LoRA chains "
                                         "runs this way, all four folders dropped at once.",
                                   example="previous-outfit.safetensors")
    scale_weight_norms: float | None = option(
        None, "Max-norm regularisation (sd-scripts' --scale_weight_norms): after every step, a LoRA module whose "
              "weight delta (alpha/rank * up @ down) has a Frobenius norm above this is scaled back to it. null = "
              "off, sd-scripts' default; stop-at-floor already ends runs before weights blow up. The guide's runs "
              "use 1.0, the value sd-scripts suggests starting from.", min=0, example=1.0)


@dataclasses.dataclass
class OptimizerConfig:
    type: str = option("prodigy", "prodigy, adamw, adamw8bit or adafactor. Prodigy (the spec's default) adapts its "
                                  "own step size, so an unattended run needs no learning-rate search; the guide's "
                                  "own runs use AdamW8bit at 1e-4.",
                       choices=("prodigy", "adamw", "adamw8bit", "adafactor"))
    lr: float | None = option(None, "Learning rate. null: 1.0 for Prodigy (its authors' value for every network; "
                                    "steer it with d_coef), 1e-4 for the others (the guide's AdamW8bit runs).", min=0)
    text_encoder_lr: float | None = option(None, "Text-encoder LoRA learning rate. null = lr, the spec's default "
                                                 "(Prodigy adapts it anyway).", min=0)
    weight_decay: float = option(0.1, "Decoupled weight decay. 0.1 is the spec's value, near the guide's 0.11 "
                                      "(Panchy run); it keeps LoRA weights from growing over long runs.", min=0)
    betas: list[float] = option([0.9, 0.99], "Adam/Prodigy betas. (0.9, 0.99) as the guide's runs and the Prodigy "
                                             "README's diffusion settings use.", min=0, max=1)
    eps: float = option(1e-8, "Adam/Prodigy epsilon. 1e-8 is the PyTorch and Prodigy default.", min=0)
    d_coef: float = option(1.0, "Prodigy: multiplier on the adapted step size d. 1.0 is Prodigy's default; its "
                                "authors suggest 0.5 or 0.1 for a smaller step.", min=0)
    safeguard_warmup: bool = option(True, "Prodigy: safeguard warmup. On, as the Prodigy README recommends for "
                                          "diffusion models (it keeps d from overshooting during warmup).")
    use_bias_correction: bool = option(True, "Prodigy: Adam-style bias correction. On, as the Prodigy README "
                                             "recommends for diffusion models.")
    max_grad_norm: float = option(1.0, "Clip gradients to this norm (0 = off). 1.0 is sd-scripts' default: it "
                                       "stops one bad batch from throwing the LoRA off.", min=0)


@dataclasses.dataclass
class ScheduleConfig:
    type: str = option("auto", "auto, cosine, cosine_with_restarts, constant or linear. auto: constant until the "
                               "confirmed floor, then the cooldown (warmup-stable-decay) with stop_at_floor on; the "
                               "guides' cosine over max_epochs with it off. bench/schedule_quality.py measured the "
                               "constant-then-cooled run lower in eval loss than cosine cut at the floor and cooled, "
                               "on every seed. With stop_at_floor on, any schedule is cooled at the floor.",
                       choices=("auto", "cosine", "cosine_with_restarts", "constant", "linear"))
    cycles: int = option(1, "Restart cycles for cosine_with_restarts. 1 = no restart; the guide's Panchy run "
                            "uses 3.", min=1)
    warmup_steps: int = option(0, "Linear warmup optimizer steps. 0 (the spec's default): Prodigy starts small and "
                                  "grows its own step size.", min=0)
    warmup_percent: float = option(0.0, "Warmup as a fraction of all steps (used when warmup_steps is 0). 0 for the "
                                        "same reason.", min=0, max=0.5)
    max_epochs: int = option(200, "Stop after this many epochs. 200 as the guide says (\"you can't set it too "
                                  "high\"); the floor detector usually stops far earlier.", min=1, max=100000)
    max_steps: int | None = option(None, "Stop after this many optimizer steps. null = by epochs, which is how the "
                                         "guides count.", min=1)
    state_every_minutes: float = option(10.0, "Also save the resume state this often within an epoch (it is always "
                                              "saved at epoch ends and when stopping). 10: a crash loses at most 10 "
                                              "minutes of a long epoch (0 = only at epoch ends).", min=0.0)


@dataclasses.dataclass
class SubsetConfig:
    repeats: int | None = option(None, "Repeats per epoch (a '10_name' folder prefix also sets 10). null: the "
                                       "folder prefix, else data.repeats.", min=1)
    keep_tokens: int | None = option(None, "Leading tags kept in place when shuffling. null: data.keep_tokens.",
                                     min=0)
    class_tokens: str | None = option(None, "Caption for images that have no caption file (sd-scripts' "
                                            "class_tokens). null: such images train with an empty caption.")
    shuffle_captions: bool | None = option(None, "Shuffle comma-separated tags. null: data.shuffle_captions.")
    tag_dropout: float | None = option(None, "Drop each non-kept tag with this probability. null: "
                                             "data.tag_dropout.", min=0, max=1)
    caption_dropout: float | None = option(None, "Train with the empty caption this often. null: "
                                                 "data.caption_dropout.", min=0, max=1)
    flip: bool | None = option(None, "Random horizontal flips. null: data.flip.")
    alpha_mask: bool | None = option(None, "Use PNG alpha as a loss mask. null: data.alpha_mask.")


@dataclasses.dataclass
class DataConfig:
    resolution: int | list[int] = option(1024, "Training resolution: 1024, or [width, height]. 1024: Anima's "
                                               "native ~1 megapixel, the guides' [1024, 1024].", min=64,
                                         example=[1024, 1024])
    buckets: bool = option(True, "Aspect-ratio buckets. On, as the guides' multi-outfit config: images keep their "
                                 "shape instead of being cropped square.")
    min_bucket: int = option(256, "Smallest bucket side. 256, the guides' min_bucket_reso.", min=64)
    max_bucket: int = option(2048, "Largest bucket side. 2048, the guides' max_bucket_reso and the most Anima's "
                                   "RoPE table allows.", min=64, max=2048)
    bucket_step: int = option(64, "Bucket side step (a multiple of 16). 64, the guides' bucket_reso_steps.", min=16)
    upscale: bool = option(False, "Upscale small images to the training area. Off, as the guides' "
                                  "bucket_no_upscale: an upscaled image teaches blur.")
    batch_size: int | typing.Literal["auto"] = option(
        "auto", "Images per step, or auto: the guides keep a batch at or under 10% of the dataset, so auto is "
                "images // 10, from 1 up to 4 (1 under 20 images, 4 from 40). It is fixed at intake and "
                "job.resolved.yaml holds the number; an explicit number over 10% gets a warning.", min=1, max=256)
    grad_accum: int = option(1, "Gradient accumulation steps. 1 (the spec's default); raise it for a larger "
                                "effective batch without more GPU memory.", min=1)
    repeats: int = option(1, "Default repeats per epoch. 1 (the spec's default): stop-at-floor decides the length, "
                             "so repeats only weight subsets against each other.", min=1)
    shuffle_captions: bool = option(True, "Shuffle comma-separated tags. On, as in the guides' configs: tag order is "
                                          "not meant to be learned (the text encoder then runs in the loop).")
    keep_tokens: int = option(1, "Leading tags kept in place when shuffling. 1: the trigger stays first (the "
                                 "guides use 2-3 when a class tag follows it).", min=0)
    tag_dropout: float = option(0.0, "Drop each non-kept tag with this probability. 0 (the spec's and sd-scripts' "
                                     "default); the guides' configs use 0.1 to loosen the LoRA from exact tags.",
                                min=0, max=1)
    caption_dropout: float = option(0.0, "Train with the empty caption this often. 0 (the spec's default): every step "
                                         "teaches the caption-to-image link the trigger relies on.",
                                    min=0, max=1)
    flip: bool = option(False, "Random horizontal flips. Off (the spec's default): asymmetric details (a side "
                               "parting, text) would be learned mirrored; the guide turns it on for outfits.")
    alpha_mask: bool = option(False, "Use PNG alpha channels as loss masks. Off: most datasets have no meaningful "
                                     "alpha, and a transparent background would then not be learned at all.")
    caption_extension: str = option(".txt", "Caption file extension. .txt, as sd-scripts and every tagger write.")
    subsets: dict[str, SubsetConfig] = option({}, "Per-subfolder overrides, keyed by subfolder name. Empty: every "
                                                  "subfolder takes the settings above (and its 'N_' prefix).",
                                              example={"10_outfit_a": {"keep_tokens": 2}})


@dataclasses.dataclass
class PrecisionConfig:
    mixed: str = option("auto", "auto (bf16 on a GPU, fp32 on the CPU), bf16, fp16 or fp32. bf16 has fp32's range "
                                "(no loss scaling) and Anima's DiT is stored in it; CPUs are slow at it.",
                        choices=("auto", "bf16", "fp16", "fp32"))
    save: str = option("bf16", "dtype of saved LoRA files: bf16, fp16 or fp32. bf16: half the size of fp32, and "
                               "ComfyUI loads it as is.", choices=("bf16", "fp16", "fp32"))
    vram: str = option("auto", "auto or off. auto: on a GPU, measure the free memory and use the cheapest savings "
                               "that fit (none, checkpointing every k-th block, every block, the text encoder in CPU "
                               "memory between uses, then DiT blocks swapped to CPU memory): the defaults then train "
                               "at 1024² on an 8 GB card, and a card with memory to spare skips the recompute. None "
                               "of them changes what is trained. off: exactly gradient_checkpointing, everything on "
                               "the GPU.",
                       choices=("auto", "off"))
    gradient_checkpointing: bool | int = option(
        True, "Recompute activations to save memory: true (every block), false, or k (every k-th block). Used "
              "with vram: off and on the CPU; vram: auto picks it itself. On by default, so the defaults fit an "
              "8 GB card at 1024² (the spec's target), at ~45% more compute per step (58 vs 40 TFLOP, "
              "docs/anima_arch.md).", min=0)
    attention: str = option("auto", "auto (SDPA; flash where available), sdpa, flash or math. auto picks the "
                                    "fastest kernel the GPU and dtype allow.",
                            choices=("auto", "sdpa", "flash", "math"))
    compile: bool = option(False, "torch.compile each DiT block (GPU; slower start, faster steps): one graph for "
                                  "all blocks, every aspect bucket and batch size (dynamic token count), a second "
                                  "for the eval. Off: it needs a working GPU toolchain (Triton) and a minute or "
                                  "two to compile; sd-scripts reports ~0.6 -> 0.43 s/step with it.")
    cache_text: bool = option(True, "Cache text embeddings when captions are fixed (no shuffle/dropout). On: the "
                                    "text encoder then leaves the GPU; with shuffling it runs in the loop anyway.")


@dataclasses.dataclass
class TimestepConfig:
    sampling: str = option("logit_normal", "logit_normal or uniform. logit_normal(0, 1) is sd-scripts' Anima "
                                           "default (its 'sigmoid' sampling).",
                           choices=("logit_normal", "uniform"))
    logit_mean: float = option(0.0, "Mean of the logit-normal. 0, sd-scripts' default.")
    logit_std: float = option(1.0, "Std of the logit-normal. 1, sd-scripts' default (sigmoid_scale 1.0).", min=0.01)
    shift: float = option(1.0, "Flow shift applied to sampled sigmas (1.0 = none; 3.0 = 'shifted'). 1.0: "
                               "sd-scripts trains Anima unshifted.", min=0.01)
    noise_offset: float = option(0.0, "Noise offset. 0: sd-scripts does not apply one to Anima at all.", min=0)
    ip_noise_gamma: float = option(0.0, "Input perturbation noise (sd-scripts' --ip_noise_gamma): the noisy input "
                                        "gets sigma * gamma * extra noise while the target stays noise - x0. 0 = "
                                        "off, sd-scripts' default; ~0.1 is the value its paper and users try.",
                                   min=0, max=1)
    ip_noise_gamma_random_strength: bool = option(
        False, "Draw the input perturbation's gamma uniformly from [0, ip_noise_gamma) per batch (sd-scripts' "
               "--ip_noise_gamma_random_strength). Off, as sd-scripts' default.")


@dataclasses.dataclass
class EvalConfig:
    images: int | None = option(None, "Images in the stable eval set. null: sized to cost ~10% of an epoch, "
                                      "inside the spec's 15% budget.", min=1)
    sigmas: int = option(8, "Fixed sigmas spread over the training timestep distribution. 8: between ai-toolkit's "
                            "4 and SimpleTuner's 28; the ~10% cost is shared, so more sigmas mean fewer images.",
                         min=1, max=64)


@dataclasses.dataclass
class SelectionConfig:
    stop_at_floor: bool = option(True, "Stop training once the loss floor is confirmed. On: it saves the night "
                                       "for the next job, and makes 200 epochs cheap.")
    patience: int = option(15, "Epochs after a candidate floor before it counts as confirmed. 15: users confirm a "
                               "floor 10-20 epochs later; bench/floor_accuracy.py measures 0 false early stops on "
                               "still-falling curves with it.", min=2)
    shortlist_size: int = option(4, "Epochs in the shortlist. 4 (the spec's default): the lowest plus a few earlier "
                                    "dips, as users pick by hand; at most 6 keep the contact sheet readable.",
                                 min=1, max=6)
    min_epoch: int = option(1, "Never pick or stop before this epoch. 1: the curve decides.", min=1)
    cooldown_fraction: float = option(0.2, "After a confirmed floor, cool the LR linearly to 0 over this share of "
                                           "the epochs trained so far, then stop (warmup-stable-decay). 0.2: the "
                                           "decay share WSD training uses; stopping at a high LR would skip the "
                                           "low-LR tail the guides pick from. 0 = stop at the floor at once.",
                                      min=0, max=1)
    cooldown_min_epochs: int = option(3, "The cooldown lasts at least this many epochs. 3: fewer would drop the LR "
                                         "too fast for the epochs to differ, and give the shortlist no annealed "
                                         "epochs to compare.", min=1)


@dataclasses.dataclass
class PreviewConfig:
    prompts: list[str] = option([], "Your preview prompts. Empty: none; the default set (built from the dataset in "
                                    "the guide's kinds: two typical captions, one without the trigger, three novel "
                                    "scenes) is always there unless prompts_mode is replace.")
    prompts_mode: str = option("add", "How your prompts combine with the default set. add: the guide asks for 5-10 "
                                      "prompts of several kinds, so yours come on top; replace: only yours.",
                               choices=("add", "replace"))
    negative_prompt: str = option(NEGATIVE_PROMPT, f"Negative prompt for CFG. '{NEGATIVE_PROMPT}': the one in "
                                                   "ComfyUI's official Anima template, so a preview is what that "
                                                   "workflow gives; empty means the empty prompt.")
    seeds: list[int] = option([], "One fixed seed per prompt. Empty: 1000, 1001, ..., the same for every epoch so "
                                  "the rows compare.", min=0)
    steps: int = option(STEPS, f"Sampler steps. {STEPS}, as ComfyUI's official Anima template.", min=1, max=200)
    cfg: float = option(CFG, f"Classifier-free guidance scale. {CFG}, as ComfyUI's official Anima template.", min=0)
    flow_shift: float = option(SHIFT, f"Flow shift of the sampling schedule. {SHIFT}, Anima's shift in ComfyUI "
                                      "(another value adds a ModelSamplingAuraFlow node to the preview's graph).",
                               min=0.01)
    sampler: str = option(SAMPLER, f"Sampler. {SAMPLER} (the only one), with the {SCHEDULER} schedule, as ComfyUI's "
                                   "official Anima template.", choices=(SAMPLER,))
    width: int = option(WIDTH, f"Preview width (a multiple of 16). {WIDTH}, the template's and the training size.",
                        min=64, max=2048)
    height: int = option(HEIGHT, f"Preview height (a multiple of 16). {HEIGHT}, the template's and the training "
                                 "size.", min=64, max=2048)
    strengths: list[float] = option([], "LoRA strengths to render for every pick. Empty: 1.0 (the LoRA as trained) "
                                        "for every pick and also 0.8 for the lowest-loss epoch, as the guide advises "
                                        "trying a softer strength.", min=0)


@dataclasses.dataclass
class JobConfig:
    name: str | None = option(None, "Job and LoRA file name. null: the folder name, so dropping a folder names it.")
    trigger: str | None = option(None, "Trigger word, expected as the first tag of every caption. null: no check.",
                                 example="@boerboer")
    author: str = option("", "Author written into the LoRA metadata (modelspec.author). Empty: none.")
    description: str = option("", "Description written into the LoRA metadata (modelspec.description). Empty: none.")
    base_model: str | None = option(None, "A model set named in animad.yaml. null: its default_model, so a job "
                                          "needs no paths.")
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
    priority: int = option(0, "Queue priority: higher runs first. 0: equal priorities run in drop order.",
                           min=-100, max=100)
    device: str = option("auto", "auto, cuda, cuda:N or cpu. auto: the first CUDA GPU, else the CPU.")
    seed: int = option(0, "Seed for data order, noise and timesteps. 0, as the guide's runs (--seed=0).", min=0)


# Keys that once were options and now mean nothing. A file that still sets one gets a warning, not
# an unknown-key error: job.yaml files written for an earlier animad (or copied from sd-scripts'
# --cache_latents) did nothing wrong, and a job frozen before the key went (its job.resolved.yaml
# lists every key) must still load and resume.
RETIRED = {
    ("precision", "cache_latents"): "latents are always cached on disk, so this key does nothing",
}


def parse_job(data: dict | None, file, problems: Problems) -> JobConfig:
    config = parse(JobConfig, drop_retired(data or {}, file, problems), file, problems)
    check_job_logic(config, file, problems)
    return config


def drop_retired(data: dict, file, problems: Problems) -> dict:
    """A copy of data without RETIRED keys, with a warning for each one it held."""
    out = dict(data)
    for (section_key, key), why in RETIRED.items():
        values = out.get(section_key)
        if isinstance(values, dict) and key in values:
            problems.warning(file, f"{section_key}.{key}", f"no longer an option: {why}", "remove it from the file")
            out[section_key] = {k: v for k, v in values.items() if k != key}
    return out


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
    for key in ("include", "exclude"):
        for index, pattern in enumerate(getattr(config.network, key)):
            try:
                re.compile(pattern)
            except re.error as error:
                problems.error(file, f"network.{key}[{index}]", f"bad regular expression: {error}",
                               "escape dots as '\\.'")
    check_network_kind(config.network, file, problems)
    if config.network.init_from:
        try:
            parse_job_reference(config.network.init_from)
        except ValueError as error:
            problems.error(file, "network.init_from", str(error),
                           "write job:<name>, job:<name>@<epoch> or job:<name>@last, or a .safetensors path")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        problems.error(file, "device", f"'{config.device}' is not a device", "use auto, cuda, cuda:0 or cpu")


MAX_RANK = 1024  # lora and loha ranks; a lokr's dim may be larger (a full w2)


def check_network_kind(net: NetworkConfig, file, problems: Problems) -> None:
    """Options that mean nothing for the chosen network.type, refused before a night is spent."""
    if net.type != "lokr" and net.dim > MAX_RANK:
        problems.error(file, "network.dim", f"{net.dim} is more than {MAX_RANK}, the most a {net.type} takes (only "
                       "a lokr reads a huge dim, as sd-scripts configs write 100000, as 'full matrices')",
                       f"use a dim up to {MAX_RANK}, or network.type: lokr")
    if net.type == "lora":
        if net.factor != -1:
            problems.warning(file, "network.factor", f"{net.factor} is LoKr's Kronecker factor; a lora has none",
                             "remove it, or set network.type: lokr")
        return
    if net.dropout:
        problems.error(file, "network.dropout", f"{net.dropout} drops a LoRA's rank-sized intermediate, which "
                       f"{net.type} does not have (sd-scripts ignores it for {net.type})",
                       "set it to 0; rank_dropout and module_dropout work for every kind")
    if net.scale_weight_norms:
        problems.error(file, "network.scale_weight_norms", f"not for network.type: {net.type}: sd-scripts' "
                       f"networks/{net.type}.py has no max-norm rule (its --scale_weight_norms stops the run), and "
                       "animad does not invent one", "remove it, or train a lora")
    if net.type == "loha" and net.factor != -1:
        problems.warning(file, "network.factor", f"{net.factor} is LoKr's Kronecker factor; a loha has none",
                         "remove it, or set network.type: lokr")


JOB_PREFIX = "job:"  # network.init_from names another job instead of a file


@dataclasses.dataclass(frozen=True)
class JobReference:
    """network.init_from: job:<name>[@<epoch>|@last], the job whose LoRA this one continues."""

    name: str
    epoch: int | None = None  # None: that job's default pick (daemon/chain.py says which)
    last: bool = False


def parse_job_reference(text: str | None) -> JobReference | None:
    """Given network.init_from, return the job it names, or None when it is a file path.

    Raises ValueError (the message says what is wrong) for a malformed job: form. An '@' always
    starts the epoch part: a name that itself holds '@' needs one too (job:me@home@last).
    """
    if not text or not str(text).startswith(JOB_PREFIX):
        return None
    body = str(text)[len(JOB_PREFIX):].strip()
    name, at, epoch = body.rpartition("@") if "@" in body else (body, "", "")
    name = name.strip()
    if not name:
        raise ValueError(f"'{text}' names no job")
    if not at:
        return JobReference(name)
    epoch = epoch.strip()
    if epoch == "last":
        return JobReference(name, last=True)
    if not epoch.isdigit() or int(epoch) < 1:
        raise ValueError(f"'{text}': after '@' comes an epoch number (1 or more) or 'last', not '{epoch}'")
    return JobReference(name, epoch=int(epoch))


def load_job_file(path: Path, problems: Problems) -> JobConfig | None:
    """Read job.yaml; returns None when it cannot be read or parsed (problems say why)."""
    data = load_yaml_file(path, problems)
    if data is None:
        return None
    return parse_job(data, path, problems)


def load_resolved(path: Path) -> JobConfig:
    """Load a resolved config written by animad (job.resolved.yaml). Raises ConfigError.

    Training counts on numbers only: intake resolved `auto`, so a word here means the file was edited.
    """
    problems = Problems()
    config = load_job_file(path, problems)
    if config is not None and not isinstance(config.data.batch_size, int):
        problems.error(path, "data.batch_size", f"{config.data.batch_size!r} was not resolved to a number",
                       "write the number of images per step (job.yaml may say 'auto'; this file may not)")
    if problems or config is None:
        raise ConfigError(problems, f"Resolved job config {path}")
    return config


def resolve_batch_size(batch_size: int | str, images: int) -> int:
    return auto_batch_size(images) if batch_size == "auto" else batch_size


def resolved_dict(config: JobConfig, images: int) -> dict:
    """The config as job.resolved.yaml holds it: every default filled in, `auto` made a number."""
    data = dataclasses.replace(config.data, batch_size=resolve_batch_size(config.data.batch_size, images))
    return to_dict(dataclasses.replace(config, data=data))


def example_text() -> str:
    """inbox/job.example.yaml: every key with its default and why (a test keeps the file in sync)."""
    header = ("# job.yaml: every key is optional; an empty file trains with these defaults.\n"
              "# Check a folder before dropping it: animad check <folder>\n\n")
    return header + template(JobConfig) + "\n"
