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


def test_training_forwards_run_every_attention_through_sdpa_and_match_comfyuis_own(comfy, pack, tiny, monkeypatch):
    """ComfyUI's start-up attention (sub-quadratic on a CPU) is for sampling; training calls SDPA, with the same
    result as ComfyUI's own forward."""
    import comfy.ldm.modules.attention as attention

    from comfyui_lora_trainer.nodes.comfy_model import ComfyDenoiser

    denoiser = ComfyDenoiser(tiny.sd15_model())
    calls = []
    original = attention.attention_pytorch
    monkeypatch.setattr(attention, "attention_pytorch", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([10, 900])
    context = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))     # the tiny CLIP's width
    with torch.no_grad():
        ours = denoiser(x, timesteps, context)
        transformers = sum(1 for m in denoiser.unet.modules() if type(m).__name__ == "BasicTransformerBlock")
        assert len(calls) == 2 * transformers        # self- and cross-attention of every transformer block
        theirs = denoiser.unet(x, timesteps.float(), context=context).float()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_sdxl_size_conditioning_is_comfyuis_encode_adm_kept_on_the_device(comfy, pack, tiny):
    from comfyui_lora_trainer.nodes.comfy_model import ComfyDenoiser
    from comfyui_lora_trainer.trainer.conditioning import sdxl_size_condition
    from comfyui_lora_trainer.trainer.families import SDXL

    model = tiny.sdxl_model()
    denoiser = ComfyDenoiser(model, SDXL)
    pooled = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    sizes = [sdxl_size_condition((512, 768), (512, 704)), sdxl_size_condition((1024, 1024), (1024, 1024)),
             sdxl_size_condition((640, 480), (512, 384))]
    expected = torch.cat([model.model.encode_adm(pooled_output=pooled[i:i + 1], width=s.original_hw[1],
                                                 height=s.original_hw[0], crop_w=s.crop_top_left[1],
                                                 crop_h=s.crop_top_left[0], target_width=s.target_hw[1],
                                                 target_height=s.target_hw[0]) for i, s in enumerate(sizes)])
    assert torch.equal(denoiser.size_vector(pooled, sizes), expected)
    assert torch.equal(denoiser.size_vector(pooled, sizes), expected)      # the second time from the kept rows
    assert len(denoiser.size_rows) == 3
