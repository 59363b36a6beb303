"""Every option of sd-scripts' Anima LoRA trainer (anima_train_network.py): its type, and, for those
animad does not map, why.

The names and types were read from sd-scripts' own argument parsers (train_network.setup_parser,
train_util.add_*_arguments, anima_train_utils.add_anima_training_arguments, kohya-ss/sd-scripts at
48d368f). The whole list is needed, not only the flags we map: argparse accepts any unique prefix
(`--lr_warmup` is `--lr_warmup_steps`), and only the full list tells a prefix from a typo.
The flags animad maps, and what they become, are in config/aliases.py and importer/translate.py.
"""

from __future__ import annotations

from animad.config.aliases import ALIASES, ALWAYS_CACHED, EVERY_EPOCH, NO_EFFECT_ANIMA


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


BOOL = _names("""
alpha_mask async_upload bucket_no_upscale cache_info cache_latents cache_latents_to_disk cache_text_encoder_outputs
cache_text_encoder_outputs_to_disk color_aug console_log_simple cpu_offload_checkpointing ddp_gradient_as_bucket_view
ddp_static_graph debiased_estimation_loss debug_dataset deepspeed dim_from_weights disable_mmap_load_safetensors
enable_bucket enable_wildcard flip_aug fp16_master_weights_and_gradients fp8_base fp8_base_unet full_bf16 full_fp16
fused_backward_pass gradient_checkpointing highvram ip_noise_gamma_random_strength log_config lowram masked_loss
mem_eff_attn network_train_text_encoder_only network_train_unet_only no_half_vae no_metadata
noise_offset_random_strength output_config persistent_data_loader_workers random_crop resume_from_huggingface
sample_at_first save_state save_state_on_train_end save_state_to_huggingface scale_v_pred_loss_like_noise_pred sdpa
shuffle_caption skip_cache_check skip_until_initial_step split_attn torch_compile unsloth_offload_checkpointing
use_8bit_adam use_lion_optimizer v2 v_parameterization vae_disable_cache weighted_captions xformers zero3_init_flag
zero3_save_16bit_model zero_terminal_snr
""")
INT = _names("""
blocks_to_swap bucket_reso_steps caption_dropout_every_n_epochs clip_skip dataset_repeats ddp_timeout
gradient_accumulation_steps initial_epoch initial_step keep_tokens lr_scheduler_num_cycles lr_scheduler_timescale
max_bucket_reso max_data_loader_n_workers max_timestep max_token_length max_train_epochs max_train_steps
max_validation_steps min_bucket_reso min_timestep multires_noise_iterations network_dim qwen3_max_token_length
sample_every_n_epochs sample_every_n_steps save_every_n_epochs save_every_n_steps save_last_n_epochs
save_last_n_epochs_state save_last_n_steps save_last_n_steps_state save_n_epoch_ratio seed t5_max_token_length
text_encoder_batch_size token_warmup_min train_batch_size vae_batch_size vae_chunk_size validate_every_n_epochs
validate_every_n_steps validation_seed zero_stage
""")
FLOAT = _names("""
adaptive_noise_scale caption_dropout_rate caption_tag_dropout_rate cross_attn_lr discrete_flow_shift huber_c
huber_scale ip_noise_gamma learning_rate llm_adapter_lr logit_mean logit_std lr_scheduler_min_lr_ratio
lr_scheduler_power max_grad_norm min_snr_gamma mlp_lr mod_lr mode_scale multires_noise_discount network_alpha
network_dropout noise_offset prior_loss_weight scale_weight_norms self_attn_lr sigmoid_scale token_warmup_step
unet_lr v_pred_like_loss validation_split
""")
INT_OR_FLOAT = _names("lr_decay_steps lr_warmup_steps")  # "5" is 5 steps, "0.1" a fraction, "10%" 0.1
LIST = _names("base_weights base_weights_multiplier lr_scheduler_args network_args optimizer_args text_encoder_lr")
STR = _names("""
attn_mode caption_extension caption_extention caption_prefix caption_separator caption_suffix conditioning_data_dir
config_file console_log_file console_log_level dataset_class dataset_config dynamo_backend face_crop_aug_range
huber_schedule huggingface_path_in_repo huggingface_repo_id huggingface_repo_type huggingface_repo_visibility
huggingface_token in_json keep_tokens_separator llm_adapter_path log_prefix log_tracker_config log_tracker_name
log_with logging_dir loss_type lr_scheduler lr_scheduler_type metadata_author metadata_description
metadata_is_negative_embedding metadata_license metadata_merged_from metadata_preprocessor metadata_tags
metadata_thumbnail metadata_title metadata_trigger_phrase metadata_usage_hint mixed_precision network_module
network_weights offload_optimizer_device offload_optimizer_nvme_path offload_param_device offload_param_nvme_path
optimizer_type output_dir output_name pretrained_model_name_or_path qwen3 reg_data_dir resize_interpolation
resolution resume sample_prompts sample_sampler save_model_as save_precision secondary_separator t5_tokenizer_path
timestep_sampling tokenizer_cache_dir train_data_dir training_comment vae wandb_api_key wandb_run_name
weighting_scheme
""")
ALL = BOOL | INT | FLOAT | INT_OR_FLOAT | LIST | STR

