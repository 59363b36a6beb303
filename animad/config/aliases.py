"""sd-scripts and kohya_ss names for job.yaml keys: one table for the parser's hints and the importer.

Users arrive with sd-scripts flags (`--network_dim`) and kohya_ss GUI fields in their heads and
paste them into job.yaml. difflib then guesses by spelling and sends them to the wrong key
(`caption_tag_dropout_rate` -> "did you mean caption_dropout?"), so a name found here gets "this
is sd-scripts' X; here it is Y" instead, with the difference in meaning where there is one.
`animad import` (animad/importer/) maps the same names to the same keys from this table.

It lives in config/, not in importer/: it is knowledge about job.yaml's keys (which key a name users
bring means), and its first reader is the schema's unknown-key path, which is below the importer;
kept here, both read one table and imports still go one way. Standalone on purpose (no animad
imports): the schema reads it, and the schema is below job.py.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Alias:
    source: str  # how the user knows it: "sd-scripts' --network_dim", "kohya_ss' epoch"
    target: str | None  # the job.yaml key (dotted), or None when nothing here corresponds
    note: str = ""  # the difference in meaning, or why there is no key; empty when it means the same


# Reasons shared by several flags, so IMPORT.txt and the hints say them the same way. NO_EFFECT_ANIMA
# was read in sd-scripts' source (kohya-ss/sd-scripts 48d368f): AnimaNetworkTrainer overrides
# get_noise_pred_and_target (noise = torch.randn_like(latents), so no noise_offset or multires noise)
# and post_process_loss (returns the loss as it is, so no min_snr_gamma weighting).
NO_EFFECT_ANIMA = ("it has no effect in sd-scripts' Anima trainer (its Anima path draws plain randn noise and "
                   "returns the loss unweighted), so copying it would change training")
EVERY_EPOCH = "animad saves every epoch and picks the best; there is nothing to set"
ALWAYS_CACHED = "latents are always cached on disk here; there is nothing to set"


def _sd(flag: str) -> str:
    return f"sd-scripts' --{flag}"


_TABLE: dict[str, tuple[str | None, str]] = {
    # network
    "network_dim": ("network.dim", "sd-scripts' lora_anima uses 4 when it is not given; here the default is 16"),
    "network_alpha": ("network.alpha", "sd-scripts' default is 1 (a scale of 1/dim); here null means alpha = dim"),
    "network_dropout": ("network.dropout", "the same: dropout on the LoRA down-projection's output"),
    "rank_dropout": ("network.rank_dropout", "in sd-scripts a --network_args entry; here a key of network"),
    "module_dropout": ("network.module_dropout", "in sd-scripts a --network_args entry; here a key of network"),
    "train_llm_adapter": ("network.train_llm_adapter", "in sd-scripts a --network_args entry; here true/false"),
    "network_weights": ("network.init_from", "a LoRA file to continue from; 'job:NAME' continues another queued job"),
    "network_train_unet_only": ("network.train_text_encoder", "inverted: sd-scripts trains a text-encoder LoRA "
                                "unless this flag is given; here train_text_encoder is off unless set true"),
    "scale_weight_norms": ("network.scale_weight_norms", "the same max-norm regularisation of each LoRA module"),
    "network_module": ("network.type", "lora, lokr or loha: sd-scripts' Anima LoRA is lora; networks.lokr, "
                       "networks.loha and LyCORIS' algo=lokr|loha are lokr and loha"),
    "network_args": ("network", "each key=value is its own key of network here (factor, rank_dropout, "
                     "module_dropout, train_llm_adapter)"),
    # optimizer
    "learning_rate": ("optimizer.lr", "sd-scripts' default is 2e-6; here null means 1.0 for Prodigy, 1e-4 otherwise"),
    "unet_lr": ("optimizer.lr", "the DiT's learning rate; here optimizer.lr is the DiT's"),
    "text_encoder_lr": ("optimizer.text_encoder_lr", "one number here (sd-scripts takes a list)"),
    "optimizer_type": ("optimizer.type", "prodigy, adamw, adamw8bit or adafactor; sd-scripts' default is AdamW"),
    "optimizer": ("optimizer.type", "prodigy, adamw, adamw8bit or adafactor"),
    "optimizer_args": ("optimizer", "each key=value becomes its own key of optimizer (weight_decay, betas, eps, "
                       "d_coef, ...)"),
    "weight_decay": ("optimizer.weight_decay", "AdamW8bit's own default is 0.01; here 0.1"),
    "betas": ("optimizer.betas", "a list [0.9, 0.99]; AdamW's own default is (0.9, 0.999)"),
    "max_grad_norm": ("optimizer.max_grad_norm", "the same (1.0 in both)"),
    "use_8bit_adam": ("optimizer.type", "write optimizer.type: adamw8bit"),
    # schedule
    "lr_scheduler": ("schedule.type", "sd-scripts' default is constant; here auto (constant, then cooled at the "
                     "loss floor)"),
    "lr_scheduler_num_cycles": ("schedule.cycles", "the same, for cosine_with_restarts"),
    "lr_warmup_steps": ("schedule.warmup_steps", "sd-scripts reads a whole number as steps and a number below 1 as "
                        "a fraction of all steps; here warmup_steps takes steps, schedule.warmup_percent a fraction"),
    "lr_warmup": ("schedule.warmup_steps", "sd-scripts' --lr_warmup is --lr_warmup_steps (steps; below 1 a "
                  "fraction); kohya_ss' lr_warmup is a percentage. Here warmup_steps takes steps, "
                  "schedule.warmup_percent a fraction (10% = 0.1)"),
    "max_train_epochs": ("schedule.max_epochs", "training also stops at the loss floor here unless "
                         "selection.stop_at_floor is false"),
    "epoch": ("schedule.max_epochs", "training also stops at the loss floor here unless selection.stop_at_floor "
              "is false"),
    "max_train_steps": ("schedule.max_steps", "sd-scripts' default is 1600 when no epoch count is given"),
    "save_every_n_epochs": (None, EVERY_EPOCH),
    "save_every_n_steps": (None, "epoch files are saved every epoch; the resume state every "
                           "schedule.state_every_minutes"),
    "save_state": (None, "the resume state is always saved; a stopped run resumes by itself"),
    # data
    "caption_tag_dropout_rate": ("data.tag_dropout", "the same: each non-kept tag is dropped with this probability"),
    "caption_dropout_rate": ("data.caption_dropout", "the same: the whole caption is dropped this often"),
    "shuffle_caption": ("data.shuffle_captions", "sd-scripts' default is off; here on"),
    "keep_tokens": ("data.keep_tokens", "sd-scripts' default is 0; here 1 (the trigger stays first)"),
    "flip_aug": ("data.flip", "the same"),
    "enable_bucket": ("data.buckets", "sd-scripts' default is off; here on"),
    "bucket_no_upscale": ("data.upscale", "inverted: bucket_no_upscale: true is upscale: false (the default here)"),
    "min_bucket_reso": ("data.min_bucket", "the same (256 in both)"),
    "max_bucket_reso": ("data.max_bucket", "sd-scripts' default is 1024; here 2048"),
    "bucket_reso_steps": ("data.bucket_step", "the same (64 in both)"),
    "train_batch_size": ("data.batch_size", "sd-scripts' default is 1; here auto (images // 10, 1 to 4)"),
    "batch_size": ("data.batch_size", "sd-scripts' default is 1; here auto (images // 10, 1 to 4)"),
    "gradient_accumulation_steps": ("data.grad_accum", "the same"),
    "num_repeats": ("data.subsets.NAME.repeats", "per subfolder here (or a 'N_name' folder prefix; data.repeats "
                    "for all)"),
    "dataset_repeats": ("data.repeats", "the same"),
    "resolution": ("data.resolution", "1024 or [width, height]"),
    "caption_extension": ("data.caption_extension", "sd-scripts' default is .caption; here .txt"),
    "max_resolution": ("data.resolution", "kohya_ss writes '1024,1024'; here 1024 or [1024, 1024]"),
    "image_dir": (None, "here each subset is a subfolder of the dataset folder (animad import --to copies it)"),
    "train_data_dir": (None, "the dataset folder itself is the training data here"),
    "class_tokens": ("data.subsets.NAME.class_tokens", "the same: the caption of images without a caption file"),
    "alpha_mask": ("data.alpha_mask", "the same: the PNG alpha channel as the loss mask"),
    "color_aug": (None, "no colour augmentation here"),
    "random_crop": (None, "no random crop here; images are fitted to their bucket"),
    "cache_latents": (None, ALWAYS_CACHED),
    "cache_latents_to_disk": (None, ALWAYS_CACHED),
    "cache_text_encoder_outputs": ("precision.cache_text", "here on by default, used whenever captions are fixed"),
    # precision and speed
    "mixed_precision": ("precision.mixed", "sd-scripts' default is 'no' (fp32); here auto (bf16 on a GPU)"),
    "save_precision": ("precision.save", "sd-scripts saves in the training dtype when it is not given; here bf16"),
    "gradient_checkpointing": ("precision.gradient_checkpointing", "sd-scripts' default is off; here on"),
    "torch_compile": ("precision.compile", "the same"),
    "xformers": (None, "attention is chosen by precision.attention (auto picks the fastest kernel)"),
    "sdpa": (None, "attention is chosen by precision.attention (auto picks the fastest kernel)"),
    "split_attn": (None, "attention is chosen by precision.attention (auto picks the fastest kernel)"),
    "attn_mode": ("precision.attention", "auto, sdpa, flash or math"),
    # timesteps and noise
    "timestep_sampling": ("timesteps.sampling", "sd-scripts' sigmoid is logit_normal here; uniform is uniform"),
    "sigmoid_scale": ("timesteps.logit_std", "the std of the logit-normal"),
    "discrete_flow_shift": ("timesteps.shift", "in sd-scripts it acts only with timestep_sampling shift; here "
                            "always"),
    "ip_noise_gamma": ("timesteps.ip_noise_gamma", "the same input perturbation noise"),
    "ip_noise_gamma_random_strength": ("timesteps.ip_noise_gamma_random_strength", "the same"),
    "noise_offset": ("timesteps.noise_offset", NO_EFFECT_ANIMA + "; keep it 0 to train as sd-scripts did"),
    "min_snr_gamma": (None, NO_EFFECT_ANIMA + "; there is no key for it here"),
    "multires_noise_iterations": (None, NO_EFFECT_ANIMA + "; there is no key for it here"),
    "multires_noise_discount": (None, NO_EFFECT_ANIMA + "; there is no key for it here"),
    # metadata and the rest
    "seed": ("seed", "sd-scripts draws a random seed when none is given; here 0"),
    "metadata_author": ("author", "the same (modelspec.author)"),
    "metadata_description": ("description", "the same (modelspec.description)"),
    "output_name": ("name", "the job's and the LoRA files' name; null: the folder name"),
    "output_dir": (None, "epoch files go to the job's work folder and the review package to the outbox"),
    "sample_prompts": ("previews.prompts", "a list of prompts here (sd-scripts reads a file with --n/--d options)"),
    "sample_every_n_epochs": (None, "every shortlisted epoch is previewed at the end of the run"),
}

# kohya_ss GUI field names that differ from sd-scripts' flags.
_KOHYA_SS = {"epoch", "optimizer", "lr_warmup", "max_resolution"}

ALIASES: dict[str, Alias] = {
    name: Alias(f"kohya_ss' {name}" if name in _KOHYA_SS else _sd(name), target, note)
    for name, (target, note) in _TABLE.items()
}


def alias_hint(key: str) -> str | None:
    """The fix line for an unknown job.yaml key that is an sd-scripts/kohya_ss name, else None."""
    alias = ALIASES.get(str(key).lstrip("-"))
    if alias is None:
        return None
    if alias.target is None:
        return f"this is {alias.source}; it has no key here: {alias.note}. Remove it"
    text = f"this is {alias.source}; here it is {alias.target}"
    return f"{text} ({alias.note})" if alias.note else text
