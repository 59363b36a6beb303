"""The LoRA mechanism: low-rank modules on frozen linears, and the network that holds them.

Each LoRAModule wraps a frozen nn.Linear by replacing its forward (the base module and its state-dict
names stay untouched). Which linears exist, what they are called in a file and which rank group they
belong to is Anima's business (anima/lora_names.py, asked through the face); the network's own
state_dict, keyed by those names, *is* the file format ComfyUI loads as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animad.anima.lora_names import TEXT_ENCODER, UNET
from animad.anima.pipeline import Anima
from animad.errors import UserError


class LoRAModule(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout=0.0, rank_dropout=0.0,
                 module_dropout=0.0):
        super().__init__()
        self.lora_down = nn.Linear(base.in_features, rank, bias=False)
        self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)  # starts as an exact no-op on the base model
        alpha = float(alpha or rank)
        self.register_buffer("alpha", torch.tensor(alpha))
        self.rank = rank
        # alpha / rank as a Python float: reading the alpha buffer in the forward would be a host
        # sync per module per step on a GPU and a graph break under torch.compile. The buffer stays
        # (it is the file's `.alpha` key); loading a state dict refreshes the float from it.
        self.scale = alpha / rank
        self.register_load_state_dict_post_hook(LoRAModule.refresh_scale)
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        self.multiplier = 1.0
        self.__dict__["base"] = base  # not a submodule: base weights must not enter the LoRA state dict
        self.__dict__["base_forward"] = base.forward

    def refresh_scale(self, incompatible_keys=None) -> None:
        """After alpha changed (a loaded file or state): one read of the buffer, outside any step."""
        self.scale = float(self.alpha) / self.rank

    def attach(self) -> None:
        self.base.forward = self.forward

    def detach(self) -> None:
        if "forward" in self.base.__dict__:
            del self.base.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)
        if self.multiplier == 0:
            return out
        # (A CPU draw, seeded per step: a host read but no GPU sync; under torch.compile it breaks the
        # graph, which only module_dropout > 0 pays for.)
        if self.training and self.module_dropout and torch.rand(()) < self.module_dropout:
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


class LoRANetwork(nn.Module):
    """All LoRA modules, keyed by their names in the file, each in a rank group (unet or text encoder)."""

    def __init__(self):
        super().__init__()
        self.loras = nn.ModuleDict()
        self.groups: dict[str, str] = {}

    def add(self, name: str, module: LoRAModule, group: str) -> None:
        self.loras[name] = module
        self.groups[name] = group
        module.attach()

    def state_dict(self, *args, **kwargs):
        # Drop the ModuleDict prefix so the state dict is exactly the file format.
        raw = super().state_dict(*args, **kwargs)
        return {k[len("loras."):]: v for k, v in raw.items()}

    def load_state_dict(self, state, strict=True, assign=False):
        return super().load_state_dict({f"loras.{k}": v for k, v in state.items()}, strict=strict, assign=assign)

    def set_multiplier(self, value: float) -> None:
        for module in self.loras.values():
            module.multiplier = value

    def detach_all(self) -> None:
        for module in self.loras.values():
            module.detach()

    def group_parameters(self, group: str) -> list[nn.Parameter]:
        return [p for n, m in self.loras.items() if self.groups[n] == group for p in m.parameters()]

    def unet_parameters(self):
        return self.group_parameters(UNET)

    def text_encoder_parameters(self):
        return self.group_parameters(TEXT_ENCODER)


def file_modules(state: dict[str, torch.Tensor]) -> set[str]:
    """The module names a loaded LoRA file holds."""
    return {k.rsplit(".lora_down.weight", 1)[0] for k in state if k.endswith(".lora_down.weight")}


def file_rank_alpha(state: dict[str, torch.Tensor], name: str) -> tuple[int, float]:
    rank = state[f"{name}.lora_down.weight"].shape[0]
    return rank, float(state.get(f"{name}.alpha", torch.tensor(float(rank))))


def build_network(anima: Anima, network_config, init_state: dict | None = None) -> LoRANetwork:
    """Attach LoRA modules to the chosen linears. init_state (a loaded LoRA file) sets ranks and weights.

    The text encoder's linears take part only when anima has it loaded (the loop loads it when captions
    change every step or its LoRA trains)."""
    init_state = init_state or {}
    cfg = network_config
    if cfg.type != "lora":
        raise UserError(f"network.type: {cfg.type} is not trained yet; use network.type: lora")
    net = LoRANetwork()
    ranks = {UNET: cfg.dim, TEXT_ENCODER: cfg.text_encoder_dim or cfg.dim}
    wanted = [(target, ranks[target.group]) for target in anima.lora_targets(cfg)]
    # Modules present in a continued LoRA file are always kept, even if today's targets are narrower.
    available = anima.lora_linears()
    from_file = file_modules(init_state)
    listed = {target.name for target, _ in wanted}
    for name in sorted(from_file - listed):
        if name in available:
            wanted.append((available[name], cfg.dim))
    for target, rank in wanted:
        alpha = cfg.alpha if cfg.alpha is not None else rank
        if target.name in from_file:
            rank, alpha = file_rank_alpha(init_state, target.name)
        module = LoRAModule(target.linear, rank, alpha, cfg.dropout, cfg.rank_dropout, cfg.module_dropout)
        module.to(device=target.linear.weight.device)
        net.add(target.name, module, target.group)
    if from_file:
        missing_in_model = from_file - set(net.loras)
        if missing_in_model:
            raise ValueError(f"the LoRA file has modules this model does not: {sorted(missing_in_model)[:3]}")
        state = {k: v for k, v in init_state.items() if k.rsplit(".", 2)[0] in from_file
                 or k.rsplit(".", 1)[0] in from_file}
        current = net.state_dict()
        current.update({k: v.to(current[k].dtype) for k, v in state.items() if k in current})
        net.load_state_dict(current)
    return net


def network_from_state(anima: Anima, state: dict[str, torch.Tensor]) -> LoRANetwork:
    """A network with exactly the modules of a LoRA file (for previews: later epochs just load weights)."""
    available = anima.lora_linears()
    net = LoRANetwork()
    for name in sorted(file_modules(state)):
        if name not in available:
            raise ValueError(f"LoRA module {name} does not exist in this model")
        target = available[name]
        rank, alpha = file_rank_alpha(state, name)
        net.add(name, LoRAModule(target.linear, rank, alpha).to(target.linear.weight.device), target.group)
    load_weights(net, state)
    return net


def load_weights(net: LoRANetwork, state: dict[str, torch.Tensor]) -> None:
    """Swap in another epoch's weights without touching the base model (the 'weight patching')."""
    current = net.state_dict()
    missing = set(current) - set(state)
    if any(not k.endswith(".alpha") for k in missing):
        raise ValueError(f"LoRA file lacks {sorted(missing)[:3]}")
    net.load_state_dict({k: state[k].to(current[k].dtype) if k in state else current[k] for k in current})
