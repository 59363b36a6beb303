"""LoHa: delta = (w1a @ w1b) * (w2a @ w2b) * alpha/dim per linear (sd-scripts' networks/loha.py, LyCORIS).

The Hadamard product of two rank-dim matrices is a full-rank out x in matrix with no cheaper
structure to multiply by, so the delta is merged into the frozen weight for one matmul
(bench/network_forms.py measures this against adding x @ delta^T beside the base matmul: that costs
a second full matmul forward and two more backward). A custom autograd function keeps only x (the
base linear keeps it anyway) and the four small factors, and recomputes the delta in the backward:
saving the merged weight would hold a second copy of every wrapped linear until the backward.

Init as sd-scripts and LyCORIS: w1a ~ N(0, 0.1), w1b ~ N(0, 1), w2a = 0, w2b ~ N(0, 1): the delta
is exactly zero at step 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from animad.train.networks.module import NetworkModule, compute_dtype

# bench/network_forms.py, one full-width block, 1024 tokens, this CPU (x LoRA dim 16's step): merged
# 1.06 / bypass 1.92 (fp32), 1.57 / 1.57 (bf16); the merged form keeps nothing weight-sized alive.
# At very few tokens (16) both cost ~10x: the delta (out x in, dim-deep) is work a LoRA never does.
FORM = "merged"  # or "bypass", the measured alternative


def hadamard(w1a, w1b, w2a, w2b) -> torch.Tensor:
    return (w1a @ w1b) * (w2a @ w2b)


class HadamardLinear(torch.autograd.Function):
    """y = x @ (weight + scale * keep * hadamard(...))^T + bias, the frozen weight and bias untouched."""

    @staticmethod
    def forward(ctx, x, weight, bias, w1a, w1b, w2a, w2b, scale, keep):
        delta = hadamard(w1a, w1b, w2a, w2b) * scale
        if keep is not None:
            delta = delta * keep.unsqueeze(1).to(delta.dtype)
        merged = weight.to(x.dtype) + delta.to(x.dtype)
        ctx.save_for_backward(x, weight, w1a, w1b, w2a, w2b, keep)
        ctx.scale = scale
        return F.linear(x, merged, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        x, weight, w1a, w1b, w2a, w2b, keep = ctx.saved_tensors
        m1, m2 = w1a @ w1b, w2a @ w2b
        grad_x = None
        if ctx.needs_input_grad[0]:
            delta = m1 * m2 * ctx.scale
            if keep is not None:
                delta = delta * keep.unsqueeze(1).to(delta.dtype)
            grad_x = grad @ (weight.to(grad.dtype) + delta.to(grad.dtype))
        # The delta's gradient is the weight gradient a trained linear would get, out x in.
        grad_delta = (grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(grad.dtype)).to(m1.dtype)
        grad_delta = grad_delta * ctx.scale
        if keep is not None:
            grad_delta = grad_delta * keep.unsqueeze(1).to(grad_delta.dtype)
        t = grad_delta * m2
        grad_w1a, grad_w1b = t @ w1b.t(), w1a.t() @ t
        t = grad_delta * m1
        grad_w2a, grad_w2b = t @ w2b.t(), w2a.t() @ t
        return grad_x, None, None, grad_w1a, grad_w1b, grad_w2a, grad_w2b, None, None


class LoHaModule(NetworkModule):
    PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def __init__(self, base: nn.Linear, dim: int, alpha: float | None, dropout=0.0, rank_dropout=0.0,
                 module_dropout=0.0):
        super().__init__(base, float(alpha or dim), dropout, rank_dropout, module_dropout)
        self.dim = dim
        self.out_features = base.out_features
        out, inp = base.out_features, base.in_features
        self.hada_w1_a = nn.Parameter(torch.empty(out, dim))
        self.hada_w1_b = nn.Parameter(torch.empty(dim, inp))
        self.hada_w2_a = nn.Parameter(torch.zeros(out, dim))
        self.hada_w2_b = nn.Parameter(torch.empty(dim, inp))
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w1_b, std=1.0)
        nn.init.normal_(self.hada_w2_b, std=1.0)
        self.refresh_scale()

    @classmethod
    def from_config(cls, base: nn.Linear, dim: int, alpha: float | None, factor: int, **dropouts) -> "LoHaModule":
        return cls(base, dim, alpha, **dropouts)

    @classmethod
    def dim_of(cls, shapes: dict) -> int:
        return shapes["hada_w1_b"][0]

    @classmethod
    def from_shapes(cls, base, shapes, alpha, dropout=0.0, rank_dropout=0.0, module_dropout=0.0):
        return cls(base, shapes["hada_w1_b"][0], alpha, dropout, rank_dropout, module_dropout)

    def scale_for(self, alpha: float) -> float:
        return alpha / self.dim

    def factors(self) -> tuple[torch.Tensor, ...]:
        return self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b

    def delta(self) -> torch.Tensor:
        return self.scale * hadamard(*(w.float() for w in self.factors()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skipped():
            return self.base_forward(x)
        base = self.base
        # As the base linear computes: in autocast's dtype when it is on, else in the input's.
        dtype = compute_dtype(x, x)
        keep, rescale = self.output_mask(self.out_features, x.device)
        scale = self.scale * self.multiplier * rescale
        if FORM == "bypass":
            out = self.base_forward(x)
            delta = hadamard(*self.factors()) * scale
            if keep is not None:
                delta = delta * keep.unsqueeze(1).to(delta.dtype)
            return out + F.linear(x.to(dtype), delta.to(dtype)).to(out.dtype)
        # The delta in the matmuls' dtype, as LoRA and LoKr compute theirs under autocast: it is rounded
        # to that dtype anyway when it joins the weight, and bf16 GEMMs are the fast ones.
        factors = [f.to(dtype) for f in self.factors()]
        with torch.autocast(x.device.type, enabled=False):
            y = HadamardLinear.apply(x.to(dtype), base.weight, base.bias, *factors, scale, keep)
        # The base linear's own output dtype: under autocast its matmul gives the autocast dtype.
        return y
