"""LoRA on the DiT (and optionally the LLM adapter and the Qwen3 text encoder), in sd-scripts' format.

Each LoRAModule wraps a frozen nn.Linear by replacing its forward (the base module and its state-dict
names stay untouched). The network's own state_dict *is* the file format ComfyUI loads as is:
`lora_unet_blocks_0_self_attn_q_proj.lora_down.weight`, `.lora_up.weight` and `.alpha`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

GROUP_PATTERNS = {
    "self_attn": r"blocks\.\d+\.self_attn\.(q_proj|k_proj|v_proj|output_proj)",
    "cross_attn": r"blocks\.\d+\.cross_attn\.(q_proj|k_proj|v_proj|output_proj)",
    "mlp": r"blocks\.\d+\.mlp\.layer[12]",
}
ADAPTER_PATTERN = r"llm_adapter\.blocks\.\d+\.(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|o_proj)|" \
                  r"llm_adapter\.blocks\.\d+\.mlp\.[02]"
TEXT_ENCODER_PATTERN = r"layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"


def select_targets(linear_names: list[str], network) -> list[str]:
    """DiT (and adapter) linear names that get a LoRA, from the network config's targets/blocks/regexes."""
    groups = "|".join(GROUP_PATTERNS[g] for g in network.targets)
    chosen = []
    for name in linear_names:
        hit = bool(groups) and re.fullmatch(groups, name) is not None
        if hit and network.blocks is not None:
            hit = int(name.split(".")[1]) in network.blocks
        if network.train_llm_adapter and re.fullmatch(ADAPTER_PATTERN, name):
            hit = True
        if any(re.fullmatch(p, name) for p in network.include):
            hit = True
        if any(re.fullmatch(p, name) for p in network.exclude):
            hit = False
        if hit:
            chosen.append(name)
    return chosen


