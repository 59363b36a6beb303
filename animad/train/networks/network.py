"""The network: one module of the job's kind on each chosen linear, keyed by its name in the file.

Which linears exist, what they are called in a file and which rank group they belong to is Anima's
business (anima/lora_names.py, asked through the face); what tensors a module holds is its kind's
(networks/kind.py). The network's own state_dict, keyed by those names, *is* the file format
ComfyUI and sd-scripts load as is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from animad.anima.lora_names import TEXT_ENCODER, UNET, read_lora_file
from animad.anima.pipeline import Anima
from animad.errors import UserError
from animad.train.networks import KINDS, NetworkKind, kind_of_file, kind_named


class Network(nn.Module):
    """All modules, keyed by their names in the file, each in a rank group (unet or text encoder)."""

    def __init__(self, kind: NetworkKind):
        super().__init__()
        self.kind = kind
        self.loras = nn.ModuleDict()
        self.groups: dict[str, str] = {}

    def add(self, name: str, module: nn.Module, group: str) -> None:
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

    def apply_max_norm(self, limit: float) -> torch.Tensor:
        """network.scale_weight_norms after a step: the kind's rule (the job check refuses the option for a
        kind without one)."""
        return self.kind.max_norm(list(self.loras.values()), limit)


def file_modules(state: dict[str, torch.Tensor]) -> set[str]:
    """The module names a loaded network file holds (sd-scripts names have no dot: `<module>.<part>`)."""
    return {k.split(".", 1)[0] for k in state if "." in k}


def read_network_file(path: Path) -> dict[str, torch.Tensor]:
    """A network file in sd-scripts names and our part names (PEFT/ComfyUI-style LoRA keys included)."""
    state = read_lora_file(path)
    aliases = {alias: part for kind in KINDS.values() for alias, part in kind.foreign_parts.items()}
    known = {"alpha"} | {part for kind in KINDS.values() for part in kind.parts}
    out = {}
    for key, value in state.items():
        name, _, part = key.partition(".")
        part = aliases.get(part, part)
        if part not in known:
            raise ValueError(f"{path}: unrecognised network key {key}")
        out[f"{name}.{part}"] = value
    return out


def check_kind(network_config, init_state: dict | None = None) -> NetworkKind:
    """The job's kind; a file to continue must be of the same kind. (Options a kind has no meaning for
    were refused when the job was checked: config/job.py check_network_kind.)"""
    kind = kind_named(network_config.type)
    if init_state:
        found = kind_of_file(init_state)
        if found is None:
            raise UserError("network.init_from: the file holds no lora, lokr or loha module")
        if found.name != kind.name:
            raise UserError(f"network.init_from: the file is a {found.name}, and this job trains a {kind.name}: a "
                            f"network continues only as its own kind -> set network.type: {found.name}, or start "
                            "from zero (no init_from)")
    return kind


def build_network(anima: Anima, network_config, init_state: dict | None = None) -> Network:
    """Attach the job's modules to the chosen linears. init_state (a loaded network file) sets shapes and
    weights of the modules it holds.

    The text encoder's linears take part only when anima has it loaded (the loop loads it when captions
    change every step or its network trains)."""
    init_state = init_state or {}
    cfg = network_config
    kind = check_kind(cfg, init_state)
    net = Network(kind)
    ranks = {UNET: cfg.dim, TEXT_ENCODER: cfg.text_encoder_dim or cfg.dim}
    wanted = [(target, ranks[target.group]) for target in anima.lora_targets(cfg)]
    # Modules present in a continued file are always kept, even if today's targets are narrower.
    available = anima.lora_linears()
    from_file = file_modules(init_state)
    listed = {target.name for target, _ in wanted}
    for name in sorted(from_file - listed):
        if name in available:
            wanted.append((available[name], cfg.dim))
    for target, rank in wanted:
        if target.name in from_file:
            try:
                module = kind.module_from_file(target.linear, init_state, target.name, cfg)
            except ValueError as error:
                raise UserError(f"network.init_from: {error}") from None
        else:
            module = kind.new_module(target.linear, cfg, rank, cfg.alpha if cfg.alpha is not None else rank)
        module.to(device=target.linear.weight.device)
        net.add(target.name, module, target.group)
    if from_file:
        missing_in_model = from_file - set(net.loras)
        if missing_in_model:
            raise ValueError(f"the network file has modules this model does not: {sorted(missing_in_model)[:3]}")
        state = {k: v for k, v in init_state.items() if k.split(".", 1)[0] in from_file}
        current = net.state_dict()
        current.update({k: v.to(current[k].dtype) for k, v in state.items() if k in current})
        net.load_state_dict(current)
    return net


def network_from_state(anima: Anima, state: dict[str, torch.Tensor]) -> Network:
    """A network with exactly the modules of a file (for previews: later epochs just load weights)."""
    available = anima.lora_linears()
    kind = kind_of_file(state)
    if kind is None:
        raise ValueError("the file holds no lora, lokr or loha module")
    net = Network(kind)
    for name in sorted(file_modules(state)):
        if name not in available:
            raise ValueError(f"network module {name} does not exist in this model")
        target = available[name]
        net.add(name, kind.module_from_file(target.linear, state, name).to(target.linear.weight.device),
                target.group)
    load_weights(net, state)
    return net


def load_weights(net: Network, state: dict[str, torch.Tensor]) -> None:
    """Swap in another epoch's weights without touching the base model (the 'weight patching')."""
    current = net.state_dict()
    missing = set(current) - set(state)
    if any(not k.endswith(".alpha") for k in missing):
        raise ValueError(f"the network file lacks {sorted(missing)[:3]}")
    net.load_state_dict({k: state[k].to(current[k].dtype) if k in state else current[k] for k in current})
