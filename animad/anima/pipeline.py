"""The face of the Anima package: what train/ and select/ may ask of the model.

    anima = Anima(files, device, dtype)
    vae = anima.load_vae()                      # encode_images / decode_latents, then drop it
    encoder = anima.load_text_encoder()         # encode_text(captions) -> [TextEmbedding]
    anima.load_dit()                            # the DiT and its LLM adapter
    context = anima.context(embeddings)         # adapter: (B, 512 rows, context_dim)
    v = anima.velocity(x_t, sigma, context)     # flow velocity (noise - x0)
    noise = torch.randn(anima.latent_shape(w, h))
    noise = anima.preview_noise(seed, w, h)     # the noise ComfyUI's KSampler draws for that seed
    latents = anima.sample(noise, context, steps, cfg)  # KSampler euler/simple on Anima's flow table
    anima.lora_targets(network_config)          # the linears a LoRA wraps, named as in LoRA files

Parts load separately because training caches latents with the VAE and then frees it before the
DiT arrives; previews load all three. Everything about file layouts, tokenizers, the 512-row
context and LoRA module names stays behind this face.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from animad.anima import facts
from animad.anima import load as loader
from animad.anima import lora_names
from animad.anima import sampling
from animad.anima.files import ModelFiles
from animad.anima.text import T5Ids, TextEmbedding, TextEncoder, adapter_context, load_qwen_tokenizer
from animad.anima.vae import VAE


class Anima:
    def __init__(self, files: ModelFiles, device, dtype: torch.dtype = torch.float32):
        self.files = files
        self.device = torch.device(device)
        self.dtype = dtype
        self.dit = None
        self.adapter = None
        self.text_encoder: TextEncoder | None = None
        self.vae: VAE | None = None

    # -- loading -----------------------------------------------------------------------------

    def load_vae(self) -> VAE:
        if self.vae is None:
            self.vae = loader.load_vae(self.files.vae, self.device, self.dtype)
        return self.vae

    def unload_vae(self) -> None:
        self.vae = None

    def load_text_encoder(self) -> TextEncoder:
        if self.text_encoder is None:
            model = loader.load_text_encoder(self.files.text_encoder, self.device, self.dtype)
            self.text_encoder = TextEncoder(model, load_qwen_tokenizer(self.files.qwen_tokenizer),
                                            T5Ids(self.files.t5_tokenizer))
        return self.text_encoder

    def unload_text_encoder(self) -> None:
        """Every caption is cached: free its memory before the DiT arrives (and its linears leave lora_linears)."""
        self.text_encoder = None

    def load_dit(self) -> nn.Module:
        if self.dit is None:
            self.dit, self.adapter = loader.load_dit(self.files.dit, self.device, self.dtype)
        return self.dit

    def freeze(self) -> None:
        """Base weights never train: no gradients, eval mode (the LoRA modules set their own mode)."""
        for module in (self.dit, self.adapter, self.text_encoder.model if self.text_encoder else None):
            if module is not None:
                module.requires_grad_(False)
                module.eval()

    # -- computing ---------------------------------------------------------------------------

    def encode_text(self, texts: list[str]) -> list[TextEmbedding]:
        return self.load_text_encoder().encode(texts)

    def context(self, embeddings: list[TextEmbedding]) -> torch.Tensor:
        """The DiT's cross-attention context for a batch of captions (ComfyUI's text path)."""
        return adapter_context(self.adapter, embeddings, self.device, self.dtype)

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.dit(x_t, sigma, context)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> normalised latents (B, 16, H/8, W/8)."""
        return self.load_vae().encode(images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.load_vae().decode(latents)

    @staticmethod
    def latent_shape(width: int, height: int, batch: int = 1) -> tuple[int, int, int, int]:
        return facts.latent_shape(width, height, batch)

    @staticmethod
    def preview_noise(seed: int, width: int, height: int) -> torch.Tensor:
        """The noise ComfyUI's KSampler draws for this seed over an empty latent of this size (CPU, fp32)."""
        return sampling.initial_noise(seed, width, height)

    def sample(self, noise: torch.Tensor, context: torch.Tensor, steps: int, cfg: float,
               shift: float = sampling.SHIFT, scope=contextlib.nullcontext) -> torch.Tensor:
        """ComfyUI's KSampler (euler, simple, denoise 1) from preview_noise to normalised latents (1, 16, h, w).

        context holds the rows [cond, uncond] (or just [cond] at cfg 1); scope() wraps every DiT call
        (autocast, attention backend). Both rows run as one batch of two, as ComfyUI batches them.
        """
        def velocity(x, sigma, both):
            flat = x[:, :, 0]  # ComfyUI's 5-D latent is one frame; the DiT takes (B, C, h, w)
            with scope():
                if not both:
                    return self.dit(flat, sigma, context[:1]).float()[:, :, None]
                out = self.dit(torch.cat([flat, flat]), torch.cat([sigma, sigma]), context)
            return out.float()[:, :, None].chunk(2)

        return sampling.sample_euler(velocity, noise.to(self.device), steps, cfg, shift)[:, :, 0]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.dit.gradient_checkpointing = enabled

    def compile_blocks(self, backend: str) -> None:
        """torch.compile each DiT block separately: compiles fast, and checkpointing still wraps whole blocks."""
        for block in self.dit.blocks:
            block.compile(backend=backend, dynamic=False)

    # -- LoRA ----------------------------------------------------------------------------------

    def lora_linears(self) -> dict[str, lora_names.LoRATarget]:
        """Every linear of the loaded parts that a LoRA file may name, by that name: the DiT's and the
        adapter's (group unet), and the Qwen3's (group text_encoder) when the text encoder is loaded."""
        available = lora_names.linears(self.dit, lora_names.UNET)
        available.update(lora_names.linears(self.adapter, lora_names.UNET, lora_names.ADAPTER))
        if self.text_encoder is not None:
            available.update(lora_names.linears(self.text_encoder.model, lora_names.TEXT_ENCODER))
        return available

    def lora_targets(self, network_config) -> list[lora_names.LoRATarget]:
        """The linears the network config chooses (targets, blocks, include/exclude, adapter, text encoder)."""
        return lora_names.choose(self.lora_linears(), network_config)
