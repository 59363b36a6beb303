"""Device, dtypes, autocast and the attention backend, resolved once from the job config."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from animad.config.job import JobConfig
from animad.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Precision:
    device: torch.device
    mixed: str  # "bf16", "fp16" or "fp32" after resolving "auto"
    attention: str

    @property
    def weight_dtype(self) -> torch.dtype:
        """dtype of the frozen base weights (LoRA weights always stay fp32 masters)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.mixed]

    def autocast(self):
        if self.mixed == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.weight_dtype)

    def attention_context(self):
        """SDPA backend choice; flash needs a CUDA device and half precision, so it only applies there."""
        if self.attention == "flash" and self.device.type == "cuda" and self.mixed != "fp32":
            return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
        if self.attention == "math":
            return sdpa_kernel([SDPBackend.MATH])
        return contextlib.nullcontext()


def resolve_precision(config: JobConfig, device: torch.device | None = None) -> Precision:
    """device overrides the job's device setting (each rank of a multi-GPU job has its own GPU)."""
    wanted = config.device
    if device is None and wanted == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device is None:
        device = torch.device(wanted)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device: '{wanted}' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    mixed = config.precision.mixed
    if mixed == "auto":
        if device.type == "cuda":
            mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mixed = "fp32"  # CPU bf16 is slow without avx512_bf16; fp32 is the safe CPU default
    attention = config.precision.attention
    if attention == "flash" and (device.type != "cuda" or mixed == "fp32"):
        log.warning("precision.attention: flash needs a CUDA GPU with bf16/fp16; using SDPA's default choice")
    return Precision(device, mixed, attention)
