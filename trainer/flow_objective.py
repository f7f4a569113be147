"""The flow-matching objective (Flux.1, SD3.5, Chroma, Qwen-Image, Wan, ...): sigmas, noising, target and loss.

Formulas are kohya sd-scripts' (library/flux_train_utils.py get_noisy_model_input_and_timesteps and
compute_density_for_timestep_sampling, library/sd3_train_utils.py get_noisy_model_input_and_timesteps), written
here from their definitions (../shared/docs/kohya-flow-models.md sections 2 and 3):

    x_t = (1 - s) x0 + s n,   target = n - x0   (the velocity ComfyUI's CONST sampling reads the output as)

The loss is the raw model output against that target (kohya's `--model_prediction_type raw`, which its own docs
recommend; its default `sigma_scaled` compares an x0 estimate with the velocity, which a velocity model cannot
minimise). kohya's SD3 trainer compares x0 estimates instead, which is the velocity loss weighted by s^2; here
every family trains the velocity loss.

Random numbers come from the step's generator on the CPU, in kohya's order: n, then the sigma draw, then the
input-perturbation noise (ip_noise_gamma) when that option is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .device_copies import to_device
from .errors import ConfigError
from .objective import perturbed_input_noise, per_sample_loss
from .objective_settings import NUM_TRAIN_TIMESTEPS, ObjectiveSettings

TIMESTEP_SAMPLINGS = ("auto", "uniform", "sigmoid", "shift", "flux_shift", "sigma", "logit_normal")
WEIGHTING_SCHEMES = ("none", "uniform", "logit_normal", "mode", "sigma_sqrt", "cosmap")   # none = uniform

# kohya's flux_shift: mu grows linearly with the packed token count, 0.5 at 256 tokens to 1.15 at 4096
FLUX_SHIFT_SLOPE = (1.15 - 0.5) / (4096 - 256)
FLUX_SHIFT_BASE = 0.5 - 256 * FLUX_SHIFT_SLOPE


@dataclass(frozen=True)
class FlowSettings:
    """kohya's flow-matching options (flux_train_network.py / sd3_train_network.py names and defaults, except
    where noted); they only apply to flow-matching models."""

    timestep_sampling: str = "auto"    # auto: the family's own (Flux: flux_shift, SD3: logit_normal, else shift)
    sigmoid_scale: float = 1.0         # k in sigmoid(k * u)
    discrete_flow_shift: float = 0.0   # S; 0 = the shift the MODEL's sampling declares (kohya: 3.0)
    weighting_scheme: str = "none"     # density of u in sigma / logit_normal modes (raw velocity loss: no weight)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    guidance_scale: float = 1.0        # Flux dev's guidance input (kohya's docs advise 1.0; its default is 3.5)

    def validated(self) -> "FlowSettings":
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ConfigError(f"timestep_sampling {self.timestep_sampling!r} is not one of "
                              f"{', '.join(TIMESTEP_SAMPLINGS)} (auto follows the model).")
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ConfigError(f"weighting_scheme {self.weighting_scheme!r} is not one of "
                              f"{', '.join(WEIGHTING_SCHEMES)} (kohya: none).")
        for name in ("sigmoid_scale", "discrete_flow_shift", "logit_mean", "logit_std", "mode_scale",
                     "guidance_scale"):
            if not math.isfinite(float(getattr(self, name))):
                raise ConfigError(f"{name} is {getattr(self, name)}; give a finite number.")
        if self.sigmoid_scale <= 0:
            raise ConfigError(f"sigmoid_scale is {self.sigmoid_scale}; use a number above 0 (kohya: 1.0).")
        if self.discrete_flow_shift < 0:
            raise ConfigError(f"discrete_flow_shift is {self.discrete_flow_shift}; use 0 (the model's own shift) "
                              "or a shift above 0 (kohya: 3.0; Flux at 1024px: 3.1582).")
        if self.logit_std <= 0:
            raise ConfigError(f"logit_std is {self.logit_std}; use a number above 0 (kohya: 1.0).")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale is {self.guidance_scale}; use 0 or more (kohya's docs: 1.0).")
        return self

    def resolved(self, family_sampling: str, model_shift: float) -> "FlowSettings":
        """`auto` made the family's sampling and a 0 shift the model's, so the run (and its metadata) say what ran."""
        sampling = family_sampling if self.timestep_sampling == "auto" else self.timestep_sampling
        shift = self.discrete_flow_shift or model_shift
        weighting = self.weighting_scheme
        if self.timestep_sampling == "auto" and sampling == "logit_normal" and weighting in ("none", "uniform"):
            weighting = "logit_normal"        # SD3's own: logit-normal u (kohya's SD3 default would be uniform)
        return replace(self.validated(), timestep_sampling=sampling, discrete_flow_shift=float(shift),
                       weighting_scheme=weighting)

    def describe(self, guidance: bool = True) -> str:
        """The resolved settings in words; `guidance`: the model takes the guidance input (Flux dev)."""
        parts = [f"flow matching, {self.timestep_sampling} timesteps"]
        if self.timestep_sampling in ("sigmoid", "shift", "flux_shift") and self.sigmoid_scale != 1.0:
            parts.append(f"sigmoid scale {self.sigmoid_scale:g}")
        if self.timestep_sampling in ("shift", "sigma", "logit_normal"):
            parts.append(f"shift {self.discrete_flow_shift:g}")
        if self.timestep_sampling in ("sigma", "logit_normal") and self.weighting_scheme not in ("none", "uniform"):
            parts.append(f"{self.weighting_scheme} density")
        if guidance:
            parts.append(f"guidance {self.guidance_scale:g}")
        return ", ".join(parts)

    def metadata(self) -> dict[str, object]:
        """kohya's ss_* keys for these options (flux_train_network.py update_metadata); raw prediction."""
        return {
            "ss_timestep_sampling": self.timestep_sampling,
            "ss_sigmoid_scale": float(self.sigmoid_scale),
            "ss_discrete_flow_shift": float(self.discrete_flow_shift),
            "ss_weighting_scheme": self.weighting_scheme,
            "ss_logit_mean": float(self.logit_mean),
            "ss_logit_std": float(self.logit_std),
            "ss_mode_scale": float(self.mode_scale),
            "ss_guidance_scale": float(self.guidance_scale),
            "ss_model_prediction_type": "raw",
        }


