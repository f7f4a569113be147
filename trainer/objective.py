"""kohya's training objective: noise, timesteps, the DDPM forward process, the target, the loss and its weights.

Formulas are kohya sd-scripts' (library/train_util.py get_noise_noisy_latents_and_timesteps, get_timesteps,
get_huber_threshold_if_needed, conditional_loss; library/custom_train_functions.py apply_noise_offset,
pyramid_noise_like, apply_snr_weight, scale_v_prediction_loss_like_noise_prediction, add_v_prediction_like_loss,
apply_debiased_estimation, fix_noise_scheduler_betas_for_zero_terminal_snr; train_network.py process_batch and
post_process_loss). The options are trainer.objective_settings.ObjectiveSettings.

Every random number comes from the generator handed in, drawn on the CPU (so a run repeats on any device), in
kohya's order: eps, [offset strength], [offset], [per multires level: its ratio, its noise], t, [input
perturbation strength], [input perturbation noise]. An option that is off draws nothing, so with every option
off the draws are exactly eps then t, as they always were here.

Zero terminal SNR: kohya computes its SNR table (`all_snr`, used by min-SNR, the v-prediction scalings and
debiased estimation) before it rescales the schedule, so its loss weights keep the original schedule's SNR
while its noise, targets and Huber schedule use the rescaled one. Here every part uses the rescaled schedule,
whose last timestep has SNR 0: min-SNR for v-prediction then weights that step 0, as the formula says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .device_copies import to_device
from .errors import ConfigError, ModelError
from .objective_settings import NUM_TRAIN_TIMESTEPS, ObjectiveSettings

DEFAULT_SETTINGS = ObjectiveSettings()
SNR_CLAMP = 1000.0           # kohya clamps SNR at 1000 for the v-prediction scalings and debiased estimation


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                                 steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The SD schedule kohya trains with (diffusers' scaled_linear), in float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


# --- the schedule ------------------------------------------------------------------------------------------

def zero_terminal_snr_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 (kohya's --zero_terminal_snr): shift sqrt(a) so the last step is 0, scale so the first
    step keeps its value. Returns float64 on the CPU; the last entry is exactly 0."""
    root = alphas_cumprod.to("cpu", torch.float64).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    return root ** 2


def training_schedule(alphas_cumprod: torch.Tensor, zero_terminal_snr: bool = False) -> torch.Tensor:
    """The schedule the objective trains with: the model's, rescaled when zero_terminal_snr; float64, CPU."""
    schedule = alphas_cumprod.to("cpu", torch.float64)
    return zero_terminal_snr_alphas_cumprod(schedule) if zero_terminal_snr else schedule


def snr_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """kohya's all_snr = a / (1 - a) per timestep (float64)."""
    a = alphas_cumprod.to(torch.float64)
    return a / (1.0 - a)


# --- random draws -----------------------------------------------------------------------------------------

def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int,
                  discount: float) -> torch.Tensor:
    """kohya's pyramid_noise_like on a CPU tensor: level i adds bilinear-upsampled N(0, 1) noise at
    size / r^i (r ~ U(2, 4) per level) times discount^i, stopping at 1 px; the sum is divided by its std."""
    batch, channels, height, width = noise.shape
    noise = noise.clone()
    for level in range(iterations):
        ratio = torch.rand((), generator=generator, dtype=torch.float64).item() * 2 + 2
        low_h, low_w = max(1, int(height / (ratio ** level))), max(1, int(width / (ratio ** level)))
        coarse = torch.randn((batch, channels, low_h, low_w), generator=generator, dtype=torch.float32)
        noise += torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear") * discount ** level
        if low_h == 1 or low_w == 1:
            break
    return noise / noise.std()


