"""Anima's network module names, the way sd-scripts writes them and ComfyUI loads them.

A network file (LoRA, LoKr or LoHa) names each wrapped linear by its place in the checkpoint, dots
turned into underscores, under one prefix per rank group: `lora_unet_` for the DiT and its LLM
adapter (`lora_unet_blocks_0_self_attn_q_proj`, `lora_unet_llm_adapter_blocks_0_mlp_0`) and
`lora_te_` for the Qwen3 text encoder (`lora_te_layers_0_mlp_gate_proj`). Each module then has its
kind's tensors (train/networks/) and `.alpha`. ComfyUI/PEFT files use the checkpoint names themselves
(`diffusion_model.blocks.0.mlp.layer1.<tensor>`); read_lora_file turns the module part into ours
and leaves the tensor's part for the kind to read.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from animad.anima.load import dit_layout

# The rank groups: each has its own rank (network.dim / text_encoder_dim) and learning rate.
UNET, TEXT_ENCODER = "unet", "text_encoder"
PREFIXES = {UNET: "lora_unet", TEXT_ENCODER: "lora_te"}
ADAPTER = "llm_adapter."  # the adapter's linears sit under this name in the DiT file, and so in LoRA names

GROUP_PATTERNS = {
    "self_attn": r"blocks\.\d+\.self_attn\.(q_proj|k_proj|v_proj|output_proj)",
    "cross_attn": r"blocks\.\d+\.cross_attn\.(q_proj|k_proj|v_proj|output_proj)",
    "mlp": r"blocks\.\d+\.mlp\.layer[12]",
}
ADAPTER_PATTERN = r"llm_adapter\.blocks\.\d+\.(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|o_proj)|" \
                  r"llm_adapter\.blocks\.\d+\.mlp\.[02]"
TEXT_ENCODER_PATTERN = r"layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"

# ComfyUI/PEFT keys: <checkpoint prefix>.<module>.<part>; the prefix says the group. A part is one
# name, or a name and `.weight` (the module path is the shortest that leaves such a part).
FOREIGN_KEY = re.compile(r"(diffusion_model|text_encoders\.qwen3_06b\.transformer\.model)\.(.+?)\."
                         r"(\w+(\.weight)?)$")


@dataclasses.dataclass(frozen=True)
class LoRATarget:
    """A linear a LoRA may wrap: its name in LoRA files, its name in its checkpoint, and its rank group."""

    name: str
    module: str
    linear: nn.Linear
    group: str


def lora_name(prefix: str, module_name: str) -> str:
    return f"{prefix}_{module_name.replace('.', '_')}"


def linears(model: nn.Module, group: str, prefix: str = "") -> dict[str, LoRATarget]:
    """Every nn.Linear of model by LoRA name, in module order (prefix: the model's place in its file)."""
    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = lora_name(PREFIXES[group], f"{prefix}{module_name}")
            out[name] = LoRATarget(name, f"{prefix}{module_name}", module, group)
    return out


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


def choose(available: dict[str, LoRATarget], network) -> list[LoRATarget]:
    """The targets the network config picks: DiT/adapter ones first, then the text encoder's (if asked)."""
    unet = [t for t in available.values() if t.group == UNET]
    picked = set(select_targets([t.module for t in unet], network))
    chosen = [t for t in unet if t.module in picked]
    if network.train_text_encoder:
        chosen += [t for t in available.values()
                   if t.group == TEXT_ENCODER and re.fullmatch(TEXT_ENCODER_PATTERN, t.module)]
    return chosen


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a LoRA file into sd-scripts names; accepts kohya keys and ComfyUI/PEFT `diffusion_model.` keys."""
    out = {}
    for key, value in load_file(str(path)).items():
        if key.startswith(tuple(f"{p}_" for p in PREFIXES.values())):
            out[key] = value.float()
            continue
        match = FOREIGN_KEY.match(key)
        if not match:
            raise ValueError(f"{path}: unrecognised LoRA key {key}")
        group = UNET if match.group(1) == "diffusion_model" else TEXT_ENCODER
        out[f"{lora_name(PREFIXES[group], match.group(2))}.{match.group(3)}"] = value.float()
    return out


def target_shapes(dit_file: Path, network) -> list[tuple[int, int]]:
    """(out, in) of each DiT linear the network config picks, from the file's header (no weights read)."""
    _, shapes, _, _, _ = dit_layout(dit_file)
    linear = {k[: -len(".weight")]: shape for k, (_, shape) in shapes.items()
              if k.endswith(".weight") and len(shape) == 2}
    return [(linear[n][0], linear[n][1]) for n in select_targets(list(linear), network)]