def lora_name(prefix: str, module_name: str) -> str:
    return f"{prefix}_{module_name.replace('.', '_')}"


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
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        self.multiplier = 1.0
        self.__dict__["base"] = base  # not a submodule: base weights must not enter the LoRA state dict
        self.__dict__["base_forward"] = base.forward

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def attach(self) -> None:
        self.base.forward = self.forward

    def detach(self) -> None:
        if "forward" in self.base.__dict__:
            del self.base.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)
        if self.multiplier == 0:
            return out
        if self.training and self.module_dropout and torch.rand(()) < self.module_dropout:
            return out
        h = self.lora_down(x.to(self.lora_down.weight.dtype) if not torch.is_autocast_enabled() else x)
        scale = self.scale * self.multiplier
        if self.training and self.dropout:
            h = F.dropout(h, p=self.dropout)
        if self.training and self.rank_dropout:
            # One mask per sample and rank, shared by all tokens; works for any input rank (B, ..., r).
            shape = (h.shape[0],) + (1,) * (h.ndim - 2) + (h.shape[-1],)
            h = h * (torch.rand(shape, device=h.device) > self.rank_dropout).to(h.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return out + (self.lora_up(h) * scale).to(out.dtype)


class LoRANetwork(nn.Module):
    """All LoRA modules, keyed by their sd-scripts names."""

    def __init__(self):
        super().__init__()
        self.loras = nn.ModuleDict()

    def add(self, name: str, module: LoRAModule) -> None:
        self.loras[name] = module
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

    def unet_parameters(self):
        return [p for n, m in self.loras.items() if not n.startswith("lora_te_") for p in m.parameters()]

    def text_encoder_parameters(self):
        return [p for n, m in self.loras.items() if n.startswith("lora_te_") for p in m.parameters()]


def linear_modules(model: nn.Module, prefix: str = "") -> dict[str, nn.Linear]:
    return {f"{prefix}{n}": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def build_network(dit, adapter, text_encoder, network_config, init_state: dict | None = None) -> LoRANetwork:
    """Attach LoRA modules to the chosen linears. init_state (a loaded LoRA file) sets ranks and weights."""
    init_state = init_state or {}
    cfg = network_config
    net = LoRANetwork()
    unet_linears = linear_modules(dit)
    unet_linears.update(linear_modules(adapter, "llm_adapter."))
    targets = select_targets(list(unet_linears), cfg)
    from_file = {k.rsplit(".lora_down.weight", 1)[0] for k in init_state if k.endswith(".lora_down.weight")}
    wanted = [(lora_name("lora_unet", n), unet_linears[n], cfg.dim) for n in targets]
    if cfg.train_text_encoder and text_encoder is not None:
        te_dim = cfg.text_encoder_dim or cfg.dim
        wanted += [(lora_name("lora_te", n), m, te_dim) for n, m in linear_modules(text_encoder).items()
                   if re.fullmatch(TEXT_ENCODER_PATTERN, n)]
    # Modules present in a continued LoRA file are always kept, even if today's targets are narrower.
    by_name = {lora_name("lora_unet", n): m for n, m in unet_linears.items()}
    if text_encoder is not None:
        by_name.update({lora_name("lora_te", n): m for n, m in linear_modules(text_encoder).items()})
    listed = {w[0] for w in wanted}
    for name in sorted(from_file - listed):
        if name in by_name:
            wanted.append((name, by_name[name], cfg.dim))
    for name, base, rank in wanted:
        alpha = cfg.alpha if cfg.alpha is not None else rank
        if name in from_file:
            rank = init_state[f"{name}.lora_down.weight"].shape[0]
            alpha = float(init_state.get(f"{name}.alpha", torch.tensor(float(rank))))
        module = LoRAModule(base, rank, alpha, cfg.dropout, cfg.rank_dropout, cfg.module_dropout)
        module.to(device=base.weight.device)
        net.add(name, module)
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


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a LoRA file into sd-scripts names; accepts kohya keys and ComfyUI/PEFT `diffusion_model.` keys."""
    from safetensors.torch import load_file

    raw = load_file(str(path))
    out = {}
    for key, value in raw.items():
        if key.startswith(("lora_unet_", "lora_te_")):
            out[key] = value.float()
            continue
        match = re.match(r"(diffusion_model|text_encoders\.qwen3_06b\.transformer\.model)\.(.+)\."
                         r"(lora_A|lora_B|lora_down|lora_up|alpha)(\.weight)?$", key)
        if not match:
            raise ValueError(f"{path}: unrecognised LoRA key {key}")
        prefix = "lora_unet" if match.group(1) == "diffusion_model" else "lora_te"
        part = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight", "lora_down": "lora_down.weight",
                "lora_up": "lora_up.weight", "alpha": "alpha"}[match.group(3)]
        out[f"{lora_name(prefix, match.group(2))}.{part}"] = value.float()
    return out


def network_from_state(dit, adapter, text_encoder, state: dict[str, torch.Tensor]) -> LoRANetwork:
    """A network with exactly the modules of a LoRA file (for previews: later epochs just load weights)."""
    by_name = {lora_name("lora_unet", n): m for n, m in linear_modules(dit).items()}
    by_name.update({lora_name("lora_unet", n): m for n, m in linear_modules(adapter, "llm_adapter.").items()})
    if text_encoder is not None:
        by_name.update({lora_name("lora_te", n): m for n, m in linear_modules(text_encoder).items()})
    net = LoRANetwork()
    names = sorted({k.rsplit(".lora_down.weight", 1)[0] for k in state if k.endswith(".lora_down.weight")})
    for name in names:
        if name not in by_name:
            raise ValueError(f"LoRA module {name} does not exist in this model")
        base = by_name[name]
        rank = state[f"{name}.lora_down.weight"].shape[0]
        alpha = float(state.get(f"{name}.alpha", torch.tensor(float(rank))))
        module = LoRAModule(base, rank, alpha).to(base.weight.device)
        net.add(name, module)
    load_weights(net, state)
    return net


def load_weights(net: LoRANetwork, state: dict[str, torch.Tensor]) -> None:
    """Swap in another epoch's weights without touching the base model (the 'weight patching')."""
    current = net.state_dict()
    missing = set(current) - set(state)
    if any(not k.endswith(".alpha") for k in missing):
        raise ValueError(f"LoRA file lacks {sorted(missing)[:3]}")
    net.load_state_dict({k: state[k].to(current[k].dtype) if k in state else current[k] for k in current})
