"""LoKr: delta = kron(w1, w2) per linear, as sd-scripts' networks/lokr.py and LyCORIS define it.

out = a*b and in = c*d (network_shapes.factorization with network.factor); w1 is a full a x c
matrix, w2 a b x d one, full (`lokr_w2`, scale 1) or low-rank `lokr_w2_a @ lokr_w2_b` scaled by
alpha/dim. At init w1 is random and w2 (or w2_b) zero, so the delta is exactly zero.

The forward never forms kron(w1, w2): with x seen as (tokens, c, d),
x @ kron(w1, w2)^T = w1 @ (x @ w2^T), two small matmuls (LyCORIS' bypass form). For a 2048 x 2048
linear split 32 x 64 that is 6% of the base matmul's work; merging the delta into the frozen weight
instead needs a full out x in weight gradient every step (bench/network_forms.py measures both).
A custom autograd function keeps only x (the base linear keeps it anyway) and recomputes the small
x @ w2^T in the backward, so the module adds no saved activation per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animad.network_shapes import lokr_full_w2, lokr_shapes
from animad.train.networks.module import NetworkModule, compute_dtype

# bench/network_forms.py, one full-width block, 1024 tokens, this CPU (x LoRA dim 16's step): dim 16
# bypass 1.02 / merged 1.31 (fp32), 1.39 / 1.73 (bf16); full w2 bypass 0.98 / merged 0.93 (fp32, within
# the busy machine's noise), 1.08 / 1.45 (bf16). The bypass also keeps no out x in weight for the backward.
FORM = "bypass"  # or "merged", the measured alternative


class KronLinear(torch.autograd.Function):
    """y = x @ kron(w1, w2)^T, saving x, w1 and w2 only; all three in one dtype."""

    @staticmethod
    def forward(ctx, x, w1, w2):
        a, c = w1.shape
        b, d = w2.shape
        xr = x.reshape(-1, c, d)
        y = torch.matmul(w1, xr @ w2.t())  # (N, a, b)
        ctx.save_for_backward(x, w1, w2)
        return y.reshape(*x.shape[:-1], a * b)

    @staticmethod
    def backward(ctx, grad):
        x, w1, w2 = ctx.saved_tensors
        a, c = w1.shape
        b, d = w2.shape
        xr = x.reshape(-1, c, d)
        g = grad.reshape(-1, a, b)
        t = xr @ w2.t()  # recomputed: (N, c, b)
        grad_w1 = torch.einsum("nab,ncb->ac", g, t)
        dt = torch.matmul(w1.t(), g)  # (N, c, b)
        grad_w2 = dt.reshape(-1, b).t() @ xr.reshape(-1, d)
        grad_x = (dt @ w2).reshape(x.shape) if ctx.needs_input_grad[0] else None
        return grad_x, grad_w1, grad_w2


class LoKrModule(NetworkModule):
    PARTS = ("lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    def __init__(self, base: nn.Linear, shapes: dict, alpha: float | None, dropout=0.0, rank_dropout=0.0,
                 module_dropout=0.0):
        full = "lokr_w2" in shapes
        dim = None if full else shapes["lokr_w2_a"][1]
        # A full w2 trains at scale 1 whatever alpha says (sd-scripts stores alpha = dim there, and
        # ComfyUI ignores it); a low-rank one at alpha/dim, alpha = dim when unset.
        super().__init__(base, float(alpha or dim or 1), dropout, rank_dropout, module_dropout)
        self.dim, self.full = dim, full
        self.out_features, self.in_features = base.out_features, base.in_features
        self.lokr_w1 = nn.Parameter(torch.empty(shapes["lokr_w1"]))
        nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
        if self.full:
            self.lokr_w2 = nn.Parameter(torch.zeros(shapes["lokr_w2"]))
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(shapes["lokr_w2_a"]))
            self.lokr_w2_b = nn.Parameter(torch.zeros(shapes["lokr_w2_b"]))
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
        self.refresh_scale()

    @classmethod
    def from_config(cls, base: nn.Linear, dim: int, alpha: float | None, factor: int, **dropouts) -> "LoKrModule":
        shapes = lokr_shapes(base.out_features, base.in_features, dim, factor)
        if lokr_full_w2(base.out_features, base.in_features, dim, factor):
            alpha = dim  # as sd-scripts stores it for a full w2
        return cls(base, shapes, alpha, **dropouts)

    @classmethod
    def dim_of(cls, shapes: dict) -> int | None:
        return shapes["lokr_w2_a"][1] if "lokr_w2_a" in shapes else None

    @classmethod
    def from_shapes(cls, base, shapes, alpha, dropout=0.0, rank_dropout=0.0, module_dropout=0.0):
        return cls(base, shapes, alpha, dropout, rank_dropout, module_dropout)

    def scale_for(self, alpha: float) -> float:
        return 1.0 if self.full else alpha / self.dim

    def w2(self) -> torch.Tensor:
        return self.lokr_w2 if self.full else self.lokr_w2_a @ self.lokr_w2_b

    def delta(self) -> torch.Tensor:
        return self.scale * torch.kron(self.lokr_w1.float(), self.w2().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skipped():
            return self.base_forward(x)
        scale = self.scale * self.multiplier
        keep, rescale = self.output_mask(self.out_features, x.device)
        if FORM == "merged":  # the measured alternative: one matmul with the delta merged in
            delta = torch.kron(self.lokr_w1, self.w2()) * (scale * rescale)
            if keep is not None:
                delta = delta * keep.unsqueeze(1).to(delta.dtype)
            weight = self.base.weight
            return F.linear(x, weight + delta.to(weight.dtype), self.base.bias)
        out = self.base_forward(x)
        dtype = compute_dtype(x, self.lokr_w1)
        with torch.autocast(x.device.type, enabled=False):
            y = KronLinear.apply(x.to(dtype), self.lokr_w1.to(dtype), self.w2().to(dtype))
        if keep is not None:
            y = y * keep.to(y.dtype)
        return torch.add(out, y.to(out.dtype), alpha=scale * rescale)
