"""The optimizer: --optimizer_type, --use_8bit_adam and --optimizer_args as optimizer.* keys, and the
learning rates.

An optimizer animad does not have (CAME, Automagic, Lion, D-Adaptation, schedule-free ...) is never a
refusal: job.yaml gets the closest one animad has, chosen by how the learning rate is meant (an
explicit Adam-like rate keeps AdamW at the same rate; an optimizer that adapts its own rate gets
Prodigy, which does too), and the reason is the first problem in IMPORT.txt.
"""

from __future__ import annotations

import re

from animad.importer.flags import NO_EQUIVALENT, SAME, SHADOWED
from animad.importer.records import Unmapped
from animad.importer.sources import key_values

OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "bitsandbytes.optim.adamw8bit": "adamw8bit",
              "pagedadamw8bit": "adamw8bit", "prodigy": "prodigy", "prodigyopt.prodigy": "prodigy",
              "adafactor": "adafactor", "transformers.optimization.adafactor": "adafactor"}
# The optimizers' own defaults, which sd-scripts leaves in place when --optimizer_args does not set them.
OPTIMIZER_DEFAULTS = {
    "adamw": {"weight_decay": 0.01, "betas": [0.9, 0.999]},  # torch.optim.AdamW
    "adamw8bit": {"weight_decay": 0.01, "betas": [0.9, 0.999]},  # bitsandbytes AdamW8bit
    "prodigy": {"weight_decay": 0.0, "betas": [0.9, 0.999], "safeguard_warmup": False,
                "use_bias_correction": False},  # prodigyopt.Prodigy
    "adafactor": {"weight_decay": 0.0},  # transformers Adafactor
}
OPTIMIZER_ARG_KEYS = {"weight_decay", "betas", "eps", "d_coef", "safeguard_warmup", "use_bias_correction"}
# (pattern on the lower-cased name without its module, animad's optimizer, keep the given LR?, why)
ADAPTIVE = "it sets its own learning rate, and so does Prodigy, the closest here"
FALLBACKS = [
    (r"came", "adamw", True, "CAME is Adam with a confidence-guided update and factored second moments; AdamW at "
                             "the same learning rate is the closest here"),
    (r"automagic", "prodigy", False, "Automagic adapts a learning rate per parameter; " + ADAPTIVE),
    (r"dadapt", "prodigy", True, "Prodigy is D-Adaptation's successor by the same authors; the learning rate is a "
                                 "multiplier of the adapted step in both"),
    (r"prodigy", "prodigy", True, "a Prodigy variant; animad's Prodigy is prodigyopt's"),
    (r"lion", "adamw", True, "Lion takes a sign step with one momentum; AdamW is the closest here. Lion's learning "
                             "rates are usually 3-10x below AdamW's: raise optimizer.lr"),
    (r"schedulefree", "adamw", True, "schedule-free Adam averages its iterates instead of following a schedule; "
                                     "AdamW at the same learning rate is the closest here"),
    (r"adamw?(8bit|32bit|_?8bit)?$|radam|nadam|adan|adabelief|ademamix|adopt|stableadamw|apollo", "adamw", True,
     "an Adam variant; AdamW at the same learning rate is the closest here"),
    (r"sgd", "prodigy", False, "an SGD learning rate does not carry over to an Adam-like optimizer; " + ADAPTIVE),
]


def closest(written: str) -> tuple[str, bool, str]:
    """(animad's optimizer, whether the learning rate carries over, why) for one animad does not have."""
    name = written.lower().rsplit(".", 1)[-1]
    for pattern, kind, keep_lr, why in FALLBACKS:
        if re.search(pattern, name):
            return kind, keep_lr, why
    return "prodigy", False, "not an optimizer animad knows; Prodigy, which sets its own step size, is the safest"


