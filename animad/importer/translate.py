"""Translate what sd-scripts would have run (importer/read.py) into job.yaml keys.

The aim is the same training, not the same words: where animad's default differs from sd-scripts'
(shuffle, keep tokens, caption extension, buckets, max bucket, upscale, batch, scheduler, alpha,
AdamW's weight decay and betas, precision, checkpointing, the text-encoder LoRA, stopping), the
sd-scripts value is written out even when the files never mention it, so the run does not change
silently. Every value carries the flag it came from, for the comment on its line. A flag that is
not mapped gets its reason (importer/flags.py) for IMPORT.txt; none is dropped silently.
"""

from __future__ import annotations

from pathlib import PureWindowsPath
from typing import Any

from animad.config.aliases import ALIASES
from animad.importer.flags import NO_EFFECT, READ, SAME, SHADOWED, SUPERSEDED, reason_unmapped
from animad.importer.network import translate_network
from animad.importer.optimizer import translate_optimizer
from animad.importer.records import (SD_DEFAULT, SubsetPlan, Translation, Unmapped, comment_of,
                                     default_comment)
from animad.importer.sources import DatasetSubset, Flag, Sources, int_or_float
from animad.importer.words import shown

# sd-scripts' defaults for the dataset settings (train_util's argparse defaults, which config_util
# falls back to) that a faithful job.yaml must state.
DATASET_DEFAULTS = {
    "shuffle_caption": False, "keep_tokens": 0, "caption_extension": ".caption", "enable_bucket": False,
    "max_bucket_reso": 1024, "min_bucket_reso": 256, "bucket_reso_steps": 64, "bucket_no_upscale": False,
    "train_batch_size": 1, "flip_aug": False, "caption_tag_dropout_rate": 0.0, "caption_dropout_rate": 0.0,
    "num_repeats": 1, "alpha_mask": False,
}


def _data_keys(names: str) -> dict[str, str]:
    """sd-scripts name -> its key under data:, from the aliases table (one table for hints and import)."""
    return {name: ALIASES[name].target.split(".", 1)[1] for name in names.split()}


# Data-level keys animad has once per job; subset-level ones it has per subfolder.
JOB_LEVEL = _data_keys("resolution train_batch_size enable_bucket min_bucket_reso max_bucket_reso bucket_reso_steps "
                       "bucket_no_upscale caption_extension")
SUBSET_LEVEL = _data_keys("keep_tokens shuffle_caption caption_tag_dropout_rate caption_dropout_rate flip_aug "
                          "alpha_mask")
SCHEDULERS = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine",
              "cosine_with_restarts": "cosine_with_restarts", "linear": "linear"}
