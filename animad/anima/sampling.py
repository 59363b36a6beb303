"""ComfyUI's KSampler for Anima, computed the way ComfyUI computes it, so a seed is the same picture there.

What KSampler(seed, steps, cfg, "euler", "simple", denoise 1) does for Anima, read from ComfyUI's code:
- comfy/supported_models.py (class Anima): sampling settings shift 3.0, multiplier 1.0; the model is a
  FLOW model, so comfy/model_sampling.py gives it ModelSamplingDiscreteFlow + CONST.
- ModelSamplingDiscreteFlow: a discrete table of 1000 sigmas, time_snr_shift(shift, t) at
  t = (1..1000) / 1000 * multiplier / multiplier, in float32.
- comfy/samplers.py simple_scheduler: sigmas[-(1 + int(i * len / steps))] for i < steps, then 0.
- comfy/sample.py prepare_noise: torch.manual_seed(seed); torch.randn(latent.size(), float32, cpu) over
  the empty latent, which for Anima is [batch, 16, 1, H/8, W/8] (EmptyLatentImage made 5-D for a video VAE).
  The empty latent is all zeros and is not shifted, so CONST.noise_scaling(sigma 1.0) leaves x = noise.
- CONST.calculate_denoised: denoised = x - model_output * sigma, per condition; CFG on the denoised
  predictions: uncond + (cond - uncond) * cfg (at cfg 1 the uncond pass is skipped).
- comfy/k_diffusion/sampling.py sample_euler: d = (x - denoised) / sigma; x = x + d * (next - sigma).
Each step below keeps ComfyUI's order of float operations, so the latents agree to the last bit on the
same device and dtype (the model's own kernels aside).
"""

from __future__ import annotations

import math

import torch

from animad.anima import facts
from animad.anima.comfyui import SHIFT

MULTIPLIER = 1.0  # supported_models.Anima: the DiT takes sigma itself as its timestep (not sigma * 1000)
TIMESTEPS = 1000


def time_snr_shift(shift: float, t):
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flow_sigma_table(shift: float = SHIFT, multiplier: float = MULTIPLIER) -> torch.Tensor:
    """ModelSamplingDiscreteFlow.sigmas: 1000 float32 sigmas, rising to exactly 1.0."""
    timesteps = (torch.arange(1, TIMESTEPS + 1, 1) / TIMESTEPS) * multiplier
    return time_snr_shift(shift, timesteps / multiplier)


def simple_sigmas(steps: int, shift: float = SHIFT) -> torch.Tensor:
    """The `simple` scheduler: steps + 1 float32 sigmas from the table, evenly spaced indices, ending at 0."""
    table = flow_sigma_table(shift)
    stride = len(table) / steps
    chosen = [float(table[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(chosen + [0.0])


def initial_noise(seed: int, width: int, height: int, batch: int = 1) -> torch.Tensor:
    """The noise KSampler draws for an empty latent of that size: float32, on the CPU, ComfyUI's shape.

    A generator of our own seeded with the seed yields the very numbers torch.manual_seed(seed) would,
    without touching the process's global random state.
    """
    batch, channels, rows, cols = facts.latent_shape(width, height, batch)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn([batch, channels, 1, rows, cols], dtype=torch.float32, device="cpu", generator=generator)


def cfg_denoised(velocity, x: torch.Tensor, sigma: torch.Tensor, cfg: float) -> torch.Tensor:
    """ComfyUI's CFG on the denoised predictions. velocity(x, sigma, both) -> (cond, uncond) outputs or cond only.

    velocity is called with both=True for a batch [cond, uncond] of x (one forward pass of two rows), or with
    both=False when cfg is 1 (ComfyUI then skips the uncond).
    """
    view = sigma.view(sigma.shape[:1] + (1,) * (x.ndim - 1))
    if math.isclose(cfg, 1.0):  # sampling_function's cfg1 optimisation
        return x - velocity(x, sigma, False).float() * view
    cond_out, uncond_out = velocity(x, sigma, True)
    cond = x - cond_out.float() * view
    uncond = x - uncond_out.float() * view
    return uncond + (cond - uncond) * cfg


@torch.no_grad()
def sample_euler(velocity, noise: torch.Tensor, steps: int, cfg: float, shift: float = SHIFT) -> torch.Tensor:
    """KSampler(euler, simple, denoise 1) from the noise to the latent; velocity as for cfg_denoised."""
    sigmas = simple_sigmas(steps, shift).to(noise.device)
    x = sigmas[0] * noise.float()  # CONST.noise_scaling over the empty (all-zero) latent; sigmas[0] is 1.0
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = cfg_denoised(velocity, x, sigma * ones, cfg)
        d = (x - denoised) / sigma
        x = x + d * (sigmas[i + 1] - sigma)
    return x
