"""GUI presets: what kohya_ss (.json) and SD-Trainer (lora-scripts, .toml) save, read as the sd-scripts
flags those GUIs pass.

Both GUIs keep fields that are not sd-scripts options: kohya_ss' `LoRA_type`, `epoch`,
`max_resolution`, `optimizer`, `lr_warmup` (a percentage), `additional_parameters` and its
`anima_*` fields; SD-Trainer's `[metadata]` table, `model_train_type`, `lycoris_algo`,
`lokr_factor`, `conv_dim` and its preview fields. Each field becomes the flag the GUI would pass (as
the GUI builds its command: kohya_gui/lora_gui.py, mikazuki's config conversion), or is listed with
why it is not one. Every field is shown in IMPORT.txt with what it became.
"""

from __future__ import annotations

import re
from pathlib import Path

from animad.importer.flags import GUI_FIELD, OTHER_MODEL, SAME, SHADOWED
from animad.anima.facts import NETWORK_MODULES
from animad.importer.launch import _set_launch_flag, _split_options
from animad.importer.prompts import line_to_prompt
from animad.importer.sources import Flag, Listed, Sources, set_flag


ANIMA_LORA = NETWORK_MODULES["lora"]  # sd-scripts' Anima LoRA module
# kohya_ss LoRA_type -> (network module, LyCORIS algo or None)
KOHYA_TYPES = {
    "standard": (ANIMA_LORA, None), "anima": (ANIMA_LORA, None),
    "kohya lokr": ("networks.lokr", None), "kohya loha": ("networks.loha", None),
    "lycoris/lokr": ("lycoris.kohya", "lokr"), "lycoris/loha": ("lycoris.kohya", "loha"),
    "lycoris/locon": ("lycoris.kohya", "locon"), "locon": ("lycoris.kohya", "locon"),
    "kohya locon": ("networks.lora", None), "lycoris/ia3": ("lycoris.kohya", "ia3"),
    "lycoris/diag-oft": ("lycoris.kohya", "diag-oft"), "lycoris/boft": ("lycoris.kohya", "boft"),
    "lycoris/glora": ("lycoris.kohya", "glora"), "lycoris/dylora": ("lycoris.kohya", "dylora"),
    "kohya dylora": ("networks.dylora", None), "lycoris/native fine-tuning": ("lycoris.kohya", "full"),
    "lora-fa": ("networks.lora_fa", None), "flux1": ("networks.lora_flux", None),
    "flux1 oft": ("networks.oft_flux", None),
}
# Network settings kohya_ss passes in --network_args for LyCORIS and its own LoKr/LoHa.
KOHYA_NETWORK_ARGS = ("factor", "conv_dim", "conv_alpha", "use_tucker", "use_scalar", "use_cp", "decompose_both",
                      "bypass_mode", "dora_wd", "rank_dropout_scale", "train_norm", "constrain", "rescaled",
                      "train_on_input", "unit", "rank_dropout", "module_dropout")
KOHYA_RENAMED = {"epoch": "max_train_epochs", "max_resolution": "resolution", "optimizer": "optimizer_type",
                 "lora_network_weights": "network_weights", "LyCORIS_preset": None}
MODEL_SWITCHES = {"sdxl": "SDXL", "v2": "SD 2", "flux1_checkbox": "FLUX.1", "sd3_checkbox": "SD3",
                  "lumina_checkbox": "Lumina", "hunyuan_image_checkbox": "HunyuanImage"}
OTHER_MODEL_PREFIXES = ("sdxl_", "flux1_", "sd3_", "hunyuan_", "lumina_", "t5xxl", "clip_l", "clip_g", "ae",
                        "img_", "txt_", "single_", "double_", "train_t5xxl", "split_mode", "split_qkv",
                        "train_blocks", "guidance_scale", "apply_t5_attn_mask", "model_prediction_type", "save_clip",
                        "save_t5xxl", "pos_emb_random_crop_rate", "in_dims", "train_double_block_indices",
                        "train_single_block_indices", "enable_all_linear", "mem_eff_save", "show_timesteps",
                        "v_parameterization", "v_pred_like_loss", "clip_skip", "max_token_length", "model_type")
