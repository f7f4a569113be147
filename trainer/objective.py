"""kohya's training objective: uniform integer timesteps, DDPM forward process, MSE on the native target."""

from __future__ import annotations

import torch

from .errors import ModelError

NUM_TRAIN_TIMESTEPS = 1000


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                                 steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The SD schedule kohya trains with (diffusers' scaled_linear), in float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def noisy_latents_and_target(latents: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str,
                             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw eps and t ~ U{0..999} (on CPU, so runs repeat across devices) and build x_t and the target.

    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps; target eps for epsilon models, v = sqrt(a_t) eps - sqrt(1 - a_t) x0
    for v-prediction (kohya's get_noise_noisy_latents_and_timesteps / get_velocity).
    """
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
    timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator)
    # the schedule is looked up in float64 on the CPU (Apple's MPS has no float64), then sent as float32
    alpha_bar = alphas_cumprod.to("cpu", torch.float64)[timesteps].view(batch, 1, 1, 1)
    sqrt_a = alpha_bar.sqrt().float().to(latents.device)
    sqrt_one_minus_a = (1.0 - alpha_bar).sqrt().float().to(latents.device)
    timesteps = timesteps.to(latents.device)
    noisy = sqrt_a * latents + sqrt_one_minus_a * noise
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = sqrt_a * noise - sqrt_one_minus_a * latents
    else:
        raise ModelError(f"prediction type {prediction_type!r} cannot be trained yet (epsilon and v_prediction can).")
    return noisy, timesteps, target


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """kohya's l2 loss, reduced over C, H, W per sample (before loss weights and the batch mean).

    `masks` [B, 1, h, w] weight each pixel first (kohya's apply_masked_loss): masked-out pixels count as zero
    loss and the mean still runs over every pixel, as kohya computes it.
    """
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none")
    if masks is not None:
        loss = loss * masks
    return loss.mean(dim=(1, 2, 3))
