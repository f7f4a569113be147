"""Train's loss and noise widgets (kohya's options, names and kohya_ss GUI defaults), and reading them into
trainer.objective_settings.ObjectiveSettings. All optional, so older workflows and API prompts validate."""

from __future__ import annotations

from dataclasses import fields

from comfy_api.latest import io

from ..trainer.flow_objective import TIMESTEP_SAMPLINGS, WEIGHTING_SCHEMES, FlowSettings
from ..trainer.objective_settings import HUBER_SCHEDULES, LOSS_TYPES, ObjectiveSettings


def objective_inputs() -> list:
    return [
        io.Combo.Input("loss_type", options=list(LOSS_TYPES), default="l2", optional=True,
                       tooltip="Loss between prediction and target: l2 (MSE, kohya's default), l1, or huber / "
                               "smooth_l1, less sensitive to outliers, with c from huber_schedule."),
        io.Combo.Input("huber_schedule", options=list(HUBER_SCHEDULES), default="snr", optional=True,
                       tooltip="How Huber c changes with the timestep (huber / smooth_l1 only): snr follows the "
                               "noise level; exponential huber_scale * c^(t/1000); constant c * huber_scale."),
        io.Float.Input("huber_c", default=0.1, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Huber threshold (huber / smooth_l1); smaller is closer to L1 for large errors."),
        io.Float.Input("huber_scale", default=1.0, min=0.0, max=10.0, step=0.01, optional=True,
                       tooltip="Scale of Huber c for the constant and exponential schedules."),
        io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=20.0, step=0.5, optional=True,
                       tooltip="Min-SNR weighting: less weight on low-noise timesteps. 0 = off; 5 is the paper's "
                               "value. v-prediction models use its v-prediction formula."),
        io.Boolean.Input("debiased_estimation", default=False, optional=True,
                         tooltip="Weights the loss by 1/sqrt(SNR) (epsilon) or 1/(SNR+1) (v-prediction); kohya_ss "
                                 "advises not combining it with min_snr_gamma."),
        io.Boolean.Input("scale_v_pred_loss_like_noise_pred", default=False, optional=True,
                         tooltip="v-prediction models: scales the loss by SNR/(SNR+1) so timesteps weigh as in "
                                 "noise prediction."),
        io.Float.Input("v_pred_like_loss", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Epsilon models: adds this share of a v-prediction-like loss. 0 = off."),
        io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Per-channel constant noise, so the LoRA learns very dark and bright images. 0 = off; "
                               "0.05-0.15 usual."),
        io.Boolean.Input("noise_offset_random_strength", default=False, optional=True,
                         tooltip="A random offset between 0 and noise_offset at each step."),
        io.Float.Input("adaptive_noise_scale", default=0.0, min=-1.0, max=1.0, step=0.001, optional=True,
                       tooltip="Adds this x the latent's mean absolute value per channel to the noise offset "
                               "(needs noise_offset). 0 = off."),
        io.Int.Input("multires_noise_iterations", default=0, min=0, max=64, optional=True,
                     tooltip="Multi-resolution (pyramid) noise levels. 0 = off; 6-10 usual."),
        io.Float.Input("multires_noise_discount", default=0.3, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Weight falloff per multires level (kohya's default 0.3)."),
        io.Float.Input("ip_noise_gamma", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Input perturbation: extra noise on the model's input only, not the target. 0 = off; "
                               "about 0.1."),
        io.Boolean.Input("ip_noise_gamma_random_strength", default=False, optional=True,
                         tooltip="A random strength between 0 and ip_noise_gamma at each step."),
        io.Int.Input("min_timestep", default=0, min=0, max=999, optional=True,
                     tooltip="Lowest timestep trained; above 0 trains less on fine detail."),
        io.Int.Input("max_timestep", default=1000, min=1, max=1000, optional=True,
                     tooltip="Timesteps are drawn below this; below 1000 trains less on composition."),
        io.Boolean.Input("zero_terminal_snr", default=False, optional=True,
                         tooltip="v-prediction models: the last timestep becomes pure noise (sample the result with "
                                 "ModelSamplingDiscrete zsnr on)."),
    ]


OBJECTIVE_INPUT_NAMES = tuple(f.name for f in fields(ObjectiveSettings))


def objective_settings(values: dict) -> ObjectiveSettings:
    """Takes the loss and noise inputs out of `values` (Train's keyword arguments) into ObjectiveSettings."""
    return ObjectiveSettings(**{name: values.pop(name) for name in OBJECTIVE_INPUT_NAMES if name in values})


def flow_inputs() -> list:
    """Flow-matching models only (Flux.1, Chroma, SD3.x, Qwen-Image, Wan...): kohya's options, ignored otherwise."""
    return [
        io.Combo.Input("timestep_sampling", options=list(TIMESTEP_SAMPLINGS), default="auto", optional=True,
                       tooltip="Flow models: how sigmas are drawn. auto: the family's (Flux, Chroma: flux_shift, "
                               "resolution-dependent; SD3: logit_normal with shift 3; others: shift with the "
                               "model's shift). sigma is kohya's Flux default."),
        io.Float.Input("sigmoid_scale", default=1.0, min=0.01, max=100.0, step=0.1, optional=True,
                       tooltip="Flow models: k in sigmoid(k u) for sigmoid, shift and flux_shift sampling."),
        io.Float.Input("discrete_flow_shift", default=0.0, min=0.0, max=100.0, step=0.05, optional=True,
                       tooltip="Flow models: the shift S for shift, sigma and logit_normal sampling. 0 = the "
                               "MODEL's own (Flux: e^1.15 = 3.16, SD3: 3.0, Wan: 8.0); kohya's Flux trainer "
                               "defaults to 3.0, its SD3 trainer's training_shift to 1.0."),
        io.Combo.Input("weighting_scheme", options=list(WEIGHTING_SCHEMES), default="none", optional=True,
                       tooltip="Flow models, sigma and logit_normal sampling: the density of u (logit_normal, mode; "
                               "the rest uniform). sigma_sqrt and cosmap weigh only kohya's x0 losses: with the "
                               "velocity loss trained here, as in kohya's Flux trainer, they are uniform."),
        io.Float.Input("logit_mean", default=0.0, min=-10.0, max=10.0, step=0.1, optional=True,
                       tooltip="Flow models: mean of the logit-normal density."),
        io.Float.Input("logit_std", default=1.0, min=0.01, max=10.0, step=0.1, optional=True,
                       tooltip="Flow models: standard deviation of the logit-normal density."),
        io.Float.Input("mode_scale", default=1.29, min=-10.0, max=10.0, step=0.01, optional=True,
                       tooltip="Flow models: scale of the mode density."),
        io.Float.Input("guidance_scale", default=1.0, min=0.0, max=100.0, step=0.1, optional=True,
                       tooltip="Flux dev only: its guidance input while training (kohya's docs advise 1.0); "
                               "other models get what their sampling gives them."),
    ]


FLOW_INPUT_NAMES = tuple(f.name for f in fields(FlowSettings))


def flow_settings(values: dict) -> FlowSettings:
    """Takes the flow-matching inputs out of `values` (Train's keyword arguments) into FlowSettings."""
    return FlowSettings(**{name: values.pop(name) for name in FLOW_INPUT_NAMES if name in values})
