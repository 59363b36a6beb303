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

from animad.anima import blockswap, facts
from animad.anima import load as loader
from animad.anima import lora_names
from animad.anima import sampling
from animad.anima.files import ModelFiles
from animad.anima.text import T5Ids, TextEmbedding, TextEncoder, adapter_context, load_qwen_tokenizer
from animad.anima.vae import VAE


def _marked_dynamic(compiled):
    """What nn.Module.compile installs, plus the dynamic marks (x, context, t_emb, adaln_lora, rope)."""
    def call(x, context, t_emb, adaln_lora, rope):
        for tensor in (x, context, t_emb, adaln_lora):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)  # batch
        torch._dynamo.maybe_mark_dynamic(x, 1)  # image tokens: one count per aspect bucket
        for table in rope:
            torch._dynamo.maybe_mark_dynamic(table, 0)
        return compiled(x, context, t_emb, adaln_lora, rope)
    return call


class Anima:
    def __init__(self, files: ModelFiles, device, dtype: torch.dtype = torch.float32):
        self.files = files
        self.device = torch.device(device)
        self.dtype = dtype
        self.dit = None
        self.adapter = None
        self.text_encoder: TextEncoder | None = None
        self.vae: VAE | None = None
        self.block_swap: blockswap.BlockSwap | None = None
        self.text_encoder_offload: blockswap.SwappedBlock | None = None

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
        self.text_encoder_offload = None

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
        if self.text_encoder_offload is None:
            return self.load_text_encoder().encode(texts)
        self.text_encoder_offload.load(None)
        try:
            return self.text_encoder.encode(texts)
        finally:
            self.text_encoder_offload.release()

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

    def set_gradient_checkpointing(self, every: bool | int) -> None:
        """true/1: every block, false/0: none, k: blocks 0, k, 2k, ... (partial: less recompute)."""
        self.dit.checkpoint_every = int(every)

    def swap_blocks(self, count: int) -> None:
        """Keep `count` DiT blocks' frozen weights in pinned CPU memory, each fetched just before it runs
        (anima/blockswap.py); 0 puts every weight back on the device."""
        if self.block_swap is not None:
            self.block_swap.remove()
            self.block_swap = None
        self.block_swap = blockswap.swap_blocks(self.dit, count, self.device)

    def keep_text_encoder_off_device(self, off: bool = True) -> None:
        """Between encodes, the text encoder's weights wait in pinned CPU memory; each encode copies them
        over (1.19 GB, ~0.1 s on PCIe 4) and drops the copy after, so its memory is free for the DiT's step."""
        encoder = self.load_text_encoder()
        if off and self.text_encoder_offload is None:
            self.text_encoder_offload = blockswap.SwappedBlock(encoder.model, self.device)
        elif not off and self.text_encoder_offload is not None:
            self.text_encoder_offload.load(None)
            self.text_encoder_offload = None

    def compile_blocks(self, backend: str) -> None:
        """torch.compile each DiT block separately: compiles fast, and checkpointing still wraps whole blocks.

        The batch and token dimensions are marked dynamic on every call, so one graph serves every
        aspect bucket, every batch size (a bucket's short last batch, a micro-batch halved after an
        OOM, the eval's batch of sigmas) and all 28 blocks (they share Block.forward). Static shapes
        compiled again per bucket and per batch size (minutes each with inductor on the 2B model)
        and, past Dynamo's recompile limit (8), fell back to eager for good. Marking only these
        dimensions (not dynamic=True) keeps Python floats such as RMSNorm's eps and the LoRA scale
        constants: dynamic=True turns each into a graph input read back with .item().
        (Dynamo still specialises a dimension of size 1: batch 1 next to larger batches is a
        second graph, once.)
        """
        for block in self.dit.blocks:
            block._compiled_call_impl = _marked_dynamic(torch.compile(block._call_impl, backend=backend))

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