def draw_noise(latents: torch.Tensor, generator: torch.Generator,
               settings: ObjectiveSettings = DEFAULT_SETTINGS) -> torch.Tensor:
    """eps for `latents` (float32, on the CPU): N(0, 1), plus kohya's noise offset and multires noise if set.

    Noise offset: eps += o * N(0, 1)[B, C, 1, 1], o = noise_offset, or U(0, noise_offset) once per batch with
    random strength; adaptive_noise_scale s makes it o = max(0, o + s * |mean_hw(latents)|) per sample and
    channel. Multires noise (pyramid_noise) follows the offset, as in kohya.
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if settings.noise_offset:
        offset = settings.noise_offset
        if settings.noise_offset_random_strength:
            offset = torch.rand(1, generator=generator, dtype=torch.float32) * offset
        if settings.adaptive_noise_scale:
            latent_mean = latents.detach().float().cpu().mean(dim=(2, 3), keepdim=True).abs()
            offset = torch.clamp(offset + settings.adaptive_noise_scale * latent_mean, min=0.0)
        noise = noise + offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                                             dtype=torch.float32)
    if settings.multires_noise_iterations:
        noise = pyramid_noise(noise, generator, settings.multires_noise_iterations,
                              settings.multires_noise_discount)
    return noise


def draw_timesteps(batch: int, generator: torch.Generator,
                   settings: ObjectiveSettings = DEFAULT_SETTINGS) -> torch.Tensor:
    """kohya's get_timesteps: t ~ U{min_timestep .. max_timestep - 1} per sample (int64, CPU); when the two are
    equal, every t is max_timestep and nothing is drawn."""
    if settings.min_timestep < settings.max_timestep:
        return torch.randint(settings.min_timestep, settings.max_timestep, (batch,), generator=generator)
    return torch.full((batch,), settings.max_timestep, dtype=torch.int64)


def perturbed_input_noise(noise: torch.Tensor, generator: torch.Generator,
                          settings: ObjectiveSettings = DEFAULT_SETTINGS) -> torch.Tensor:
    """The noise the forward process adds: eps, or eps + gamma * eps' with a fresh eps' under kohya's
    ip_noise_gamma (gamma ~ U(0, ip_noise_gamma) once per batch with random strength). The target keeps eps."""
    if not settings.ip_noise_gamma:
        return noise
    strength = settings.ip_noise_gamma
    if settings.ip_noise_gamma_random_strength:
        strength = torch.rand(1, generator=generator, dtype=torch.float32) * strength
    return noise + strength * torch.randn(noise.shape, generator=generator, dtype=torch.float32)


# --- forward process and target ---------------------------------------------------------------------------

def _schedule_roots(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(a_t) and sqrt(1 - a_t) as float32 [B, 1, 1, 1] on `device`, looked up in float64 on the CPU (Apple's
    MPS has no float64)."""
    alpha_bar = alphas_cumprod.to("cpu", torch.float64)[timesteps.cpu()].view(-1, 1, 1, 1)
    return to_device(alpha_bar.sqrt().float(), device), to_device((1.0 - alpha_bar).sqrt().float(), device)


