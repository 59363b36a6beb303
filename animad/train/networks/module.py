"""What every network module shares: it wraps one frozen nn.Linear by replacing its forward.

The base module and its state-dict names stay untouched; the module's own state dict (its trained
tensors and `.alpha`) is the file format. Each kind (lora.py, lokr.py, loha.py) adds its tensors,
its scale and its forward.
"""

from __future__ import annotations

import torch
from torch import nn


class NetworkModule(nn.Module):
    """A kind's module on `base`. Subclasses set self.dim before calling refresh_scale (via __init__'s
    end) and define forward and delta."""

    def __init__(self, base: nn.Linear, alpha: float, dropout=0.0, rank_dropout=0.0, module_dropout=0.0):
        super().__init__()
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        # The scale as a Python float: reading the alpha buffer in the forward would be a host sync
        # per module per step on a GPU and a graph break under torch.compile. The buffer stays (it is
        # the file's `.alpha` key); loading a state dict refreshes the float from it.
        self.scale = 1.0
        self.register_load_state_dict_post_hook(NetworkModule.refresh_scale)
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        self.multiplier = 1.0
        self.__dict__["base"] = base  # not a submodule: base weights must not enter the network's state dict
        self.__dict__["base_forward"] = base.forward

    def scale_for(self, alpha: float) -> float:
        raise NotImplementedError

    def refresh_scale(self, incompatible_keys=None) -> None:
        """After alpha changed (a loaded file or state): one read of the buffer, outside any step."""
        self.scale = self.scale_for(float(self.alpha))

    def attach(self) -> None:
        self.base.forward = self.forward

    def detach(self) -> None:
        if "forward" in self.base.__dict__:
            del self.base.forward

    def skipped(self) -> bool:
        """This step leaves the module out: multiplier 0, or module_dropout drew it.

        (A CPU draw, seeded per step: a host read but no GPU sync; under torch.compile it breaks the
        graph, which only module_dropout > 0 pays for.)"""
        if self.multiplier == 0:
            return True
        return bool(self.training and self.module_dropout and torch.rand(()) < self.module_dropout)

    def output_mask(self, out_features: int, device) -> tuple[torch.Tensor | None, float]:
        """rank_dropout for the kinds whose delta has no rank axis to drop (LoKr, LoHa): as sd-scripts'
        lokr.py/loha.py do, whole output rows of the delta are dropped, the rest rescaled."""
        if not (self.training and self.rank_dropout):
            return None, 1.0
        keep = torch.rand(out_features, device=device) > self.rank_dropout
        return keep, 1.0 / (1.0 - self.rank_dropout)

    def delta(self) -> torch.Tensor:
        """The weight delta this module adds at multiplier 1 (out x in, fp32): what ComfyUI adds to the
        linear's weight when it patches it."""
        raise NotImplementedError


def compute_dtype(x: torch.Tensor, parameter: torch.Tensor) -> torch.dtype:
    """The dtype a module's own matmuls run in: autocast's when it is on (the matmuls there cast by
    themselves), else the parameters' (on the CPU inputs are upcast to fp32 under bf16 weights). The
    question needs the device: the form without one asks about CUDA."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return parameter.dtype
