"""Rectified flow for training: timestep sampling and the target (previews sample in anima/sampling.py).

Convention (sd-scripts, ComfyUI, diffusers agree): data at sigma 0, noise at sigma 1,
x_sigma = (1 - sigma) * x0 + sigma * noise, and the model predicts v = noise - x0.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    if shift == 1.0:
        return sigma
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(batch: int, timesteps, device=None) -> torch.Tensor:
    """Training sigmas: logit-normal (sd-scripts' Anima default) or uniform, then the optional shift."""
    if timesteps.sampling == "uniform":
        sigma = torch.rand(batch)
    else:
        sigma = torch.sigmoid(timesteps.logit_mean + timesteps.logit_std * torch.randn(batch))
    return shift_sigmas(sigma, timesteps.shift).to(device)


def eval_sigmas(count: int, timesteps) -> list[float]:
    """Fixed sigmas at the midpoints of `count` equal-probability slices of the training distribution.

    Their plain mean then estimates the expected training loss, without the randomness of the draw.
    """
    quantiles = [(i + 0.5) / count for i in range(count)]
    if timesteps.sampling == "uniform":
        raw = quantiles
    else:
        normal = NormalDist()
        raw = [1 / (1 + math.exp(-(timesteps.logit_mean + timesteps.logit_std * normal.inv_cdf(q))))
               for q in quantiles]
    return [float(shift_sigmas(torch.tensor(s), timesteps.shift)) for s in raw]


def noisy(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def input_perturbation(x0: torch.Tensor, sigma: torch.Tensor, timesteps) -> torch.Tensor:
    """timesteps.ip_noise_gamma: what sd-scripts' Anima trainer adds to the noisy input, sigma * gamma * xi.

    Its noisy input is (1 - sigma) * x0 + sigma * (noise + gamma * xi) with fresh xi ~ N(0, 1), while
    the target stays noise - x0: the model learns to see past a little extra noise (input
    perturbation, Ning et al. 2023). With ip_noise_gamma_random_strength, gamma is drawn uniformly
    from [0, gamma) once per batch, as there. Drawn after the noise and sigmas, so runs without it
    are unchanged.
    """
    xi = torch.randn_like(x0)
    gamma = timesteps.ip_noise_gamma
    if timesteps.ip_noise_gamma_random_strength:
        gamma = torch.rand(1, device=x0.device, dtype=x0.dtype) * gamma  # stays on the device: no sync
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return s * gamma * xi


def flow_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample MSE against v = noise - x0, in fp32; a mask (B, 1, H, W) weights latent pixels."""
    error = (prediction.float() - (noise - x0).float()) ** 2
    if mask is None:
        return error.mean(dim=(1, 2, 3))
    mask = mask.float()
    return (error * mask).mean(dim=(1, 2, 3)) / mask.mean(dim=(1, 2, 3)).clamp_min(1e-6)