def forward_process(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise (diffusers' add_noise, as kohya calls it)."""
    sqrt_a, sqrt_one_minus_a = _schedule_roots(alphas_cumprod, timesteps, latents.device)
    return sqrt_a * latents + sqrt_one_minus_a * noise.to(latents.device)


def training_target(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """eps for epsilon models; v = sqrt(a_t) eps - sqrt(1 - a_t) x0 for v-prediction (kohya's get_velocity)."""
    sqrt_a, sqrt_one_minus_a = _schedule_roots(alphas_cumprod, timesteps, latents.device)
    return _target(latents, noise.to(latents.device), sqrt_a, sqrt_one_minus_a, prediction_type)


def _target(latents, noise, sqrt_a, sqrt_one_minus_a, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return sqrt_a * noise - sqrt_one_minus_a * latents
    raise ModelError(f"prediction type {prediction_type!r} cannot be trained yet (epsilon and v_prediction can).")


def noisy_latents_and_target(latents: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str,
                             generator: torch.Generator, settings: ObjectiveSettings | None = None,
                             timesteps: torch.Tensor | None = None,
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw eps and t (on CPU, so runs repeat across devices) and build x_t and the target: kohya's
    get_noise_noisy_latents_and_timesteps and get_noise_pred_and_target.

    `alphas_cumprod` is the schedule to train with (training_schedule applies zero terminal SNR; this function
    does not). `timesteps`, when given, are used instead of a draw (fixed-timestep evaluation). Returns x_t, t
    (on the latents' device) and the target.
    """
    settings = settings or DEFAULT_SETTINGS
    device = latents.device
    noise = draw_noise(latents, generator, settings)
    timesteps = (draw_timesteps(latents.shape[0], generator, settings) if timesteps is None
                 else timesteps.cpu().long())
    input_noise = perturbed_input_noise(noise, generator, settings)
    sqrt_a, sqrt_one_minus_a = _schedule_roots(alphas_cumprod, timesteps, device)
    noise = to_device(noise, device, pin=True)
    input_noise = noise if not settings.ip_noise_gamma else to_device(input_noise, device, pin=True)
    noisy = sqrt_a * latents + sqrt_one_minus_a * input_noise
    target = _target(latents, noise, sqrt_a, sqrt_one_minus_a, prediction_type)
    return noisy, to_device(timesteps, device), target


# --- the loss ---------------------------------------------------------------------------------------------

def huber_c_schedule(alphas_cumprod: torch.Tensor, settings: ObjectiveSettings) -> torch.Tensor | None:
    """kohya's get_huber_threshold_if_needed for every timestep t (float64, CPU), None for l1 / l2.

    constant: huber_c * huber_scale; exponential: huber_scale * exp(ln(huber_c) * t / T);
    snr: (1 - huber_c) / (1 + sigma_t)^2 + huber_c with sigma_t = sqrt((1 - a_t) / a_t) (huber_scale unused).
    """
    if not settings.uses_huber_c:
        return None
    a = alphas_cumprod.to("cpu", torch.float64)
    steps = a.shape[0]
    if settings.huber_schedule == "constant":
        return torch.full((steps,), settings.huber_c * settings.huber_scale, dtype=torch.float64)
    if settings.huber_schedule == "exponential":
        t = torch.arange(steps, dtype=torch.float64)
        return torch.exp(torch.log(torch.tensor(settings.huber_c, dtype=torch.float64)) * t / steps) \
            * settings.huber_scale
    if settings.huber_schedule == "snr":
        sigmas = ((1.0 - a) / a).sqrt()
        return (1.0 - settings.huber_c) / (1.0 + sigmas) ** 2 + settings.huber_c
    raise ConfigError(f"unknown huber_schedule {settings.huber_schedule!r}")


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str,
                     huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """kohya's conditional_loss(..., reduction="none") on float32: l2 (p - t)^2, l1 |p - t|,
    huber 2c (sqrt((p - t)^2 + c^2) - c), smooth_l1 2 (sqrt((p - t)^2 + c^2) - c); c per sample [B]."""
    prediction, target = prediction.float(), target.float()
    if loss_type == "l2":
        return torch.nn.functional.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return torch.nn.functional.l1_loss(prediction, target, reduction="none")
    if loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ConfigError(f"{loss_type} loss needs huber_c per sample")
        c = huber_c.float().view(-1, *([1] * (prediction.ndim - 1)))
        root = torch.sqrt((prediction - target) ** 2 + c ** 2) - c
        return 2 * c * root if loss_type == "huber" else 2 * root
    raise ConfigError(f"unknown loss_type {loss_type!r}")


def per_sample_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                    huber_c: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
    """kohya's loss reduced over C, H, W per sample (before loss weights and the batch mean).

    `masks` [B, 1, h, w] weight each pixel first (kohya's apply_masked_loss): masked-out pixels count as zero
    loss and the mean still runs over every pixel, as kohya computes it.
    """
    loss = elementwise_loss(prediction, target, loss_type, huber_c)
    if masks is not None:
        loss = loss * masks
    return loss.mean(dim=tuple(range(1, loss.ndim)))


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """kohya's l2 loss per sample (per_sample_loss with loss_type l2)."""
    return per_sample_loss(prediction, target, "l2", None, masks)


def loss_weight_schedule(alphas_cumprod: torch.Tensor, prediction_type: str,
                         settings: ObjectiveSettings) -> torch.Tensor | None:
    """kohya's post_process_loss as one weight per timestep (float64, CPU), None when no option is on.

    With SNR = a / (1 - a) of the training schedule, the factors multiply in kohya's order:
    min-SNR gamma: min(SNR, gamma) / SNR (epsilon), min(SNR, gamma) / (SNR + 1) (v-prediction);
    scale_v_pred_loss_like_noise_pred: S / (S + 1); v_pred_like_loss lambda: 1 + lambda / (S / (S + 1));
    debiased estimation: 1 / sqrt(S) (epsilon), 1 / (S + 1) (v-prediction); S = min(SNR, 1000).
    min(SNR, gamma) / SNR is written as 1 where SNR <= gamma (the same number for SNR > 0, and 1 rather than
    0 / 0 at SNR 0).
    """
    if not settings.weights_loss:
        return None
    snr = snr_of(alphas_cumprod.to("cpu"))
    clamped = torch.clamp(snr, max=SNR_CLAMP)
    v_prediction = prediction_type == "v_prediction"
    weight = torch.ones_like(snr)
    if settings.min_snr_gamma:
        gamma = float(settings.min_snr_gamma)
        if v_prediction:
            weight = weight * (torch.clamp(snr, max=gamma) / (snr + 1))
        else:
            weight = weight * torch.where(snr <= gamma, torch.ones_like(snr), gamma / snr)
    if settings.scale_v_pred_loss_like_noise_pred:
        weight = weight * (clamped / (clamped + 1))
    if settings.v_pred_like_loss:
        weight = weight * (1 + settings.v_pred_like_loss / (clamped / (clamped + 1)))
    if settings.debiased_estimation:
        weight = weight * (1 / (clamped + 1) if v_prediction else 1 / clamped.sqrt())
    return weight


# --- the objective of one run -----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Objective:
    """The objective of one run: settings, the training schedule and per-timestep tables on the device.

    Build it once per run with `build_objective`; every step then calls noisy_latents_and_target,
    per_sample_loss and post_process_loss. Nothing in it changes while training.
    """

    settings: ObjectiveSettings
    prediction_type: str
    alphas_cumprod: torch.Tensor              # the training schedule, float64 on the CPU
    huber_c: torch.Tensor | None              # [T] float32 on the device, or None (l1 / l2)
    weights: torch.Tensor | None              # [T] float32 on the device, or None (no loss weighting)

    def noisy_latents_and_target(self, latents: torch.Tensor, generator: torch.Generator,
                                 timesteps: torch.Tensor | None = None,
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return noisy_latents_and_target(latents, self.alphas_cumprod, self.prediction_type, generator,
                                        self.settings, timesteps)

    def per_sample_loss(self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                        masks: torch.Tensor | None = None) -> torch.Tensor:
        huber_c = None if self.huber_c is None else self.huber_c[timesteps.to(self.huber_c.device)]
        return per_sample_loss(prediction, target, self.settings.loss_type, huber_c, masks)

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """The per-sample factor of post_process_loss, or None when there is none."""
        return None if self.weights is None else self.weights[timesteps.to(self.weights.device)]

    def post_process_loss(self, loss: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """kohya's post_process_loss on the per-sample loss (already times the prior loss weights)."""
        weights = self.loss_weights(timesteps)
        return loss if weights is None else loss * weights.to(loss.device)


def build_objective(settings: ObjectiveSettings, alphas_cumprod: torch.Tensor, prediction_type: str,
                    device: torch.device | str = "cpu") -> Objective:
    """Checks the settings against the model and builds the run's schedule and tables."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ModelError(f"prediction type {prediction_type!r} cannot be trained yet (epsilon and v_prediction "
                         "can).")
    settings = settings.validated(prediction_type)
    schedule = training_schedule(alphas_cumprod, settings.zero_terminal_snr)
    if settings.max_timestep > schedule.shape[0]:
        raise ConfigError(f"max_timestep is {settings.max_timestep} but the model's schedule has "
                          f"{schedule.shape[0]} steps; lower it to {schedule.shape[0]} or less.")
    huber_c = huber_c_schedule(schedule, settings)
    weights = loss_weight_schedule(schedule, prediction_type, settings)
    if weights is not None and not torch.isfinite(weights).all():
        bad = int(torch.nonzero(~torch.isfinite(weights))[0])
        raise ConfigError(f"The loss weight at timestep {bad} is not finite: the model's schedule has SNR "
                          f"{float(snr_of(schedule)[bad]):g} there, which debiased estimation or "
                          "v_pred_like_loss divide by; turn those off or raise min_timestep/lower max_timestep.")
    return Objective(settings=settings, prediction_type=prediction_type, alphas_cumprod=schedule,
                     huber_c=None if huber_c is None else huber_c.float().to(device),
                     weights=None if weights is None else weights.float().to(device))
