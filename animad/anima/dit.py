"""The Anima DiT (Cosmos-Predict2 "MiniTrainDIT"), written with the checkpoint's own module names.

Module names equal the keys of the released file without its `net.` prefix, so loading needs no key
conversion and LoRA names come straight from `named_modules()` (`blocks.0.self_attn.q_proj` ->
`lora_unet_blocks_0_self_attn_q_proj`). A test checks this forward pass against diffusers'
CosmosTransformer3DModel with converted weights. Facts: docs/anima_arch.md section 1.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    dim: int = 2048
    depth: int = 28
    head_dim: int = 128
    context_dim: int = 1024
    adaln_lora_dim: int = 256
    mlp_ratio: int = 4
    latent_channels: int = 16
    patch: int = 2
    rope_scale_hw: float = 4.0

    @property
    def heads(self) -> int:
        return self.dim // self.head_dim


ANIMA_2B = DiTConfig()


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (bf16 variance underflows), with the checkpoint's `weight` name."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: dimension i pairs with i + head_dim/2. x: (B, N, H, Dh); cos/sin: (N, Dh)."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return (x32 * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int | None, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        kv_dim = context_dim or dim
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(kv_dim, dim, bias=False)
        self.v_proj = nn.Linear(kv_dim, dim, bias=False)
        self.output_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, rope=None) -> torch.Tensor:
        context = x if context is None else context
        batch, tokens, _ = x.shape
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.heads, self.head_dim)))
        k = self.k_norm(self.k_proj(context).unflatten(-1, (self.heads, self.head_dim)))
        v = self.v_proj(context).unflatten(-1, (self.heads, self.head_dim))
        if rope is not None:  # RoPE only in self-attention; cross-attention keys are text, not positions
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.output_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.gelu(self.layer1(x)))


def modulation(dim: int, lora_dim: int, chunks: int) -> nn.Sequential:
    # Index 0 is the SiLU, hence the checkpoint's `.1`/`.2` key names.
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, lora_dim, bias=False), nn.Linear(lora_dim, chunks * dim, bias=False))


class Block(nn.Module):
    def __init__(self, c: DiTConfig):
        super().__init__()
        self.self_attn = Attention(c.dim, None, c.head_dim)
        self.cross_attn = Attention(c.dim, c.context_dim, c.head_dim)
        self.mlp = MLP(c.dim, c.dim * c.mlp_ratio)
        self.adaln_modulation_self_attn = modulation(c.dim, c.adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = modulation(c.dim, c.adaln_lora_dim, 3)
        self.adaln_modulation_mlp = modulation(c.dim, c.adaln_lora_dim, 3)
        self.dim = c.dim

    def forward(self, x, context, t_emb, adaln_lora, rope):
        def modulated(layer, mod):
            shift, scale, gate = (mod(t_emb) + adaln_lora).unsqueeze(1).chunk(3, dim=-1)
            return gate, F.layer_norm(x, (self.dim,), eps=1e-6) * (1 + scale) + shift

        gate, h = modulated(self.self_attn, self.adaln_modulation_self_attn)
        x = x + gate * self.self_attn(h, rope=rope)
        gate, h = modulated(self.cross_attn, self.adaln_modulation_cross_attn)
        x = x + gate * self.cross_attn(h, context)
        gate, h = modulated(self.mlp, self.adaln_modulation_mlp)
        return x + gate * self.mlp(h)


class TimestepMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class FinalLayer(nn.Module):
    def __init__(self, c: DiTConfig):
        super().__init__()
        self.dim = c.dim
        self.linear = nn.Linear(c.dim, c.patch * c.patch * c.latent_channels, bias=False)
        self.adaln_modulation = modulation(c.dim, c.adaln_lora_dim, 2)

    def forward(self, x, t_emb, adaln_lora):
        shift, scale = (self.adaln_modulation(t_emb) + adaln_lora[:, : 2 * self.dim]).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(F.layer_norm(x, (self.dim,), eps=1e-6) * (1 + scale) + shift)


class PatchEmbed(nn.Module):
    def __init__(self, c: DiTConfig):
        super().__init__()
        # in = (16 latent + 1 padding-mask channel) x 2 x 2; `.1` because index 0 was a Rearrange.
        self.proj = nn.Sequential(nn.Identity(), nn.Linear((c.latent_channels + 1) * c.patch * c.patch, c.dim,
                                                           bias=False))


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosine-first timestep features; t is the flow sigma in [0, 1], not x1000."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rope_3d(c: DiTConfig, h_patches: int, w_patches: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (tokens, head_dim) for a single frame: angles ordered [t, h, w], NTK-scaled h/w."""
    dim_hw = c.head_dim // 6 * 2
    dim_t = c.head_dim - 2 * dim_hw
    theta_hw = 10000.0 * c.rope_scale_hw ** (dim_hw / (dim_hw - 2))
    freq_hw = 1.0 / theta_hw ** (torch.arange(0, dim_hw, 2, device=device, dtype=torch.float32) / dim_hw)
    freq_t = 1.0 / 10000.0 ** (torch.arange(0, dim_t, 2, device=device, dtype=torch.float32) / dim_t)
    rows = torch.arange(h_patches, device=device, dtype=torch.float32)
    cols = torch.arange(w_patches, device=device, dtype=torch.float32)
    ang_h = (rows[:, None] * freq_hw[None])[:, None, :].expand(h_patches, w_patches, -1)
    ang_w = (cols[:, None] * freq_hw[None])[None, :, :].expand(h_patches, w_patches, -1)
    ang_t = torch.zeros(h_patches, w_patches, freq_t.numel(), device=device)  # frame 0
    angles = torch.cat([ang_t, ang_h, ang_w], dim=-1).reshape(h_patches * w_patches, -1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


class AnimaDiT(nn.Module):
    def __init__(self, c: DiTConfig = ANIMA_2B):
        super().__init__()
        self.config = c
        self.x_embedder = PatchEmbed(c)
        self.t_embedder = nn.Sequential(nn.Identity(), TimestepMLP(c.dim))
        self.t_embedding_norm = RMSNorm(c.dim)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.depth)])
        self.final_layer = FinalLayer(c)
        # Checkpoint blocks 0, k, 2k, ... (0: none, 1: all). Partial checkpointing trades memory for
        # compute in steps: each checkpointed block runs its forward twice (+45% FLOPs when all are).
        self.checkpoint_every = 0
        self.must_checkpoint: set[int] = set()  # blocks whose weights are swapped out (anima/blockswap.py)
        self._rope_cache: dict = {}

    @property
    def gradient_checkpointing(self) -> bool:
        return self.checkpoint_every > 0

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self.checkpoint_every = 1 if enabled else 0

    def checkpointed(self, index: int) -> bool:
        return index in self.must_checkpoint or (self.checkpoint_every > 0 and index % self.checkpoint_every == 0)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, H, W) -> (B, H/2*W/2, 68), features ordered (channel, patch row, patch col)."""
        b, ch, h, w = latents.shape
        p = self.config.patch
        pad = latents.new_zeros(b, 1, h, w)  # the padding-mask channel: always zero for images
        x = torch.cat([latents, pad], dim=1).reshape(b, ch + 1, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), (ch + 1) * p * p)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Inverse, but the output features are ordered (patch row, patch col, channel)."""
        b = x.shape[0]
        p, ch = self.config.patch, self.config.latent_channels
        x = x.reshape(b, h // p, w // p, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, ch, h, w)

    def rope(self, h_patches: int, w_patches: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h_patches, w_patches, str(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_3d(self.config, h_patches, w_patches, device)
        return self._rope_cache[key]

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Velocity (noise - x0) for noisy latents (B, 16, H, W) at flow sigma (B,) with context (B, L, 1024)."""
        _, _, h, w = latents.shape
        p = self.config.patch
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} must be even (image sides a multiple of 16)")
        x = self.x_embedder.proj[1](self.patchify(latents).to(self.x_embedder.proj[1].weight.dtype))
        features = sinusoid(sigma, self.config.dim).to(x.dtype)
        t_emb = self.t_embedding_norm(features)
        adaln_lora = self.t_embedder[1](features)
        rope = self.rope(h // p, w // p, latents.device)
        context = context.to(x.dtype)
        for index, block in enumerate(self.blocks):
            if self.checkpointed(index) and torch.is_grad_enabled():
                x = checkpoint(block, x, context, t_emb, adaln_lora, rope, use_reentrant=False)
            else:
                x = block(x, context, t_emb, adaln_lora, rope)
        x = self.final_layer(x, t_emb, adaln_lora)
        return self.unpatchify(x, h, w)