# What IMPORT.txt calls each kind of flag animad does not map.
NO_EFFECT = "no effect in sd-scripts' Anima trainer"
NO_EQUIVALENT = "no equivalent in animad"
SUPERSEDED = "superseded by animad"
SAME = "the same as animad does (nothing to write)"
READ = "files read by animad import (or not)"
SHADOWED = "shadowed: sd-scripts itself ignores it"
GUI_FIELD = "a GUI preset field"
OTHER_MODEL = "for another model"

# Why each flag that animad does not map is left out: (kind, reason), by group.
_UNMAPPED_GROUPS: list[tuple[str, str, str]] = [
    (NO_EFFECT, NO_EFFECT_ANIMA,
     "min_snr_gamma multires_noise_iterations multires_noise_discount noise_offset adaptive_noise_scale "
     "noise_offset_random_strength debiased_estimation_loss scale_v_pred_loss_like_noise_pred v_pred_like_loss"),
    (NO_EFFECT, "a Stable Diffusion option: the Anima trainer's own noise, timestep and text paths never read it",
     "v2 v_parameterization zero_terminal_snr clip_skip max_token_length no_half_vae mem_eff_attn "
     "tokenizer_cache_dir min_timestep max_timestep"),
    (NO_EFFECT, "sd-scripts uses it only with --timestep_sampling sigma (a weighting-scheme density); sigmoid, "
                "shift and uniform sampling ignore it", "logit_mean logit_std mode_scale"),
    (SUPERSEDED, EVERY_EPOCH,
     "save_every_n_epochs save_every_n_steps save_last_n_epochs save_last_n_steps save_n_epoch_ratio save_model_as"),
    (SUPERSEDED, "the resume state is always saved, and a stopped job resumes by itself",
     "save_state save_state_on_train_end save_last_n_epochs_state save_last_n_steps_state resume initial_epoch "
     "initial_step skip_until_initial_step"),
    (SUPERSEDED, ALWAYS_CACHED, "cache_latents cache_latents_to_disk skip_cache_check cache_info"),
    (SUPERSEDED, "text embeddings are cached whenever captions are fixed (precision.cache_text)",
     "cache_text_encoder_outputs cache_text_encoder_outputs_to_disk"),
    (SUPERSEDED, "epoch files go to the job's work folder and the review package to the outbox; names come from "
                 "the folder (or name:)", "output_dir"),
    (SUPERSEDED, "animad logs the run itself (animad logs JOB, animad tensorboard JOB)",
     "log_with logging_dir log_prefix log_tracker_name log_tracker_config log_config wandb_api_key wandb_run_name "
     "console_log_level console_log_file console_log_simple debug_dataset output_config"),
    (SUPERSEDED, "the attention kernel is chosen by precision.attention (auto picks the fastest)",
     "xformers sdpa split_attn attn_mode"),
    (SUPERSEDED, "a speed or memory setting animad chooses itself",
     "max_data_loader_n_workers persistent_data_loader_workers vae_batch_size text_encoder_batch_size vae_chunk_size "
     "vae_disable_cache lowram highvram disable_mmap_load_safetensors dynamo_backend ddp_timeout "
     "ddp_gradient_as_bucket_view ddp_static_graph qwen3_max_token_length t5_max_token_length"),
    (SUPERSEDED, "tokenizers are found by animad.yaml's search (ComfyUI, sd-scripts, the tokenizers: list)",
     "t5_tokenizer_path"),
    (SUPERSEDED, "more than one GPU is animad.yaml's gpus: (data parallel)",
     "deepspeed zero_stage offload_optimizer_device offload_optimizer_nvme_path offload_param_device "
     "offload_param_nvme_path zero3_init_flag zero3_save_16bit_model fp16_master_weights_and_gradients"),
    (SUPERSEDED, "the network kind is network.type here (lora, lokr or loha)", "network_module"),
    (SUPERSEDED, "the previews of the review package replace sample images (previews.prompts adds prompts)",
     "sample_every_n_epochs sample_every_n_steps sample_at_first sample_sampler"),
    (READ, "its prompts are previews.prompts", "sample_prompts"),
    (SUPERSEDED, "the stable evaluation loss (eval:) replaces the validation split",
     "validation_split validation_seed validate_every_n_epochs validate_every_n_steps max_validation_steps"),
    (READ, "a file for animad import to read", "dataset_config config_file train_data_dir"),
    (NO_EQUIVALENT, "animad keeps no Hugging Face upload", "huggingface_repo_id huggingface_repo_type "
     "huggingface_path_in_repo huggingface_token huggingface_repo_visibility save_state_to_huggingface "
     "resume_from_huggingface async_upload"),
    (NO_EQUIVALENT, "no per-module learning rates here (one LR for the DiT LoRA)",
     "self_attn_lr cross_attn_lr mlp_lr mod_lr llm_adapter_lr"),
    (NO_EQUIVALENT, "the DiT stays in its stored dtype; no fp8, full-fp16/bf16 or block swapping here",
     "fp8_base fp8_base_unet full_bf16 full_fp16 blocks_to_swap cpu_offload_checkpointing "
     "unsloth_offload_checkpointing fused_backward_pass"),
    (NO_EQUIVALENT, "the loss is plain L2 here", "loss_type huber_c huber_scale huber_schedule weighting_scheme "
     "masked_loss"),
    (NO_EQUIVALENT, "no schedule options beyond schedule.type, cycles and warmup here",
     "lr_scheduler_type lr_scheduler_args lr_scheduler_power lr_scheduler_timescale lr_scheduler_min_lr_ratio "
     "lr_decay_steps"),
    (NO_EQUIVALENT, "no caption templating here (write the captions as they should train)",
     "caption_prefix caption_suffix caption_separator keep_tokens_separator secondary_separator enable_wildcard "
     "weighted_captions token_warmup_min token_warmup_step caption_dropout_every_n_epochs"),
    (NO_EQUIVALENT, "no such augmentation here", "color_aug random_crop face_crop_aug_range resize_interpolation"),
    (NO_EQUIVALENT, "no regularisation images or fine-tuning metadata here",
     "reg_data_dir prior_loss_weight in_json dataset_repeats dataset_class conditioning_data_dir is_reg "
     "metadata_file"),
    (NO_EQUIVALENT, "sd-scripts' old spelling of caption_extension; set data.caption_extension", "caption_extention"),
    (NO_EQUIVALENT, "the LoRA is created fresh or continued from network.init_from; no merged base weights",
     "base_weights base_weights_multiplier dim_from_weights network_train_text_encoder_only llm_adapter_path"),
    (NO_EQUIVALENT, "only author and description are written into the LoRA metadata here",
     "metadata_title metadata_license metadata_tags metadata_thumbnail metadata_merged_from metadata_preprocessor "
     "metadata_is_negative_embedding metadata_usage_hint metadata_trigger_phrase training_comment no_metadata"),
    (NO_EQUIVALENT, "only AdamW, AdamW8bit, Prodigy and Adafactor here", "use_lion_optimizer"),
]

UNMAPPED: dict[str, tuple[str, str]] = {
    name: (kind, reason) for kind, reason, names in _UNMAPPED_GROUPS for name in names.split()}


def reason_unmapped(name: str) -> tuple[str, str]:
    """(kind, reason) for a flag animad does not map; unknown names are said to be unknown."""
    if name in UNMAPPED:
        return UNMAPPED[name]
    alias = ALIASES.get(name)
    if alias is not None and alias.note:
        return NO_EQUIVALENT, alias.note
    if name in ALL:
        return NO_EQUIVALENT, "animad has no setting for it"
    return "not an sd-scripts option", "anima_train_network.py has no such option (sd-scripts would refuse it)"


def resolve_prefix(name: str) -> tuple[str | None, list[str]]:
    """The flag argparse reads for `--name`: itself, or the one option it is a prefix of.

    Returns (full name or None, the candidates when it is ambiguous or unknown)."""
    if name in ALL:
        return name, []
    matches = sorted(n for n in ALL if n.startswith(name))
    if len(matches) == 1:
        return matches[0], matches
    return None, matches