GUI_ONLY = {
    "model_list": "which model the GUI's list had selected; the model files are the path fields",
    "num_cpu_threads_per_process": "an option of accelerate, not of the trainer; animad starts its own processes",
    "num_processes": "more than one GPU is animad.yaml's gpus:", "num_machines": "animad trains on one machine",
    "multi_gpu": "more than one GPU is animad.yaml's gpus:", "gpu_ids": "the GPUs are animad.yaml's gpus:",
    "main_process_port": "animad starts its own processes", "extra_accelerate_launch_args": "animad starts its "
    "own processes", "print_only": "a GUI button", "headless": "a GUI setting",
    "noise_offset_type": "the noise options have no effect in sd-scripts' Anima trainer (plain noise)",
    "stop_text_encoder_training": "no such switch in animad (network.train_text_encoder trains it the whole run)",
    "lowvram": "sd-scripts removed it; animad picks its own memory savings (precision.vram)",
    "save_as_bool": "a GUI setting", "block_lr_zero_threshold": "no per-block learning rates here",
    "down_lr_weight": "no per-block learning rates here", "mid_lr_weight": "no per-block learning rates here",
    "up_lr_weight": "no per-block learning rates here", "block_dims": "no per-block ranks here",
    "block_alphas": "no per-block ranks here", "conv_block_dims": "no conv layers are trained here",
    "conv_block_alphas": "no conv layers are trained here", "conv_dims": "no conv layers are trained here",
    "conv_alphas": "no conv layers are trained here", "loraplus_lr_ratio": "no LoRA+ here (one LR for both sides)",
    "loraplus_unet_lr_ratio": "no LoRA+ here", "loraplus_text_encoder_lr_ratio": "no LoRA+ here",
    "train_lora_ggpo": "no GGPO here", "ggpo_sigma": "no GGPO here", "ggpo_beta": "no GGPO here",
    "dynamo_mode": "animad compiles with its own settings (precision.compile)",
    "dynamo_use_fullgraph": "animad compiles with its own settings", "dynamo_use_dynamic": "animad compiles with "
    "its own settings", "xformers": "the attention kernel is precision.attention here (auto picks the fastest)",
    "sample_every_n_steps": "the review package previews the shortlisted epochs",
    "anima_checkbox": "it says the preset is for Anima", "anima_qwen_image_vae_2d": "no such option here",
    "anima_compile": "animad compiles with precision.compile", "anima_compile_backend": "animad compiles with its "
    "own settings", "anima_compile_mode": "animad compiles with its own settings",
    "anima_compile_dynamic": "animad compiles with its own settings", "anima_compile_fullgraph": "animad compiles "
    "with its own settings", "anima_compile_cache_size_limit": "animad compiles with its own settings",
    "ip_noise_gamma_random_strength": None, "lr_warmup": None, "lr_warmup_steps": None,
}
# kohya_ss sends nothing for these when they are 0 (lora_gui.py: "x if x != 0 else None").
ZERO_IS_UNSET = {"max_train_epochs", "max_train_steps", "ip_noise_gamma", "max_timestep", "save_every_n_steps",
                 "save_last_n_steps", "save_last_n_steps_state", "text_encoder_lr", "unet_lr", "t5xxl_lr",
                 "lr_scheduler_num_cycles", "sample_every_n_epochs", "sample_every_n_steps", "min_snr_gamma"}
# SD-Trainer (lora-scripts) fields that are not sd-scripts options.
SD_TRAINER_NETWORK_ARGS = {"lycoris_algo": "algo", "lokr_factor": "factor", "conv_dim": "conv_dim",
                           "conv_alpha": "conv_alpha", "dropout": "dropout", "train_norm": "train_norm"}
SD_TRAINER_ONLY = {
    "model_train_type": None, "network_args_custom": None, "optimizer_args_custom": None,
    "positive_prompts": None, "negative_prompts": None, "sample_width": None, "sample_height": None,
    "sample_cfg": None, "sample_seed": None, "sample_steps": None, "prompt_file": None,
    "enable_preview": "previews are always rendered for the shortlist here",
    "randomly_choice_prompt": "the review package renders every prompt for every pick",
    "random_prompt_include_subdirs": "the review package renders every prompt for every pick",
    "gpu_ids": "the GPUs are animad.yaml's gpus:", "enable_distributed_training": "more than one GPU is animad.yaml's "
    "gpus:", "enable_base_weight": "no merged base weights here", "ui_custom_params": "a GUI setting",
    "lr_restart_cycles": None, "pytorch_cuda_expandable_segments": "animad sets its own allocator options",
    "enable_mixed_resolution_training": "buckets are data.buckets here",
}