# --- the deterministic parts ------------------------------------------------------------------------------

def flux_shift_mu(tokens: int) -> float:
    """kohya's (and ComfyUI's ModelSamplingFlux node's) mu for a latent of `tokens` 2x2 patches."""
    return FLUX_SHIFT_SLOPE * tokens + FLUX_SHIFT_BASE


def shifted_sigmas(p: torch.Tensor, shift: float) -> torch.Tensor:
    """The linear time shift S p / (1 + (S - 1) p) (kohya's shift mode, SD3's training shift)."""
    return shift * p / (1 + (shift - 1) * p)


def flux_shifted_sigmas(p: torch.Tensor, mu: float) -> torch.Tensor:
    """The exponential time shift e^mu / (e^mu + (1/p - 1)): the linear one with S = e^mu."""
    return math.exp(mu) / (math.exp(mu) + (1 / p - 1))


def sigma_table(shift: float, steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """kohya's sigma-mode table: FlowMatchEulerDiscreteScheduler(steps, shift).sigmas, t = steps..1 descending."""
    t = torch.arange(steps, 0, -1, dtype=torch.float64) / steps
    return shifted_sigmas(t, shift)


def density_draw(batch: int, generator: torch.Generator, settings: FlowSettings) -> torch.Tensor:
    """kohya's compute_density_for_timestep_sampling: u in (0, 1) per sample, float64 on the CPU.

    logit_normal: sigmoid(N(logit_mean, logit_std)); mode: 1 - u - mode_scale (cos^2(pi u / 2) - 1 + u) with
    u ~ U(0, 1); anything else (none, uniform, sigma_sqrt, cosmap): U(0, 1)."""
    if settings.weighting_scheme == "logit_normal":
        return logit_normal_draw(batch, generator, settings)
    u = torch.rand(batch, generator=generator, dtype=torch.float32).double()
    if settings.weighting_scheme == "mode":
        return 1 - u - settings.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def logit_normal_draw(batch: int, generator: torch.Generator, settings: FlowSettings) -> torch.Tensor:
    normal = torch.randn(batch, generator=generator, dtype=torch.float32).double()
    return torch.sigmoid(normal * settings.logit_std + settings.logit_mean)


def draw_sigmas(batch: int, latent_hw: tuple[int, int], generator: torch.Generator,
                settings: FlowSettings, timestep_range: tuple[int, int] = (0, NUM_TRAIN_TIMESTEPS)) -> torch.Tensor:
    """Each sample's sigma in [0, 1] (float32, CPU) for latents of `latent_hw`, per the resolved sampling:

    uniform: U(0, 1); sigmoid: sigmoid(k u), u ~ N(0, 1); shift: that, time-shifted by S; flux_shift: that,
    time-shifted by e^mu with mu from the latent's 2x2-patch count; sigma: kohya Flux's default, u from
    the weighting scheme's density indexing the 1000-step shifted table; logit_normal: kohya SD3's, u from the
    weighting scheme's density (auto sets it logit-normal) shifted by S, then t = int(u (t_max - t_min) + t_min)
    with `timestep_range` (t_min, t_max) (kohya's SD3 min / max timestep, 0 and 1000 by default) and s = t / 1000.
    """
    sampling, shift = settings.timestep_sampling, settings.discrete_flow_shift
    if sampling == "uniform":
        sigmas = torch.rand(batch, generator=generator, dtype=torch.float32).double()
    elif sampling in ("sigmoid", "shift", "flux_shift"):
        normal = torch.randn(batch, generator=generator, dtype=torch.float32).double()
        sigmas = torch.sigmoid(settings.sigmoid_scale * normal)
        if sampling == "shift":
            sigmas = shifted_sigmas(sigmas, shift)
        elif sampling == "flux_shift":
            height, width = latent_hw
            sigmas = flux_shifted_sigmas(sigmas, flux_shift_mu((height // 2) * (width // 2)))
    elif sampling == "sigma":
        indices = (density_draw(batch, generator, settings) * NUM_TRAIN_TIMESTEPS).long()
        sigmas = sigma_table(shift)[indices.clamp(0, NUM_TRAIN_TIMESTEPS - 1)]
    elif sampling == "logit_normal":
        u = shifted_sigmas(density_draw(batch, generator, settings), shift)
        low, high = timestep_range
        sigmas = (u * (high - low) + low).long().double() / NUM_TRAIN_TIMESTEPS
    else:
        raise ConfigError(f"timestep_sampling {sampling!r} must be resolved for the model first (FlowSettings."
                          "resolved).")
    return sigmas.float()


# --- the objective of one run -----------------------------------------------------------------------------

# kohya's DDPM-schedule options: they weight by an SNR table or reshape the noise, and kohya's flow trainers
# do not apply them
DDPM_ONLY = {"min_snr_gamma": "min_snr_gamma", "debiased_estimation": "debiased_estimation",
             "scale_v_pred_loss_like_noise_pred": "scale_v_pred_loss_like_noise_pred",
             "v_pred_like_loss": "v_pred_like_loss", "zero_terminal_snr": "zero_terminal_snr",
             "noise_offset": "noise_offset", "multires_noise_iterations": "multires_noise_iterations"}


def check_flow_objective(settings: ObjectiveSettings, flow: FlowSettings) -> ObjectiveSettings:
    """The loss and noise options that mean something for a flow-matching model with the resolved `flow`
    settings, or an error naming the rest."""
    settings = settings.validated()
    used = [name for name in DDPM_ONLY if getattr(settings, name)]
    if used:
        raise ConfigError(f"{', '.join(used)} weight or shape the loss by a DDPM noise schedule, and this MODEL is "
                          "a flow-matching model, which has none (kohya's Flux and SD3 trainers ignore them); set "
                          f"{'them' if len(used) > 1 else 'it'} to 0 / off. For flow models, timestep_sampling and "
                          "weighting_scheme shape the training instead.")
    if settings.uses_huber_c and settings.huber_schedule != "constant":
        raise ConfigError(f"The {settings.huber_schedule} Huber schedule follows a DDPM schedule's noise levels; "
                          "with a flow-matching MODEL set huber_schedule to constant.")
    if (settings.min_timestep, settings.max_timestep) != (0, NUM_TRAIN_TIMESTEPS) and \
            flow.timestep_sampling != "logit_normal":
        raise ConfigError(f"min_timestep / max_timestep bound a flow-matching MODEL's timesteps only with the "
                          f"logit_normal sampling (kohya's SD3 trainer); with {flow.timestep_sampling} timesteps "
                          "(kohya's Flux trainer ignores them) set them back to 0 and 1000, or choose "
                          "timestep_sampling logit_normal.")
    return settings


@dataclass(frozen=True, eq=False)
class FlowObjective:
    """The flow-matching objective of one run; the same calls as trainer.objective.Objective, with sigmas in
    [0, 1] where the DDPM objective has integer timesteps (fixed-timestep evaluation passes t, read as t / 1000)."""

    settings: ObjectiveSettings
    flow: FlowSettings                 # resolved: no auto, the shift in force
    prediction_type: str = "flow"

    def noisy_latents_and_target(self, latents: torch.Tensor, generator: torch.Generator,
                                 timesteps: torch.Tensor | None = None,
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = latents.device
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        if timesteps is None:
            sigmas = draw_sigmas(latents.shape[0], tuple(latents.shape[-2:]), generator, self.flow,
                                 (self.settings.min_timestep, self.settings.max_timestep))
        else:
            sigmas = timesteps.cpu().double().div(NUM_TRAIN_TIMESTEPS).float()
        input_noise = perturbed_input_noise(noise, generator, self.settings)
        s = to_device(sigmas.view(-1, *([1] * (latents.ndim - 1))), device)
        noise = to_device(noise, device, pin=True)
        input_noise = noise if not self.settings.ip_noise_gamma else to_device(input_noise, device, pin=True)
        noisy = (1 - s) * latents + s * input_noise
        return noisy, to_device(sigmas, device), noise - latents

    def per_sample_loss(self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                        masks: torch.Tensor | None = None) -> torch.Tensor:
        huber_c = None
        if self.settings.uses_huber_c:
            huber_c = torch.full((prediction.shape[0],), self.settings.huber_c * self.settings.huber_scale,
                                 device=prediction.device)
        return per_sample_loss(prediction, target, self.settings.loss_type, huber_c, masks)

    def loss_weights(self, timesteps: torch.Tensor) -> None:
        return None

    def post_process_loss(self, loss: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return loss


def build_flow_objective(settings: ObjectiveSettings, flow: FlowSettings, family_sampling: str,
                         model_shift: float) -> FlowObjective:
    resolved = flow.resolved(family_sampling, model_shift)
    return FlowObjective(check_flow_objective(settings, resolved), resolved)
