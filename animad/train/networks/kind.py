"""A network kind behind one small interface: what the rest of train/ (and select/) asks of LoRA, LoKr
or LoHa, so that none of it names a kind's tensors."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import torch
from torch import nn

from animad import network_shapes


@dataclasses.dataclass(frozen=True)
class NetworkKind:
    name: str  # network.type
    title: str  # as people write it: LoRA, LoKr, LoHa
    module: type  # the NetworkModule subclass: from_config(base, dim, alpha, factor, **dropouts), from_shapes(...)
    network_module: str  # ss_network_module: the sd-scripts module that loads this kind for Anima
    # network.scale_weight_norms: (modules, limit) -> device tensor [modules scaled, mean norm, max norm];
    # None where sd-scripts has no rule for the kind (the job check refuses the option)
    max_norm: Callable[[list, float], torch.Tensor] | None = None
    foreign_parts: dict[str, str] = dataclasses.field(default_factory=dict)  # other trainers' part names -> ours

    @property
    def parts(self) -> tuple[str, ...]:
        """Every tensor key a module of this kind may have in a file, after `<module>.`."""
        return self.module.PARTS

    def parameter_count(self, out_features: int, in_features: int, dim: int, factor: int = -1) -> int:
        return network_shapes.parameter_count(self.name, out_features, in_features, dim, factor)

    def new_module(self, base: nn.Linear, config, dim: int, alpha: float | None) -> nn.Module:
        """A fresh module for network config `config` at this rank group's dim."""
        return self.module.from_config(base, dim, alpha, config.factor, dropout=config.dropout,
                                       rank_dropout=config.rank_dropout, module_dropout=config.module_dropout)

    def file_shapes(self, state: dict[str, torch.Tensor], name: str) -> dict[str, tuple[int, ...]]:
        return {part: tuple(state[f"{name}.{part}"].shape) for part in self.parts if f"{name}.{part}" in state}

    def module_from_file(self, base: nn.Linear, state: dict, name: str, config=None) -> nn.Module:
        """A module shaped as module `name` of a loaded file (continued training, previews)."""
        alpha = state.get(f"{name}.alpha")
        dropouts = {} if config is None else dict(dropout=config.dropout, rank_dropout=config.rank_dropout,
                                                  module_dropout=config.module_dropout)
        module = self.module.from_shapes(base, self.file_shapes(state, name),
                                         None if alpha is None else float(alpha), **dropouts)
        expected = {p: tuple(v.shape) for p, v in module.state_dict().items() if p != "alpha"}
        if expected != self.file_shapes(state, name):
            raise ValueError(f"{name}: its {self.name} tensors {self.file_shapes(state, name)} do not fit a "
                             f"{base.out_features} x {base.in_features} linear")
        return module

    def dim_alpha(self, state: dict[str, torch.Tensor], name: str) -> tuple[int | None, float]:
        """(dim, alpha) of module `name` in a file; dim None for a LoKr with a full w2 (no rank)."""
        module_dim = self.module.dim_of(self.file_shapes(state, name))
        alpha = state.get(f"{name}.alpha")
        return module_dim, float(alpha) if alpha is not None else float(module_dim or 1)

    def network_args(self, config) -> str:
        """ss_network_args: what sd-scripts' module for this kind is given (--network_args)."""
        args = {"rank_dropout": config.rank_dropout, "module_dropout": config.module_dropout,
                "train_llm_adapter": config.train_llm_adapter, "targets": config.targets}
        if self.name == "lokr":
            args = {"factor": config.factor, **args}
        return json.dumps(args)
