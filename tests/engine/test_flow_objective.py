"""The flow-matching objective (trainer/flow_objective.py): noising, target, draws, options, and a run through the
training loop on a tiny model read as a velocity predictor."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tests.helpers import make_kohya_folder
from trainer.dataset import load_dataset_folder
from trainer.dataset.buckets import BucketSettings
from trainer.diffusers_adapter import DiffusersUNetDenoiser, FunctionCaptionEncoder, diffusers_sd1_trainable
from trainer.errors import ConfigError
from trainer.flow_objective import (FlowObjective, FlowSettings, build_flow_objective, check_flow_objective,
                                    draw_sigmas, flux_shift_mu, sigma_table)
from trainer.latent_cache import cache_latents
from trainer.loop import TrainCallbacks, train_lora
from trainer.metadata import training_metadata
from trainer.networks import NetworkConfig
from trainer.objective_settings import ObjectiveSettings
from trainer.optim import OptimizerConfig
from trainer.plan import TrainSettings
from trainer.cli.tiny_model import HashedWordEncoder, tiny_unet


def objective(sampling="uniform", shift=3.0, **options) -> FlowObjective:
    return build_flow_objective(ObjectiveSettings(**options), FlowSettings(timestep_sampling=sampling), sampling,
                                shift)


def test_noisy_latents_and_target_are_the_flow_matching_definitions():
    """x_t = (1 - s) x0 + s n and target n - x0 (ComfyUI's CONST noise_scaling and its reading of the output)."""
    latents = torch.randn(3, 16, 4, 4)
    draws = torch.Generator().manual_seed(7)
    noisy, sigmas, target = objective().noisy_latents_and_target(latents, draws,
                                                                 timesteps=torch.tensor([0, 250, 999]))
    again = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=again)            # the noise is the first draw
    s = torch.tensor([0.0, 0.25, 0.999]).view(-1, 1, 1, 1)
    assert torch.allclose(sigmas, s.flatten())
    assert torch.allclose(noisy, (1 - s) * latents + s * noise, atol=1e-6)
    assert torch.allclose(target, noise - latents)
    # the denoised estimate ComfyUI makes from the true velocity is x0 (CONST.calculate_denoised: x_t - s v)
    assert torch.allclose(noisy - s * target, latents, atol=1e-5)


