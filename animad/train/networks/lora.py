"""LoRA: a low-rank pair on each linear, delta = alpha/rank * up @ down (sd-scripts' networks/lora_anima.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animad.train.networks.module import NetworkModule


class LoRAModule(NetworkModule):
    PARTS = ("lora_down.weight", "lora_up.weight")

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout=0.0, rank_dropout=0.0,
                 module_dropout=0.0):
        alpha = float(alpha or rank)
        super().__init__(base, alpha, dropout, rank_dropout, module_dropout)
        self.lora_down = nn.Linear(base.in_features, rank, bias=False)
        self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)  # starts as an exact no-op on the base model
        self.rank = rank
        self.refresh_scale()

    @classmethod
    def dim_of(cls, shapes: dict) -> int:
        return shapes["lora_down.weight"][0]

    @classmethod
    def from_config(cls, base: nn.Linear, dim: int, alpha: float | None, factor: int, **dropouts) -> "LoRAModule":
        return cls(base, dim, dim if alpha is None else alpha, **dropouts)

    @classmethod
    def from_shapes(cls, base: nn.Linear, shapes: dict, alpha: float | None, dropout=0.0, rank_dropout=0.0,
                    module_dropout=0.0) -> "LoRAModule":
        rank = shapes["lora_down.weight"][0]
        return cls(base, rank, rank if alpha is None else alpha, dropout, rank_dropout, module_dropout)

    def scale_for(self, alpha: float) -> float:
        return alpha / self.rank

    def delta(self) -> torch.Tensor:
        return self.scale * (self.lora_up.weight.float() @ self.lora_down.weight.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)
        if self.skipped():
            return out
        # Under autocast the matmul casts by itself. The question needs the device: the form without
        # one asks about CUDA, so on the CPU inputs were upcast to fp32 under bf16 autocast.
        autocast = torch.is_autocast_enabled(x.device.type)
        h = self.lora_down(x if autocast else x.to(self.lora_down.weight.dtype))
        scale = self.scale * self.multiplier
        if self.training and self.dropout:
            h = F.dropout(h, p=self.dropout)
        if self.training and self.rank_dropout:
            # One mask per sample and rank, shared by all tokens; works for any input rank (B, ..., r).
            shape = (h.shape[0],) + (1,) * (h.ndim - 2) + (h.shape[-1],)
            h = h * (torch.rand(shape, device=h.device) > self.rank_dropout).to(h.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        if autocast or h.dtype == out.dtype:
            # One fused kernel, out + scale * h @ up^T (addmm's beta = 1, alpha = scale), instead of a
            # matmul, a scale, a cast and an add: three fewer launches per module per pass, the same
            # sum (under autocast addmm casts to the autocast dtype as the matmul alone did).
            up = self.lora_up.weight
            fused = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), up.t(), alpha=scale)
            return fused.view(out.shape)
        return out + (self.lora_up(h) * scale).to(out.dtype)
