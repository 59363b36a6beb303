"""Optimizers (Prodigy, AdamW, AdamW8bit, Adafactor) and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from animad.errors import UserError
from animad.train.prodigy import Prodigy


def default_lr(optimizer_config) -> float:
    if optimizer_config.lr is not None:
        return optimizer_config.lr
    return 1.0 if optimizer_config.type == "prodigy" else 1e-4


def build_optimizer(unet_params, te_params, optimizer_config):
    cfg = optimizer_config
    lr = default_lr(cfg)
    te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else lr
    groups = [{"params": list(unet_params), "lr": lr}]
    if te_params:
        groups.append({"params": list(te_params), "lr": te_lr})
    betas = tuple(cfg.betas)
    if cfg.type == "prodigy":
        # Our own Prodigy (train/prodigy.py): prodigyopt's maths without its two host syncs per parameter.
        return Prodigy(groups, lr=lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay, decouple=True,
                       use_bias_correction=cfg.use_bias_correction, safeguard_warmup=cfg.safeguard_warmup,
                       d_coef=cfg.d_coef)
    if cfg.type == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.type == "adamw8bit":
        try:
            import bitsandbytes  # imported lazily: it costs seconds and pulls in torch._dynamo
        except Exception as error:  # noqa: BLE001 - any import failure means the same thing to the user
            raise UserError(f"optimizer.type adamw8bit needs bitsandbytes, which failed to load ({error}); "
                            "use 'adamw' or fix the bitsandbytes install") from None
        return bitsandbytes.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.type == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer.type {cfg.type}")


@dataclasses.dataclass(frozen=True)
class Cooldown:
    """The decay to zero after a confirmed floor (warmup-stable-decay's "decay").

    Saved in the resume state, so the schedule stays a pure function of the step and these numbers:
    a run resumed mid-cooldown follows the same LR to the step as one never stopped.
    """

    start_step: int  # the optimizer step the decay starts from (the LR there is where the schedule was)
    steps: int  # steps from that LR down to 0


def lr_factor(step: int, total: int, warmup: int, kind: str, cycles: int = 1,
              cooldown: Cooldown | None = None) -> float:
    """Multiplier on the base LR at optimizer step `step` (0-based)."""
    # 3) after a confirmed floor: straight down from where the schedule was, reaching 0 at the cooldown's end
    if cooldown is not None and step >= cooldown.start_step:
        start = lr_factor(cooldown.start_step, total, warmup, kind, cycles)
        return start * max(0.0, 1.0 - (step - cooldown.start_step) / max(1, cooldown.steps))
    # 1) linear warmup from near zero
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    # 2) then the chosen decay over the remaining steps
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))
    raise ValueError(kind)


def warmup_steps(schedule_config, total_steps: int) -> int:
    cfg = schedule_config
    return cfg.warmup_steps or int(round(cfg.warmup_percent * total_steps))


def schedule_kind(schedule_config, selection_config) -> str:
    """The decay actually followed: `auto` is constant with stop-at-floor on (the floor then starts the
    cooldown, bench/schedule_quality.py), else the guides' cosine over max_epochs."""
    if schedule_config.type != "auto":
        return schedule_config.type
    return "constant" if selection_config.stop_at_floor else "cosine"


def lr_lambda(schedule_config, selection_config, total_steps: int, cooldown: Cooldown | None = None):
    """The scheduler's LR multiplier as a picklable partial: a pure function of the step."""
    return functools.partial(lr_factor, total=total_steps, warmup=warmup_steps(schedule_config, total_steps),
                             kind=schedule_kind(schedule_config, selection_config), cycles=schedule_config.cycles,
                             cooldown=cooldown)


def build_scheduler(optimizer, schedule_config, selection_config, total_steps: int,
                    cooldown: Cooldown | None = None):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(schedule_config, selection_config, total_steps, cooldown))


def follow_cooldown(scheduler, schedule_config, selection_config, total_steps: int, cooldown: Cooldown) -> None:
    """From now on the scheduler follows the schedule with this cooldown.

    LambdaLR's state_dict does not keep its functions, so this runs both when the cooldown starts
    and on a resume into it. The multiplier at the cooldown's first step equals the plain schedule's,
    so the LR in force does not jump.
    """
    scheduler.lr_lambdas = [lr_lambda(schedule_config, selection_config, total_steps, cooldown)
                            for _ in scheduler.optimizer.param_groups]


def effective_lr(optimizer) -> float:
    """The step size actually used: d*lr for Prodigy, lr otherwise (what the guides tell users to watch).

    Prodigy keeps d on the device; this reads it (one host sync) and refreshes the param groups' "d"
    with it, so call it once per log interval, not per micro-batch."""
    if isinstance(optimizer, Prodigy):
        optimizer.sync_to_groups()
    group = optimizer.param_groups[0]
    return float(group.get("d", 1.0)) * float(group["lr"])


def effective_lr_tensor(optimizer) -> torch.Tensor | None:
    """d*lr as a device tensor (None before Prodigy's first step or for other optimizers), to read
    together with the loss in one sync."""
    d = optimizer.d_tensor() if isinstance(optimizer, Prodigy) else None
    return None if d is None else d * optimizer.param_groups[0]["lr"]
