"""The loss and noise options of kohya's training objective, with the kohya_ss GUI's defaults.

Each field is one kohya option (`--name` in sd-scripts' train_network.py, the same name in kohya_ss's
"Advanced" tab); 0 / False means off, as the GUI treats it (the GUI sends no argument for 0). What each
does is in trainer/objective.py; `metadata()` gives kohya's `ss_*` values for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class ObjectiveSettings:
    """kohya's loss and noise options; defaults are the kohya_ss GUI's (bmaltais/kohya_ss @ 45088f04)."""

    loss_type: str = "l2"                       # l2 | l1 | huber | smooth_l1
    huber_schedule: str = "snr"                 # constant | exponential | snr (huber and smooth_l1 only)
    huber_c: float = 0.1
    huber_scale: float = 1.0                    # kohya ignores it with the snr schedule
    min_snr_gamma: float = 0.0                  # 0 = off; the paper and kohya suggest 5
    scale_v_pred_loss_like_noise_pred: bool = False   # v-prediction only
    v_pred_like_loss: float = 0.0               # 0 = off; epsilon only
    debiased_estimation: bool = False           # kohya's --debiased_estimation_loss
    noise_offset: float = 0.0                   # 0 = off
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float = 0.0           # 0 = off; needs noise_offset
    multires_noise_iterations: int = 0          # 0 = off
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float = 0.0                 # 0 = off
    ip_noise_gamma_random_strength: bool = False
    min_timestep: int = 0                       # t ~ U{min_timestep .. max_timestep - 1}
    max_timestep: int = NUM_TRAIN_TIMESTEPS
    zero_terminal_snr: bool = False             # v-prediction only (see trainer/objective.py)

    @property
    def uses_huber_c(self) -> bool:
        return self.loss_type in ("huber", "smooth_l1")

    @property
    def weights_loss(self) -> bool:
        """True when a per-timestep loss weight applies (min-SNR, v-pred scaling, v-pred-like, debiased)."""
        return bool(self.min_snr_gamma or self.scale_v_pred_loss_like_noise_pred or self.v_pred_like_loss
                    or self.debiased_estimation)

    def validated(self, prediction_type: str | None = None) -> "ObjectiveSettings":
        """Checks every value; with the model's prediction type, also the options kohya ties to it."""
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)} (kohya: l2).")
        if self.huber_schedule not in HUBER_SCHEDULES:
            raise ConfigError(f"huber_schedule {self.huber_schedule!r} is not one of {', '.join(HUBER_SCHEDULES)} "
                              "(kohya: snr).")
        for name in ("huber_c", "huber_scale", "min_snr_gamma", "v_pred_like_loss", "noise_offset",
                     "adaptive_noise_scale", "multires_noise_discount", "ip_noise_gamma"):
            if not math.isfinite(float(getattr(self, name))):
                raise ConfigError(f"{name} is {getattr(self, name)}; give a finite number.")
        if self.uses_huber_c:
            if not 0 < self.huber_c <= 1:
                raise ConfigError(f"huber_c is {self.huber_c}; {self.loss_type} loss needs it in (0, 1] "
                                  "(kohya: 0.1; smaller is closer to L1 for large errors).")
            if self.huber_schedule != "snr" and not self.huber_scale > 0:
                raise ConfigError(f"huber_scale is {self.huber_scale}; the {self.huber_schedule} Huber schedule "
                                  "needs it above 0 (kohya: 1.0).")
        if self.min_snr_gamma < 0:
            raise ConfigError(f"min_snr_gamma is {self.min_snr_gamma}; use 0 (off) or a positive gamma "
                              "(the paper and kohya suggest 5).")
        if self.v_pred_like_loss < 0:
            raise ConfigError(f"v_pred_like_loss is {self.v_pred_like_loss}; use 0 (off) or a positive weight "
                              "(kohya_ss suggests 0.5).")
        if not 0 <= self.noise_offset <= 1:
            raise ConfigError(f"noise_offset is {self.noise_offset}; use 0 (off) to 1 (kohya suggests 0.05-0.15).")
        if not -1 <= self.adaptive_noise_scale <= 1:
            raise ConfigError(f"adaptive_noise_scale is {self.adaptive_noise_scale}; use -1 to 1 (0 = off).")
        if self.adaptive_noise_scale and not self.noise_offset:
            raise ConfigError("adaptive_noise_scale adds to the noise offset, so it needs noise_offset above 0 "
                              "(kohya refuses it without); set noise_offset, or adaptive_noise_scale to 0.")
        if not (isinstance(self.multires_noise_iterations, int) and 0 <= self.multires_noise_iterations <= 64):
            raise ConfigError(f"multires_noise_iterations is {self.multires_noise_iterations}; use a whole number "
                              "from 0 (off) to 64 (kohya suggests 6-10).")
        if not 0 <= self.multires_noise_discount <= 1:
            raise ConfigError(f"multires_noise_discount is {self.multires_noise_discount}; use 0 to 1 (kohya: 0.3; "
                              "kohya_ss suggests 0.8, or 0.1-0.3 for small LoRA datasets).")
        if not 0 <= self.ip_noise_gamma <= 1:
            raise ConfigError(f"ip_noise_gamma is {self.ip_noise_gamma}; use 0 (off) to 1 (kohya suggests 0.1).")
        self._check_timesteps()
        if prediction_type is not None:
            self._check_prediction_type(prediction_type)
        return self

    def _check_timesteps(self) -> None:
        low, high = self.min_timestep, self.max_timestep
        if not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"min_timestep {low!r} and max_timestep {high!r} must be whole numbers.")
        if not 0 <= low <= NUM_TRAIN_TIMESTEPS - 1:
            raise ConfigError(f"min_timestep is {low}; use 0 to {NUM_TRAIN_TIMESTEPS - 1} (kohya: 0).")
        if not 1 <= high <= NUM_TRAIN_TIMESTEPS:
            raise ConfigError(f"max_timestep is {high}; use 1 to {NUM_TRAIN_TIMESTEPS} (kohya: "
                              f"{NUM_TRAIN_TIMESTEPS}; timesteps are drawn below it).")
        if low > high:
            raise ConfigError(f"min_timestep ({low}) is above max_timestep ({high}); timesteps are drawn from "
                              "min_timestep up to max_timestep - 1, so set min_timestep lower.")
        if low == high == NUM_TRAIN_TIMESTEPS:
            raise ConfigError(f"min_timestep = max_timestep = {high} trains every step at timestep {high}, which "
                              f"the schedule does not have (0 to {NUM_TRAIN_TIMESTEPS - 1}); lower both.")

    def _check_prediction_type(self, prediction_type: str) -> None:
        if self.scale_v_pred_loss_like_noise_pred and prediction_type != "v_prediction":
            raise ConfigError("scale_v_pred_loss_like_noise_pred works on v-prediction models (SD2 768-v and "
                              f"the like) only, and this MODEL predicts {prediction_type}; turn it off "
                              "(kohya refuses it without v_parameterization).")
        if self.v_pred_like_loss and prediction_type == "v_prediction":
            raise ConfigError("v_pred_like_loss adds a v-prediction-like term to an epsilon model's loss, and this "
                              "MODEL already predicts v; set it to 0 (kohya refuses it with v_parameterization).")
        if self.zero_terminal_snr and prediction_type != "v_prediction":
            raise ConfigError("zero_terminal_snr trains the last timestep on pure noise, which an epsilon model "
                              f"cannot learn (this MODEL predicts {prediction_type}); turn it off, or train a "
                              "v-prediction model (kohya only warns that training will be unexpected).")

    def describe(self) -> str:
        """One line for the run's log: the loss, its weights and the noise, as they will run."""
        if self.loss_type == "huber" or self.loss_type == "smooth_l1":
            scale = "" if self.huber_schedule == "snr" else f", scale {self.huber_scale:g}"
            loss = f"{self.loss_type} loss ({self.huber_schedule} schedule, c {self.huber_c:g}{scale})"
        else:
            loss = f"{self.loss_type} loss"
        parts = [loss]
        if self.min_snr_gamma:
            parts.append(f"min-SNR gamma {self.min_snr_gamma:g}")
        if self.scale_v_pred_loss_like_noise_pred:
            parts.append("v-prediction loss scaled like noise prediction")
        if self.v_pred_like_loss:
            parts.append(f"v-prediction-like loss x{self.v_pred_like_loss:g}")
        if self.debiased_estimation:
            parts.append("debiased estimation")
        if self.noise_offset:
            offset = f"noise offset {self.noise_offset:g}"
            if self.noise_offset_random_strength:
                offset += " (random strength)"
            if self.adaptive_noise_scale:
                offset += f", adaptive scale {self.adaptive_noise_scale:g}"
            parts.append(offset)
        if self.multires_noise_iterations:
            parts.append(f"multires noise {self.multires_noise_iterations} iteration(s), discount "
                         f"{self.multires_noise_discount:g}")
        if self.ip_noise_gamma:
            parts.append(f"input perturbation gamma {self.ip_noise_gamma:g}"
                         + (" (random strength)" if self.ip_noise_gamma_random_strength else ""))
        if (self.min_timestep, self.max_timestep) != (0, NUM_TRAIN_TIMESTEPS):
            if self.min_timestep == self.max_timestep:
                parts.append(f"timestep {self.max_timestep} only")
            else:
                parts.append(f"timesteps {self.min_timestep}-{self.max_timestep - 1}")
        if self.zero_terminal_snr:
            parts.append("zero terminal SNR")
        return "; ".join(parts)

    def metadata(self) -> dict[str, object]:
        """kohya's ss_* values for these options, before `str()` (kohya writes `str(value)` of each).

        kohya's convention, from its argparse defaults as the GUI passes them: float options that are off are
        None (the GUI sends no argument for 0), flags are bools, and multires_noise_discount is always recorded
        (its argparse default 0.3). scale_v_pred_loss_like_noise_pred, v_pred_like_loss and the timestep range
        have no ss_* key (the range goes to modelspec.timestep_range: see `modelspec()`).
        """
        def off_as_none(value):
            return float(value) if value else None

        return {
            "ss_loss_type": self.loss_type,
            "ss_huber_schedule": self.huber_schedule,
            "ss_huber_c": float(self.huber_c),
            "ss_huber_scale": float(self.huber_scale),
            "ss_min_snr_gamma": off_as_none(self.min_snr_gamma),
            "ss_noise_offset": off_as_none(self.noise_offset),
            "ss_noise_offset_random_strength": bool(self.noise_offset_random_strength),
            "ss_adaptive_noise_scale": off_as_none(self.adaptive_noise_scale),
            "ss_multires_noise_iterations": int(self.multires_noise_iterations) or None,
            "ss_multires_noise_discount": float(self.multires_noise_discount),
            "ss_ip_noise_gamma": off_as_none(self.ip_noise_gamma),
            "ss_ip_noise_gamma_random_strength": bool(self.ip_noise_gamma_random_strength),
            "ss_debiased_estimation": bool(self.debiased_estimation),
            "ss_zero_terminal_snr": bool(self.zero_terminal_snr),
        }

    def modelspec(self) -> dict[str, str]:
        """kohya's modelspec.timestep_range "min,max", written only when the range is not the full one.

        (kohya writes it whenever --min_timestep or --max_timestep is passed; the kohya_ss GUI always passes
        max_timestep 1000, so GUI runs carry "0,1000". The CLI convention is kept: absent when not set.)
        """
        if (self.min_timestep, self.max_timestep) == (0, NUM_TRAIN_TIMESTEPS):
            return {}
        return {"modelspec.timestep_range": f"{self.min_timestep},{self.max_timestep}"}