def test_the_noise_comes_first_then_the_sigmas_so_runs_repeat():
    latents = torch.zeros(2, 16, 8, 8)
    first = objective("shift").noisy_latents_and_target(latents, torch.Generator().manual_seed(3))
    second = objective("shift").noisy_latents_and_target(latents, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    draws = torch.Generator().manual_seed(3)
    torch.randn(latents.shape, generator=draws)
    expected = draw_sigmas(2, (8, 8), draws, FlowSettings(timestep_sampling="shift", discrete_flow_shift=3.0))
    assert torch.equal(first[1], expected)


def test_ip_noise_gamma_perturbs_the_input_only():
    latents = torch.randn(2, 16, 4, 4)
    plain = objective().noisy_latents_and_target(latents, torch.Generator().manual_seed(1))
    perturbed = objective(ip_noise_gamma=0.1).noisy_latents_and_target(latents, torch.Generator().manual_seed(1))
    assert torch.equal(plain[1], perturbed[1]) and torch.equal(plain[2], perturbed[2])
    assert not torch.equal(plain[0], perturbed[0])


@pytest.mark.parametrize("option", [{"min_snr_gamma": 5.0}, {"debiased_estimation": True}, {"noise_offset": 0.05},
                                    {"multires_noise_iterations": 6}, {"max_timestep": 900},
                                    {"loss_type": "huber", "huber_schedule": "snr"}])
def test_ddpm_schedule_options_are_refused_with_what_to_change(option):
    with pytest.raises(ConfigError) as error:
        check_flow_objective(ObjectiveSettings(**option), FlowSettings().resolved("flux_shift", 3.0))
    assert "flow" in str(error.value).lower() or "constant" in str(error.value)


def test_min_and_max_timestep_bound_the_logit_normal_draws_as_kohyas_sd3_trainer():
    """kohya's SD3 trainer: t = int(u (t_max - t_min) + t_min), s = t / 1000, u the shifted density draw; other
    samplings refuse the bounds (kohya's Flux trainer ignores them)."""
    bounded = objective("logit_normal", min_timestep=200, max_timestep=400)
    draws = torch.Generator().manual_seed(3)
    _, sigmas, _ = bounded.noisy_latents_and_target(torch.zeros(4000, 1, 1, 1), draws)
    assert 0.2 <= float(sigmas.min()) and float(sigmas.max()) < 0.4
    again = torch.Generator().manual_seed(3)
    torch.randn(4000, 1, 1, 1, generator=again)                                        # the noise comes first
    u = torch.rand(4000, generator=again, dtype=torch.float32).double()      # weighting none: uniform density
    u = 3.0 * u / (1 + 2.0 * u)
    expected = ((u * 200 + 200).long().double() / 1000).float()
    assert torch.equal(sigmas, expected)
    with pytest.raises(ConfigError, match="logit_normal"):
        objective("flux_shift", min_timestep=200)


def test_constant_huber_loss_is_offered():
    flow = objective(loss_type="huber", huber_schedule="constant", huber_c=0.2)
    prediction, target = torch.zeros(2, 16, 2, 2), torch.full((2, 16, 2, 2), 3.0)
    loss = flow.per_sample_loss(prediction, target, torch.zeros(2))
    assert torch.allclose(loss, torch.full((2,), 2 * 0.2 * (math.sqrt(9 + 0.04) - 0.2)))


def test_auto_is_the_familys_sampling_and_zero_shift_the_models():
    resolved = FlowSettings().resolved("flux_shift", 3.1582)
    assert (resolved.timestep_sampling, resolved.discrete_flow_shift) == ("flux_shift", 3.1582)
    chosen = FlowSettings(timestep_sampling="shift", discrete_flow_shift=2.0).resolved("flux_shift", 3.1582)
    assert (chosen.timestep_sampling, chosen.discrete_flow_shift) == ("shift", 2.0)
    with pytest.raises(ConfigError, match="timestep_sampling"):
        FlowSettings(timestep_sampling="cosine").validated()


def test_flux_shift_matches_the_models_own_shift_at_1024():
    """kohya's flux_shift at 1024x1024 (4096 tokens) is mu 1.15, the shift ComfyUI's ModelSamplingFlux declares."""
    assert flux_shift_mu(4096) == pytest.approx(1.15)
    assert flux_shift_mu(256) == pytest.approx(0.5)
    settings = FlowSettings(timestep_sampling="flux_shift")
    shifted = FlowSettings(timestep_sampling="shift", discrete_flow_shift=math.exp(1.15))
    a = draw_sigmas(64, (128, 128), torch.Generator().manual_seed(4), settings)
    b = draw_sigmas(64, (128, 128), torch.Generator().manual_seed(4), shifted)
    assert torch.allclose(a, b, atol=1e-6)


def test_sigma_mode_reads_kohyas_shifted_table():
    table = sigma_table(3.0)
    assert table[0] == pytest.approx(1.0) and table[-1] == pytest.approx(3 * 0.001 / (1 + 2 * 0.001))
    settings = FlowSettings(timestep_sampling="sigma", discrete_flow_shift=3.0)
    sigmas = draw_sigmas(1000, (8, 8), torch.Generator().manual_seed(0), settings)
    assert set(sigmas.tolist()) <= set(table.float().tolist())


def tiny_flow_trainable():
    """The tiny UNet read as a velocity model: enough for the loop; the ComfyUI tier trains the real DiTs."""
    trainable = diffusers_sd1_trainable(tiny_unet(), FunctionCaptionEncoder(HashedWordEncoder()))
    denoiser = trainable.denoiser

    class VelocityDenoiser(DiffusersUNetDenoiser):
        flow_sampling = "flux_shift"
        flow_shift = math.exp(1.15)

        def __init__(self, unet, latent_scale):
            super().__init__(unet, "flow", latent_scale)
            self.alphas_cumprod = None
            self.guidance_seen = []

        def __call__(self, noisy, sigmas, context, pooled=None, sizes=None, guidance=1.0):
            self.guidance_seen.append(guidance)
            return super().__call__(noisy, sigmas * 1000, context)

    trainable.denoiser = VelocityDenoiser(denoiser.unet, latent_scale=denoiser.latent_scale)
    return trainable


def test_a_flow_model_trains_through_the_loop_and_the_file_says_how(tmp_path, tiny_vae_encoder):
    root = make_kohya_folder(str(tmp_path / "data"), {"2_sks dog": [(64, 64), (64, 64)]})
    cache = cache_latents(load_dataset_folder(root), tiny_vae_encoder, BucketSettings((64, 64), 64, 64))
    trainable = tiny_flow_trainable()
    settings = TrainSettings(epochs=2, batch_size=2, seed=3, flow=FlowSettings(guidance_scale=2.5))
    result = train_lora(trainable, cache, NetworkConfig(rank=4, alpha=4), OptimizerConfig(learning_rate=1e-3),
                        settings, TrainCallbacks())
    assert all(math.isfinite(loss) for loss in result.progress.losses) and result.plan.total_steps == 4
    assert any(v.abs().max() > 0 for k, v in result.tensors.items() if k.endswith("lora_up.weight"))
    assert set(trainable.denoiser.guidance_seen) == {2.5}
    again = train_lora(tiny_flow_trainable(), cache, NetworkConfig(rank=4, alpha=4),
                       OptimizerConfig(learning_rate=1e-3), settings, TrainCallbacks())
    assert again.progress.losses == result.progress.losses
    resolved = replace(settings, flow=settings.flow.resolved("flux_shift", math.exp(1.15)))
    metadata = training_metadata(run_name="r", session_id="1", cache=cache, network=NetworkConfig(rank=4, alpha=4),
                                 optimizer=OptimizerConfig(), settings=resolved, plan=result.plan,
                                 progress=result.progress, base_model_version="flux1_dev", prediction_type="flow",
                                 precision="fp32")
    assert metadata["ss_base_model_version"] == "flux1"
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert metadata["ss_timestep_sampling"] == "flux_shift" and metadata["ss_model_prediction_type"] == "raw"
    assert metadata["ss_guidance_scale"] == "2.5" and "modelspec.prediction_type" not in metadata