def is_gui_preset(data: dict) -> bool:
    """An SD-Trainer preset ([metadata]/[data]) or its saved flat config (model_train_type)."""
    return "model_train_type" in data or isinstance(data.get("data"), dict) or isinstance(data.get("metadata"), dict)


def read_gui_preset(data: dict, path: Path, sources: Sources) -> None:
    if path.suffix.lower() == ".json":
        _kohya_ss(data, path, sources)
    else:
        _sd_trainer(data, path, sources)


def _show(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _empty(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _network_args(parts: list[tuple[str, str, object]], path: Path, sources: Sources, where: str) -> None:
    """Fields that the GUI passes as --network_args key=value, appended to any given ones."""
    if not parts:
        return
    existing = sources.flags.get("network_args")
    items = list(existing.value) if existing else []
    items += [f"{arg}={value}" for _, arg, value in parts]
    for key, arg, value in parts:
        sources.arg_origins[f"network_args {arg}"] = f"{path.name} {where}{key} = {_show(value)}"
    origin = f"{path.name} {where}" + ", ".join(f"{key} = {_show(value)}" for key, _, value in parts)
    sources.flags["network_args"] = Flag("network_args", items, origin if not existing else
                                         f"{existing.origin}; {origin}")


def _kohya_ss(data: dict, path: Path, sources: Sources) -> None:
    name = path.name
    fields = dict(data)
    for switch, model in MODEL_SWITCHES.items():
        if switch not in fields:
            continue
        value = fields.pop(switch)
        if value is True:
            sources.problems.append(f"{name} {switch} = true: a kohya_ss preset for {model}; it was read as Anima's "
                                    "LoRA trainer's settings")
        sources.listed.append(Listed(switch, f"{name} {switch} = {_show(value)}", GUI_FIELD,
                                     f"it says whether the preset is for {model}"))
    _kohya_network(fields, path, sources)
    _kohya_schedule(fields, name, sources)
    _kohya_texts(fields, name, sources)
    for key, value in fields.items():
        origin = f"{name} {key} = {_show(value)}"
        flag = key.removeprefix("anima_") if key not in GUI_ONLY else KOHYA_RENAMED.get(key, key)
        flag = KOHYA_RENAMED.get(flag, flag)
        if key in GUI_ONLY and GUI_ONLY[key]:
            sources.listed.append(Listed(key, origin, GUI_FIELD, GUI_ONLY[key]))
        elif key == "LyCORIS_preset":
            sources.listed.append(Listed(key, origin, GUI_FIELD, "LyCORIS' module preset; the targets are "
                                         "network.targets here"))
        elif key.startswith(OTHER_MODEL_PREFIXES):
            sources.listed.append(Listed(key, origin, OTHER_MODEL, "a setting for another model's trainer; "
                                         "anima_train_network.py does not read it"))
        elif _empty(value) or (value == 0 and flag in ZERO_IS_UNSET) or value is False:
            sources.listed.append(Listed(key, origin, SAME, "empty, 0 or false: kohya_ss passes nothing for it"))
        else:
            set_flag(sources, flag, value, origin if key == flag else f"{origin} (kohya_ss passes it as --{flag})")


def _kohya_network(fields: dict, path: Path, sources: Sources) -> None:
    """LoRA_type -> --network_module (and algo), the LyCORIS fields -> --network_args, and kohya_ss' rule
    that a text-encoder learning rate of 0 (with a DiT one) means --network_train_unet_only."""
    name = path.name
    lora_type = fields.pop("LoRA_type", None)
    algo = None
    if lora_type is not None:
        module, algo = KOHYA_TYPES.get(str(lora_type).lower(), (None, None))
        if module is None:
            sources.problems.append(f"{name} LoRA_type = {lora_type!r}: not a kohya_ss LoRA type animad knows; "
                                    "read as a LoRA")
            module = ANIMA_LORA
        set_flag(sources, "network_module", module, f"{name} LoRA_type = {lora_type!r}")
    lycoris = algo is not None or str(lora_type).lower() in ("kohya lokr", "kohya loha")
    parts = [("LoRA_type", "algo", algo)] if algo else []
    for key in KOHYA_NETWORK_ARGS:
        if key not in fields:
            continue
        value = fields.pop(key)
        origin = f"{name} {key} = {_show(value)}"
        if key in ("rank_dropout", "module_dropout") and not lycoris:
            if value not in (0, 0.0, "", None):
                parts.append((key, key, value))
            else:
                sources.listed.append(Listed(key, origin, SAME, "0: off"))
        elif lycoris and not _empty(value):
            parts.append((key, key, value))
        else:
            sources.listed.append(Listed(key, origin, GUI_FIELD, f"used only with LyCORIS/LoKr/LoHa types, not "
                                                                f"{lora_type}"))
    _network_args(parts, path, sources, "")
    te_lr, unet_lr = fields.get("text_encoder_lr"), fields.get("unet_lr")
    if _number(te_lr) == 0 and _number(unet_lr) not in (0, None):
        set_flag(sources, "network_train_unet_only", True, f"{name} text_encoder_lr = 0 (kohya_ss then passes "
                                                            "--network_train_unet_only)")


def _kohya_schedule(fields: dict, name: str, sources: Sources) -> None:
    """epoch (unless max_train_epochs is set) and lr_warmup, a percentage (unless lr_warmup_steps is set)."""
    epochs = fields.get("max_train_epochs")
    if _number(epochs) not in (None, 0) and "epoch" in fields:
        value = fields.pop("epoch")
        sources.listed.append(Listed("epoch", f"{name} epoch = {_show(value)}", SHADOWED,
                                     f"max_train_epochs = {epochs} is set and wins"))
    warmup = fields.pop("lr_warmup", None)
    steps = fields.pop("lr_warmup_steps", None)
    if _number(steps) not in (None, 0):
        set_flag(sources, "lr_warmup_steps", steps, f"{name} lr_warmup_steps = {_show(steps)}")
        if warmup is not None:
            sources.listed.append(Listed("lr_warmup", f"{name} lr_warmup = {_show(warmup)}", SHADOWED,
                                         "kohya_ss uses lr_warmup_steps when it is set"))
    elif _number(warmup) not in (None, 0):
        set_flag(sources, "lr_warmup_steps", f"{_number(warmup)}%", f"{name} lr_warmup = {_show(warmup)} "
                                                                    "(kohya_ss: a percentage of all steps)")
    else:
        for key, value in (("lr_warmup", warmup), ("lr_warmup_steps", steps)):
            if value is not None:
                sources.listed.append(Listed(key, f"{name} {key} = {_show(value)}", SAME, "0: no warmup"))


def _kohya_texts(fields: dict, name: str, sources: Sources) -> None:
    """Fields that hold command-line text: the args lists, additional_parameters, the sample prompts."""
    for key in ("optimizer_args", "lr_scheduler_args"):
        if isinstance(fields.get(key), str):
            value = fields.pop(key)
            if value.strip():
                set_flag(sources, key, _args_words(value), f"{name} {key} = {_show(value)}")
            else:
                sources.listed.append(Listed(key, f"{name} {key} = ''", SAME, "empty"))
    extra = fields.pop("additional_parameters", None)
    if isinstance(extra, str) and extra.strip():
        words = _args_words(extra)
        for flag_name, values, text, used in _split_options(words, [[] for _ in words]):
            _set_launch_flag(sources, f"{name} additional_parameters", flag_name, values, text, used)
    elif extra is not None:
        sources.listed.append(Listed("additional_parameters", f"{name} additional_parameters = ''", SAME, "empty"))
    prompts = fields.pop("sample_prompts", None)
    if isinstance(prompts, str) and prompts.strip():
        sources.prompts = [line_to_prompt(line.strip()) for line in prompts.split("\n")
                           if line.strip() and not line.strip().startswith("#")]
        sources.flags["sample_prompts"] = Flag("sample_prompts", "(the preset's own text)",
                                               f"{name} sample_prompts = {_show(prompts)}")
        sources.read_as["sample_prompts"] = f"read: {len(sources.prompts)} prompt(s) of the preset are " \
                                            "previews.prompts"
    elif prompts is not None:
        sources.listed.append(Listed("sample_prompts", f"{name} sample_prompts = ''", SAME,
                                     "empty: no sample prompts"))


def _sd_trainer(data: dict, path: Path, sources: Sources) -> None:
    name = path.name
    fields: dict = {}
    for key, value in data.items():
        if key == "metadata" and isinstance(value, dict):
            for inner, inner_value in value.items():
                sources.listed.append(Listed(f"[metadata] {inner}", f"{name} [metadata] {inner} = "
                                             f"{_show(inner_value)}", GUI_FIELD, "the preset's own label in "
                                             "SD-Trainer, not a training setting"))
        elif isinstance(value, dict):
            fields.update({inner: (inner_value, f"{name} [{key}] {inner} = {_show(inner_value)}")
                           for inner, inner_value in value.items()})
        else:
            fields[key] = (value, f"{name} {key} = {_show(value)}")
    train_type = fields.pop("model_train_type", (None, ""))
    if train_type[0] is not None:
        if "anima" not in str(train_type[0]).lower():
            sources.problems.append(f"{train_type[1]}: an SD-Trainer preset for {train_type[0]}, not Anima; its "
                                    "settings were read as Anima's LoRA trainer's")
        sources.listed.append(Listed("model_train_type", train_type[1], GUI_FIELD,
                                     "SD-Trainer's choice of trainer script"))
    parts = []
    for key, arg in SD_TRAINER_NETWORK_ARGS.items():
        if key in fields:
            value, origin = fields.pop(key)
            if not _empty(value):
                parts.append((key, arg, value))
            else:
                sources.listed.append(Listed(key, origin, SAME, "empty"))
    for key, flag in (("network_args_custom", "network_args"), ("optimizer_args_custom", "optimizer_args")):
        if key in fields:
            value, origin = fields.pop(key)
            items = value if isinstance(value, list) else _args_words(str(value))
            if flag == "network_args":
                parts += [(key, *str(item).split("=", 1)) for item in items if "=" in str(item)]
            else:
                existing = sources.flags.get(flag)
                set_flag(sources, flag, (list(existing.value) if existing else []) + list(items), origin)
    if "algo" in [arg for _, arg, _ in parts] and "network_module" not in fields:
        set_flag(sources, "network_module", "lycoris.kohya", f"{name} lycoris_algo (SD-Trainer then uses "
                                                              "lycoris.kohya)")
    _network_args(parts, path, sources, "")
    if "lr_restart_cycles" in fields:
        value, origin = fields.pop("lr_restart_cycles")
        set_flag(sources, "lr_scheduler_num_cycles", value, f"{origin} (SD-Trainer's name for "
                                                             "--lr_scheduler_num_cycles)")
    preview = {k: fields.pop(k) for k in ("positive_prompts", "negative_prompts", "sample_width", "sample_height",
                                          "sample_cfg", "sample_seed", "sample_steps", "prompt_file") if k in fields}
    if "prompt_file" in preview and not _empty(preview["prompt_file"][0]):
        set_flag(sources, "sample_prompts", preview["prompt_file"][0], preview["prompt_file"][1])
    elif "positive_prompts" in preview and not _empty(preview["positive_prompts"][0]):
        line = str(preview["positive_prompts"][0])
        for key, option in (("negative_prompts", "n"), ("sample_width", "w"), ("sample_height", "h"),
                            ("sample_cfg", "l"), ("sample_steps", "s"), ("sample_seed", "d")):
            if key in preview and not _empty(preview[key][0]):
                line += f" --{option} {preview[key][0]}"
        sources.prompts = [line_to_prompt(line)]
        sources.flags["sample_prompts"] = Flag("sample_prompts", "(the preset's preview fields)",
                                               "; ".join(origin for _, origin in preview.values()))
        sources.read_as["sample_prompts"] = "read: the preset's preview prompt is previews.prompts"
        preview = {}
    for key, (value, origin) in preview.items():
        sources.listed.append(Listed(key, origin, GUI_FIELD, "a preview field; no preview prompt is set"))
    for key, (value, origin) in fields.items():
        if key in SD_TRAINER_ONLY:
            sources.listed.append(Listed(key, origin, GUI_FIELD, SD_TRAINER_ONLY[key] or "a GUI field"))
        elif key.startswith("anima_") or key in ("qwen3", "vae", "llm_adapter_path", "t5_tokenizer_path"):
            set_flag(sources, key.removeprefix("anima_"), value, origin)
        else:
            set_flag(sources, key, value, origin)


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _args_words(text: str) -> list[str]:
    """`"betas=0.9,0.99" "d0=1e-3" weight_decay=0.01`: words, quotes removed."""
    return [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', text)]
