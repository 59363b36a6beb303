"""Anima's fixed numbers and names, in plain Python (no torch), for anything that must check against them.

Sources: docs/anima_arch.md and the released checkpoint files.
"""

from __future__ import annotations

# The Qwen-Image VAE shrinks each image side 8x into 16 latent channels, and the DiT cuts the
# latent into 2x2 patches: an image side must be a multiple of 8 * 2 = 16 pixels.
LATENT_CHANNELS = 16
VAE_SCALE = 8
PATCH = 2
SIDE_MULTIPLE = VAE_SCALE * PATCH

# The DiT linears a LoRA can target, by group (sd-scripts' and the guides' choice: all three).
LORA_TARGET_GROUPS = ("self_attn", "cross_attn", "mlp")

# sd-scripts' network module that loads each network kind for Anima (ss_network_module): its Anima
# LoRA module, and the generic LoKr/LoHa modules, which find Anima's blocks themselves.
NETWORK_MODULES = {"lora": "networks.lora_anima", "lokr": "networks.lokr", "loha": "networks.loha"}

# What a network file says it is for: the ModelSpec ids that LoRA inspectors and UIs read to tell
# which base model it belongs to (sd-scripts writes ".../lora" for every network module).
LORA_FILE_IDS = {
    "ss_base_model_version": "anima",  # what sd-scripts' Anima trainer writes (its load_target_model's version)
    "modelspec.architecture": "anima-preview/lora",
    "modelspec.implementation": "https://huggingface.co/circlestone-labs/Anima",
}


def latent_shape(width: int, height: int, batch: int = 1) -> tuple[int, int, int, int]:
    """(batch, 16, height/8, width/8): the latent of an image of that size."""
    return batch, LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE


def latent_bytes(width: int, height: int, dtype_bytes: int = 4) -> int:
    """Bytes of one cached latent of an image of that size."""
    _, channels, rows, cols = latent_shape(width, height)
    return channels * rows * cols * dtype_bytes
