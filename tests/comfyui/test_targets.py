"""The training target and input are ComfyUI's own model-sampling definitions, for epsilon and v-prediction:
a model that outputs our target denoises ComfyUI's noisy input exactly to x0."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_our_target_is_what_comfyuis_sampling_denoises_to_x0(comfy, pack, tiny, prediction):
    import comfy.model_sampling

    from comfyui_lora_trainer.nodes.comfy_model import ComfyDenoiser, prediction_type_of
    from comfyui_lora_trainer.trainer.objective import noisy_latents_and_target

    model = tiny.sd15_model(randomize=False)
    if prediction == "v_prediction":
        class VPrediction(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
            pass

        model = model.clone()
        model.add_object_patch("model_sampling", VPrediction(model.model.model_config))
    sampling = model.get_model_object("model_sampling")
    assert prediction_type_of(sampling) == prediction
    denoiser = ComfyDenoiser(model)
    x0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    noisy, timesteps, target = noisy_latents_and_target(x0, denoiser.alphas_cumprod, prediction, generator)
    generator = torch.Generator().manual_seed(2)                      # the same draw again, to read eps
    noise = torch.randn(x0.shape, generator=generator)

    sigma = sampling.sigmas[timesteps].float()
    comfy_noisy = sampling.noise_scaling(sigma, noise, x0)              # ComfyUI's x_t = x0 + sigma * eps
    torch.testing.assert_close(sampling.calculate_input(sigma, comfy_noisy), noisy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sampling.timestep(sigma).float(), timesteps.float())
    denoised = sampling.calculate_denoised(sigma, target, comfy_noisy)
    torch.testing.assert_close(denoised, x0, atol=1e-4, rtol=1e-4)
