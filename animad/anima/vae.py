"""The Qwen-Image VAE (a fine-tuned Wan 2.1 causal 3D VAE), used on single frames.

We use diffusers' AutoencoderKLQwenImage for the network. Files come in two key layouts: the
Wan-original/ComfyUI one (`encoder.conv1`, `decoder.upsamples.N`) and diffusers' one. Loading accepts
both; the tiny test models are written in the original layout, like the released file.
"""

from __future__ import annotations

import re

import torch

RESIDUAL_PARTS = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6"}


def vae_class():
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage


def is_original_layout(keys) -> bool:
    return "encoder.conv1.weight" in keys or "conv1.weight" in keys


def original_to_diffusers(state: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return convert_wan_vae_to_diffusers(state)


def diffusers_to_original(state: dict) -> dict:
    """The inverse of diffusers' convert_wan_vae_to_diffusers (a round-trip test checks it)."""
    out = {}
    for key, value in state.items():
        out[_original_key(key)] = value
    return out


def _resnet_part(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head == "conv_shortcut":
        return f"shortcut.{tail}"
    return f"{RESIDUAL_PARTS[head]}.{tail}"


def _original_key(key: str) -> str:
    fixed = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    top, _, rest = key.partition(".")
    if top in fixed:
        return f"{fixed[top]}.{rest}"
    side = top  # "encoder" or "decoder"
    m = re.match(r"(conv_in|norm_out|conv_out)\.(.*)", rest)
    if m:
        name = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}[m.group(1)]
        return f"{side}.{name}.{m.group(2)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", rest)
    if m:
        kind, index, tail = m.groups()
        if kind == "attentions":
            return f"{side}.middle.1.{tail}"
        return f"{side}.middle.{0 if index == '0' else 2}.{_resnet_part(tail)}"
    m = re.match(r"down_blocks\.(\d+)\.(.*)", rest)
    if m:
        index, tail = m.groups()
        head = tail.partition(".")[0]
        if head in RESIDUAL_PARTS or head == "conv_shortcut":
            tail = _resnet_part(tail)
        return f"encoder.downsamples.{index}.{tail}"
    m = re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest)
    if m:
        block, resnet, tail = int(m.group(1)), int(m.group(2)), m.group(3)
        return f"decoder.upsamples.{4 * block + resnet}.{_resnet_part(tail)}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest)
    if m:
        return f"decoder.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
    raise KeyError(f"no original-layout name for VAE key {key}")


def infer_vae_config(shapes: dict[str, tuple]) -> dict:
    """AutoencoderKLQwenImage kwargs from diffusers-layout shapes (base width and latent size)."""
    base_dim = shapes["encoder.conv_in.weight"][0]
    z_dim = shapes["post_quant_conv.weight"][0]
    return {"base_dim": base_dim, "z_dim": z_dim, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0}


class VAE:
    """Encode images to normalised latents and back. Images are (B, 3, H, W) in [-1, 1]."""

    def __init__(self, model):
        self.model = model
        config = model.config
        self.mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1)
        self.std = torch.tensor(config.latents_std).view(1, -1, 1, 1)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype)[:, :, None]  # a single frame of a "video"
        mu = self.model.encode(x).latent_dist.mode()[:, :, 0].float()  # posterior mean, as sd-scripts does
        return (mu - self.mean.to(mu.device)) / self.std.to(mu.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        out = self.model.decode(z.to(self.device, self.dtype)[:, :, None]).sample[:, :, 0]
        return out.float().clamp(-1, 1)