PRECISIONS = {"no": "fp32", "float": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def translate(sources: Sources, job_keys: set[str]) -> Translation:
    """job.yaml entries for what sd-scripts would have run; job_keys are the keys this animad has."""
    out = Translation(problems=list(sources.problems), notes=list(sources.notes),
                      unresolved=set(sources.unresolved))
    used: set[str] = set()
    training = bool(sources.flags) or sources.launch_file is not None or bool(sources.unresolved)
    _unresolved(sources, out)
    # Without a dataset config sd-scripts takes the dataset settings from the command line; with one
    # named but not read, they are unknown, and writing sd-scripts' defaults would be a guess.
    unread = ("dataset_config" in sources.flags or "dataset_config" in sources.unresolved) and not sources.subsets
    subsets = sources.subsets or ([DatasetSubset({}, 0)] if training and not unread else [])
    if subsets:
        _dataset(sources, subsets, out, used)
    elif unread:
        for name in sorted(set(JOB_LEVEL) | set(SUBSET_LEVEL)):
            if name in sources.flags:
                used.add(name)
                out.unmapped.append(Unmapped(f"--{name}", sources.flags[name].origin, "not imported",
                                             "the dataset config was not read, and its values win over this flag; "
                                             "import the dataset TOML together with the launch file"))
    if training:
        _training(sources, out, used, job_keys)
    for name, flag in sources.flags.items():
        if name not in used:
            kind, reason = reason_unmapped(name)
            if name in sources.read_as:
                kind, reason = READ, sources.read_as[name]
            elif flag.value is False and kind != "not an sd-scripts option":
                kind, reason = SAME, "off, as animad does"
            out.unmapped.append(Unmapped(f"--{name}", flag.origin, kind, reason))
    for item in sources.listed:
        out.unmapped.append(Unmapped(item.flag, item.origin, item.kind, item.reason))
    for flag in sources.unknown:
        out.unmapped.append(Unmapped(f"--{flag.name}", flag.origin, *reason_unmapped(flag.name)))
    for text in sources.accelerate:
        out.unmapped.append(Unmapped(text.split()[0], f"accelerate launch {text}", SUPERSEDED,
                                     "an option of accelerate, not of the trainer; animad starts its own processes "
                                     "(animad.yaml gpus:)"))
    _previews(sources, out, used)
    if training and not sources.subsets and not unread:
        out.notes.append("no dataset config was read: the data settings are the files' flags and sd-scripts' "
                         "defaults; put the images in the job folder (or give the dataset TOML too)")
    return out


def _unresolved(sources: Sources, out: Translation) -> None:
    """Flags given with a value the launch file does not tell: named, never written as $X or %X%."""
    for name, flag in sources.unresolved.items():
        alias = ALIASES.get(name)
        mapped = name in ("pretrained_model_name_or_path", "qwen3", "vae", "network_module", "network_args",
                          "optimizer_type", "optimizer_args", "lr_scheduler", "dataset_config", "config_file") or (
            alias is not None and alias.target is not None)
        what = f"{flag.value}" if flag.value else "its value"
        if mapped:
            out.problems.append(f"{flag.origin}: {what} is not set in the file (an environment variable or an "
                                "argument given when it runs), so it was not imported: animad's default stays; "
                                "set it in job.yaml")
        else:
            kind, reason = reason_unmapped(name)
            out.unmapped.append(Unmapped(f"--{name}", flag.origin, kind, f"{reason} (its value, {what}, is not "
                                                                          "known here)"))


def _previews(sources: Sources, out: Translation, used: set[str]) -> None:
    """--sample_prompts: the prompts, and their --n/--d/--s/--l/--w/--h/--fs where animad has them."""
    prompts = sources.prompts
    if not prompts:
        return
    flag = sources.flags.get("sample_prompts")
    origin = comment_of(flag) if flag else "--sample_prompts"
    out.set("previews.prompts", [str(p["prompt"]) for p in prompts], f"{origin}: animad's default prompts are "
            "added (previews.prompts_mode: replace for only these)")
    seeds = [p.get("seed") for p in prompts]
    if all(s is not None for s in seeds):
        out.set("previews.seeds", [int(s) for s in seeds], f"{origin} (--d)")
    elif any(s is not None for s in seeds):
        out.notes.append(f"{origin}: only some prompts have a seed (--d); previews use animad's fixed seeds for all")
    for key, target, kind, low, high in (("negative_prompt", "negative_prompt", str, None, None),
                                         ("sample_steps", "steps", int, 1, 200), ("scale", "cfg", float, 0, None),
                                         ("width", "width", int, 64, 2048), ("height", "height", int, 64, 2048),
                                         ("flow_shift", "flow_shift", float, 0.01, None)):
        values = [p[key] for p in prompts if key in p]
        if not values:
            continue
        letter = {"negative_prompt": "n", "sample_steps": "s", "scale": "l", "width": "w", "height": "h",
                  "flow_shift": "fs"}[key]
        value = values[0]
        if len(set(map(str, values))) > 1:
            out.notes.append(f"{origin}: the prompts differ in --{letter}; animad has one previews.{target} for all, "
                             f"so the first ({value}) was used")
        if kind in (int, float) and ((low is not None and value < low) or (high is not None and value > high)):
            out.notes.append(f"{origin}: --{letter} {value} is outside what previews.{target} takes; animad's "
                             "default stays")
            continue
        if target in ("width", "height") and value % 16:
            value = max(64, round(value / 16) * 16)
        out.set(f"previews.{target}", kind(value), f"{origin} (--{letter})")
    for p in prompts:
        for key in ("sample_sampler", "guidance_scale", "controlnet_image", "cfg_trunc_ratio", "renorm_cfg"):
            if key in p:
                out.notes.append(f"{origin}: a prompt's {key} ({p[key]}) has no equivalent in the previews "
                                 "(euler, ComfyUI's sampling); not imported")
        for text in p.get("unreadable", []):
            out.notes.append(f"{origin}: the prompt option {text} is not one sd-scripts reads; ignored")
    out.notes = list(dict.fromkeys(out.notes))


def _value(subset: DatasetSubset, sources: Sources, name: str) -> tuple[Any, str]:
    """A dataset setting as config_util resolves it: subset > dataset > [general] > command line > default."""
    flag = subset.values.get(name) or sources.flags.get(name)
    if flag is not None:
        return flag.value, comment_of(flag)
    return DATASET_DEFAULTS.get(name), default_comment(name)


def _convert_data(name: str, value):
    if name == "bucket_no_upscale":
        return not value
    if name == "resolution":
        if isinstance(value, str):
            value = [int(v) for v in value.replace(" ", "").split(",")]
        if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
            return value[0]
        return value
    if name == "caption_extension" and value and not str(value).startswith("."):
        return "." + str(value)
    return value


def _dataset(sources: Sources, subsets: list[DatasetSubset], out: Translation, used: set[str]) -> None:
    used.update(JOB_LEVEL)
    used.update(SUBSET_LEVEL)
    first = subsets[0]
    if sources.subsets:
        # config_util takes a command-line dataset flag only where the TOML does not set that key.
        key_of = {v: k for k, v in {"batch_size": "train_batch_size"}.items()}
        for name in sorted(set(JOB_LEVEL) | set(SUBSET_LEVEL)):
            flag = sources.flags.get(name)
            setting = [s for s in subsets if name in s.values]
            if flag is None or not setting:
                continue
            toml_key = key_of.get(name, name)
            if len(setting) == len(subsets):
                out.unmapped.append(Unmapped(f"--{name}", flag.origin, SHADOWED,
                                             f"the dataset TOML sets {toml_key} ({setting[0].values[name].origin}), "
                                             "and config_util uses the TOML's value"))
            else:
                out.notes.append(f"{flag.origin}: used only for the subsets whose dataset TOML entry does not set "
                                 f"{toml_key}, as config_util does")
    for name, key in JOB_LEVEL.items():
        value, comment = _value(first, sources, name)
        if value is None:
            continue  # resolution not given anywhere: sd-scripts would stop; the default here is 1024
        others = {repr(_value(s, sources, name)[0]) for s in subsets[1:]}
        if others - {repr(value)}:
            out.problems.append(f"the subsets differ in {name} ({', '.join(sorted(others | {repr(value)}))}); "
                                f"animad has one data.{key} per job, so the first subset's {value!r} was used")
        try:
            out.set(("data", key), _convert_data(name, value), comment, default_for=name)
        except (TypeError, ValueError):
            out.problems.append(f"{comment}: {value!r} cannot be read as data.{key}; it was not imported")
    base = {}
    for name, key in SUBSET_LEVEL.items():
        value, comment = _value(first, sources, name)
        base[name] = value
        out.set(("data", key), value, comment, default_for=name)
    folders: set[str] = set()
    seen_keys: set[str] = set()
    for index, subset in enumerate(subsets):
        seen_keys.update(subset.values)
        image_dir = subset.values.get("image_dir")
        if subset.values.get("is_reg") and subset.values["is_reg"].value:
            out.problems.append(f"{subset.values['is_reg'].origin}: a regularisation subset; animad has none, so "
                                f"{image_dir.value if image_dir else 'it'} was not imported")
            continue
        if image_dir is None:
            if sources.subsets:
                out.problems.append(f"{sources.dataset_file.name} subset #{index + 1} has no image_dir; skipped")
                continue
            folder = ""  # no dataset config: the images go in the job folder itself
        else:
            folder = _folder_name(shown(str(image_dir.value)), folders)
            out.subsets.append(SubsetPlan(folder, str(image_dir.value), image_dir.origin))
        if not folder:
            continue
        repeats = subset.values.get("num_repeats")
        out.set(("data", "subsets", folder, "repeats"), repeats.value if repeats else 1,
                comment_of(repeats) if repeats else default_comment("num_repeats"))
        tokens = subset.values.get("class_tokens")
        if tokens is not None:
            out.set(("data", "subsets", folder, "class_tokens"), str(tokens.value), comment_of(tokens))
        for name, key in SUBSET_LEVEL.items():
            value, comment = _value(subset, sources, name)
            if value != base[name]:
                out.set(("data", "subsets", folder, key), value, comment)
    # Dataset keys the reading did not map: listed with their reason, once each.
    done = set(JOB_LEVEL) | set(SUBSET_LEVEL) | {"image_dir", "num_repeats", "class_tokens"}
    for name in sorted(seen_keys - done):
        flag = next(s.values[name] for s in subsets if name in s.values)
        kind, reason = reason_unmapped(name)
        if flag.value is False or flag.value in ("", None):
            kind, reason = SAME, "off, as animad does"
        out.unmapped.append(Unmapped(name, flag.origin, kind, reason))


def _folder_name(image_dir: str, taken: set[str]) -> str:
    """The subfolder for an image_dir: its own name (what the user knows it as), made unique."""
    text = image_dir.rstrip("/\\")
    name = PureWindowsPath(text).name if "\\" in text or ":" in text[:2] else text.rsplit("/", 1)[-1]
    name = "".join("_" if c in "/\\:\0$%{}" else c for c in name).strip("._") or "subset"
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _training(sources: Sources, out: Translation, used: set[str], job_keys: set[str]) -> None:
    flags = sources.flags

    def take(name: str) -> Flag | None:
        used.add(name)
        return flags.get(name)

    def direct(name: str) -> None:
        """A flag that means the same as its key here (the key from the aliases table)."""
        flag, key = take(name), ALIASES[name].target
        if flag is not None:
            if key not in job_keys:  # a key this animad does not have (yet): listed, not written
                used.discard(name)
                return
            out.set(key, flag.value, comment_of(flag))

    for name, key in (("pretrained_model_name_or_path", "dit"), ("qwen3", "text_encoder"), ("vae", "vae")):
        flag = take(name)
        if flag is not None:
            out.models[key] = flag
    direct("output_name")
    direct("metadata_author")
    direct("metadata_description")
    seed = take("seed")
    if seed is not None:
        out.set("seed", seed.value, comment_of(seed))
    elif "seed" not in out.unresolved:
        out.notes.append("no --seed: sd-scripts drew a random one; animad trains with seed 0")
    translate_network(take, sources, out, job_keys, comment_of, default_comment)
    direct("network_weights")
    unet_only = take("network_train_unet_only")
    out.set("network.train_text_encoder", not (unet_only and unet_only.value),
            comment_of(unet_only) if unet_only else "sd-scripts trains a text-encoder LoRA unless "
            "--network_train_unet_only is given", default_for="network_train_unet_only")
    direct("scale_weight_norms")
    translate_optimizer(take, out, comment_of, default_comment)
    direct("max_grad_norm")
    # schedule
    _schedule(take("lr_scheduler"), take("lr_scheduler_num_cycles"), take("lr_scheduler_power"),
              take("lr_warmup_steps"), out)
    epochs, steps = take("max_train_epochs"), take("max_train_steps")
    if epochs is not None:
        out.set("schedule.max_epochs", epochs.value, comment_of(epochs))
        if steps is not None:
            out.unmapped.append(Unmapped("--max_train_steps", steps.origin, SHADOWED,
                                         "sd-scripts ignores it when --max_train_epochs is given"))
    elif "max_train_epochs" not in out.unresolved:
        out.set("schedule.max_steps", steps.value if steps else 1600,
                comment_of(steps) if steps else default_comment("max_train_steps"), default_for="max_train_steps")
        out.set("schedule.max_epochs", 100000, "sd-scripts counts this run in steps, not epochs",
                default_for="max_train_steps")
    out.set("selection.stop_at_floor", False, "sd-scripts trains every epoch; true lets animad stop at the loss "
            "floor and save the rest of the night")
    direct("gradient_accumulation_steps")
    # precision
    mixed, save = take("mixed_precision"), take("save_precision")
    out.set("precision.mixed", PRECISIONS.get(str(mixed.value) if mixed else "no", "fp32"),
            comment_of(mixed) if mixed else f"{default_comment('mixed_precision')}: 'no', fp32",
            default_for="mixed_precision")
    out.set("precision.save", PRECISIONS.get(str(save.value), "fp32") if save else "fp32",
            comment_of(save) if save else "sd-scripts saves the LoRA in its fp32 training dtype without "
            "--save_precision", default_for="save_precision")
    checkpointing = take("gradient_checkpointing")
    # Checkpointing changes memory and speed, never what is trained; on a GPU precision.vram: auto (left
    # at its default) picks it from the free memory, so the line says when the value counts.
    out.set("precision.gradient_checkpointing", bool(checkpointing and checkpointing.value),
            (comment_of(checkpointing) if checkpointing else default_comment("gradient_checkpointing")) +
            "; used on the CPU and with precision.vram: off: on a GPU, vram: auto picks checkpointing from the free "
            "memory (speed and memory only, the same training)", default_for="gradient_checkpointing")
    direct("torch_compile")
    # timesteps
    _timesteps(take("timestep_sampling"), take("sigmoid_scale"), take("discrete_flow_shift"), out)
    direct("ip_noise_gamma")
    direct("ip_noise_gamma_random_strength")


def _schedule(kind: Flag | None, cycles: Flag | None, power: Flag | None, warmup: Flag | None,
              out: Translation) -> None:
    name = str(kind.value) if kind else "constant"
    target = SCHEDULERS.get(name)
    if name == "polynomial" and (power is None or float(power.value) == 1.0):
        target = "linear"
        out.notes.append(f"{kind.origin}: polynomial with power 1 is a linear decay; written as linear")
    if target is None:
        out.problems.append(f"{kind.origin}: animad has no {name} schedule; job.yaml says constant: choose "
                            "schedule.type")
        target = "constant"
    out.set("schedule.type", target, comment_of(kind) if kind else default_comment("lr_scheduler"),
            default_for="lr_scheduler")
    if cycles is not None:
        if target == "cosine_with_restarts":
            out.set("schedule.cycles", cycles.value, comment_of(cycles))
        else:
            out.unmapped.append(Unmapped("--lr_scheduler_num_cycles", cycles.origin, NO_EFFECT,
                                         f"sd-scripts uses it only with cosine_with_restarts, not {name}"))
    if power is not None and name != "polynomial":
        out.unmapped.append(Unmapped("--lr_scheduler_power", power.origin, NO_EFFECT,
                                     f"sd-scripts uses it only with polynomial, not {name}"))
    if warmup is not None:
        value = int_or_float(warmup.value)
        if isinstance(value, int):
            out.set("schedule.warmup_steps", value, f"{comment_of(warmup)}: a whole number is steps")
        elif value > 0.5:
            out.problems.append(f"{warmup.origin}: warmup over {value:.0%} of the run; animad allows at most 50%, "
                                "so it was not imported: set schedule.warmup_percent")
        else:
            out.set("schedule.warmup_percent", value, f"{comment_of(warmup)}: below 1 is a fraction of all steps")


def _timesteps(sampling: Flag | None, scale: Flag | None, shift: Flag | None, out: Translation) -> None:
    name = str(sampling.value) if sampling else "sigmoid"
    if name in ("sigmoid", "shift"):
        out.set("timesteps.sampling", "logit_normal", comment_of(sampling) if sampling else
                f"{SD_DEFAULT} --timestep_sampling sigmoid")
        if scale is not None:
            out.set("timesteps.logit_std", scale.value, comment_of(scale))
    elif name == "uniform":
        out.set("timesteps.sampling", "uniform", comment_of(sampling))
    else:
        out.problems.append(f"{sampling.origin}: animad has no {name} timestep sampling (only sd-scripts' sigmoid, "
                            "shift and uniform); job.yaml keeps logit_normal")
    if shift is not None:
        if name == "shift":
            out.set("timesteps.shift", shift.value, comment_of(shift))
        else:
            out.unmapped.append(Unmapped("--discrete_flow_shift", shift.origin, NO_EFFECT,
                                         f"sd-scripts shifts sampled timesteps only with --timestep_sampling shift, "
                                         f"not {name}"))
    if scale is not None and name not in ("sigmoid", "shift"):
        out.unmapped.append(Unmapped("--sigmoid_scale", scale.origin, NO_EFFECT, f"unused with {name} sampling"))