def translate_optimizer(take, out, comment_of, default_comment) -> None:
    type_flag, use_8bit, args_flag = take("optimizer_type"), take("use_8bit_adam"), take("optimizer_args")
    written = str(type_flag.value) if type_flag and type_flag.value else ""
    if written and use_8bit and use_8bit.value:
        out.problems.append(f"{use_8bit.origin} together with {type_flag.origin}: sd-scripts refuses both; "
                            "the --optimizer_type was used")
    keep_lr = True
    if not written:
        kind = "adamw8bit" if use_8bit and use_8bit.value else "adamw"
        comment = comment_of(use_8bit) if use_8bit and use_8bit.value else default_comment("optimizer_type")
    else:
        kind = OPTIMIZERS.get(written.lower())
        comment = comment_of(type_flag)
    if kind is None:
        kind, keep_lr, why = closest(written)
        out.problems.insert(0, f"{type_flag.origin}: animad has no {written} optimizer (it has Prodigy, AdamW, "
                               f"AdamW8bit and Adafactor); job.yaml says optimizer.type: {kind}: {why}")
        comment = f"{comment}: not here; {kind} is the closest (IMPORT.txt says why)"
    out.set("optimizer.type", kind, comment)
    exact = written == "" or written.lower() in OPTIMIZERS
    given = key_values(args_flag.value, args_flag.origin, out.problems) if args_flag else {}
    for key, value in given.items():
        if not exact and key != "weight_decay":
            out.unmapped.append(Unmapped(f"--optimizer_args {key}", args_flag.origin, NO_EQUIVALENT,
                                         f"an argument of {written}, which is not here"))
            continue
        if key not in OPTIMIZER_ARG_KEYS or (kind != "prodigy" and key in ("d_coef", "safeguard_warmup",
                                                                          "use_bias_correction")):
            if key == "decouple" and value is True and kind == "prodigy":
                out.unmapped.append(Unmapped(f"--optimizer_args {key}", args_flag.origin, SAME,
                                             "animad's Prodigy always decouples weight decay"))
            elif kind == "adafactor" and key in ("scale_parameter", "relative_step", "warmup_init") and not value:
                out.unmapped.append(Unmapped(f"--optimizer_args {key}", args_flag.origin, SAME,
                                             "off, as animad's Adafactor runs"))
            else:
                out.unmapped.append(Unmapped(f"--optimizer_args {key}", args_flag.origin, NO_EQUIVALENT,
                                             f"animad's {kind} has no such option"))
            continue
        if key == "betas":
            try:
                value = [float(v) for v in (value if isinstance(value, (list, tuple)) else str(value).split(","))]
            except (TypeError, ValueError):
                out.problems.append(f"{args_flag.origin}: betas={value!r} are not numbers; not imported")
                continue
        out.set(f"optimizer.{key}", value, f"{comment_of(args_flag)} ({key})")
    for key, value in OPTIMIZER_DEFAULTS[kind].items():
        if key not in given:
            out.set(f"optimizer.{key}", value, f"{kind}'s own default in sd-scripts ({key} not in --optimizer_args)"
                    if exact else f"{kind}'s own default")
    if kind == "adafactor" and exact and given.get("relative_step", True):
        out.problems.append("sd-scripts' Adafactor sets its own learning rate unless --optimizer_args "
                            "relative_step=False; animad's Adafactor runs at optimizer.lr, so this run will differ")
    _learning_rates(take, out, comment_of, default_comment, keep_lr)


def _learning_rates(take, out, comment_of, default_comment, keep_lr: bool) -> None:
    learning_rate, unet_lr, te_lr = take("learning_rate"), take("unet_lr"), take("text_encoder_lr")
    lr_flag = unet_lr or learning_rate
    if not keep_lr:
        out.set("optimizer.lr", 1.0, "Prodigy's own scale (1.0): the imported optimizer's learning rate does not "
                                     "carry over (IMPORT.txt)")
        for flag in (learning_rate, unet_lr, te_lr):
            if flag is not None:
                out.unmapped.append(Unmapped(f"--{flag.name}", flag.origin, NO_EQUIVALENT,
                                             "a learning rate of an optimizer that is not here; Prodigy sets its own "
                                             "(optimizer.lr 1.0)"))
        return
    out.set("optimizer.lr", lr_flag.value if lr_flag else 2e-6,
            comment_of(lr_flag) if lr_flag else default_comment("learning_rate"), default_for="learning_rate")
    if te_lr is not None and te_lr.value:
        try:
            out.set("optimizer.text_encoder_lr", float(te_lr.value[0]), comment_of(te_lr))
        except (TypeError, ValueError):
            out.problems.append(f"{te_lr.origin}: not a number; it was not imported")
        if len(te_lr.value) > 1:
            out.problems.append(f"{te_lr.origin}: one text encoder here; only the first value was used")
    if unet_lr is not None and te_lr is not None and learning_rate is not None:
        out.unmapped.append(Unmapped("--learning_rate", learning_rate.origin, SHADOWED,
                                     "--unet_lr and --text_encoder_lr set both of the LoRA's learning rates"))
    elif unet_lr is not None and te_lr is None:
        value = learning_rate.value if learning_rate else 2e-6
        out.set("optimizer.text_encoder_lr", value, "sd-scripts trains the text encoder at --learning_rate when "
                "only --unet_lr is given")

