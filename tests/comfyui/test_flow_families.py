"""Flow-matching families on tiny models built from ComfyUI's own classes (small widths, real block structure):
Flux.1 dev, SD3.5 Medium, Chroma, Qwen-Image and Wan 2.1, each with its own text encoders and VAE
(tests/comfyui/tiny_models_pack/tiny_models.py).

- The objective is ComfyUI's model-sampling definition: x_t is its CONST noise_scaling, and the target is the
  velocity its calculate_denoised reads the output as.
- Each family's file (LoRA and LoKr) loads through ComfyUI's LoraLoader path with every key taken, and the patched
  model computes what the network computed (fp32, atol 1e-5).
- A run trains through run_training on each family, from latents its own VAE made.
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch

from tests.helpers import make_kohya_folder

FAMILIES = {
    # name: (model, clip, vae builders, family key, LoRA module count)
    "flux": ("flux_model", "flux_clip", "flow_vae", "flux1_dev", 10 * 2 + 3 * 2),
    "sd3": ("sd3_model", "sd3_clip", "flow_vae", "sd35_medium", 10 * 2 - 3 + 2 * 1),
    "chroma": ("chroma_model", "chroma_clip", "flow_vae", "chroma", None),
    "qwen_image": ("qwen_image_model", "qwen_image_clip", "wan_vae", "qwen_image", None),
    "wan21": ("wan21_model", "wan_clip", "wan_vae", "wan21", None),
}


def build(tiny, family: str):
    model_name, clip_name, vae_name, _, _ = FAMILIES[family]
    return getattr(tiny, model_name)(seed=3), getattr(tiny, clip_name)(seed=4), getattr(tiny, vae_name)(seed=5)


def inputs(trainable, clip, batch: int = 2, side: int = 8):
    """A batch the denoiser takes: latents, sigmas and the text as the engine encodes it."""
    from comfyui_lora_trainer.trainer.text_contexts import as_conditioning

    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 16, side, side, generator=generator)
    sigmas = torch.tensor([0.3, 0.8][:batch])
    text = as_conditioning(trainable.caption_encoder.encode("a photo of sks dog"), torch.device("cpu"))
    context = text.context.repeat(batch, 1, 1)
    pooled = None if text.pooled is None else text.pooled.repeat(batch, 1)
    return latents, sigmas, context, pooled


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_family_is_recognised_and_its_dit_blocks_are_the_targets(comfy, pack, tiny, family):
    from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy

    model, clip, _ = build(tiny, family)
    trainable = trainable_from_comfy(model, clip)
    key, count = FAMILIES[family][3], FAMILIES[family][4]
    assert trainable.base_model_version == key and trainable.denoiser.prediction_type == "flow"
    assert trainable.lora_targets and all(name.startswith("lora_unet_") for name in trainable.lora_targets)
    if count is not None:
        assert len(trainable.lora_targets) == count
    state_keys = {k[len("diffusion_model."):-len(".weight")].replace(".", "_")
                  for k in model.model.state_dict() if k.startswith("diffusion_model.")}
    assert {name[len("lora_unet_"):] for name in trainable.lora_targets} <= state_keys
    assert trainable.checkpoint_blocks


@pytest.mark.parametrize("family", ["flux", "sd3", "wan21"])
def test_the_objective_is_comfyuis_model_sampling(comfy, pack, tiny, family):
    """x_t = ComfyUI's noise_scaling(s, n, x0); the target is what calculate_denoised turns into x0 exactly."""
    from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy
    from comfyui_lora_trainer.trainer.flow_objective import FlowSettings, build_flow_objective
    from comfyui_lora_trainer.trainer.objective_settings import ObjectiveSettings

    model, clip, _ = build(tiny, family)
    denoiser = trainable_from_comfy(model, clip).denoiser
    sampling = model.get_model_object("model_sampling")
    objective = build_flow_objective(ObjectiveSettings(), FlowSettings(), denoiser.flow_sampling, denoiser.flow_shift)
    x0 = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy, sigmas, target = objective.noisy_latents_and_target(x0, torch.Generator().manual_seed(2))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(noisy, sampling.noise_scaling(sigmas, noise, x0), atol=1e-6, rtol=0)
    torch.testing.assert_close(sampling.calculate_denoised(sigmas, target, noisy), x0, atol=1e-5, rtol=0)
    # the timestep the DiT is given is ComfyUI's: sigma (Flux) or 1000 sigma (SD3, Wan)
    multiplier = {"flux": 1.0, "sd3": 1000.0, "wan21": 1000.0}[family]
    torch.testing.assert_close(sampling.timestep(sigmas).float(), sigmas * multiplier)
    expected_shift = {"flux": math.exp(1.15), "sd3": 3.0, "wan21": 8.0}[family]
    assert denoiser.flow_shift == pytest.approx(expected_shift)


def moved_network(network, seed: int = 0):
    """Every factor well away from its init: the tiny DiTs (weights of std 0.02) damp small changes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(2.0 * parameter.std().nan_to_num(0.0).clamp(min=0.1)
                           * torch.randn(parameter.shape, generator=generator))
    return network.eval()


@pytest.mark.parametrize("algorithm", ["LoRA", "LoKr"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_file_loads_in_loraloader_to_the_networks_output(comfy, pack, tiny, family, algorithm, caplog):
    import comfy.model_management as mm
    import comfy.sd

    from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy
    from comfyui_lora_trainer.trainer.networks import LoRANetwork, NetworkConfig

    model, clip, _ = build(tiny, family)
    trainable = trainable_from_comfy(model, clip)
    torch.manual_seed(0)
    targets = trainable.lora_targets
    network = moved_network(LoRANetwork(targets, NetworkConfig(algorithm, rank=4, alpha=2.0).validated()))
    tensors = network.kohya_state_dict()
    latents, sigmas, context, pooled = inputs(trainable, clip)
    denoiser = trainable.denoiser
    with torch.no_grad():
        plain = denoiser(latents, sigmas, context, pooled)
        with network.attached(targets):
            ours = denoiser(latents, sigmas, context, pooled)
        with caplog.at_level(logging.WARNING):
            patched_model, _ = comfy.sd.load_lora_for_models(model, clip, tensors, 1.0, 1.0)
        assert "lora key not loaded" not in caplog.text and "NOT LOADED" not in caplog.text, caplog.text
        patched_weights = {key for key in patched_model.patches}
        assert len(patched_weights) == len(targets)
        patched_model.patch_model()
        try:
            theirs = denoiser(latents, sigmas, context, pooled)
        finally:
            patched_model.unpatch_model()
        mm.unload_all_models()
    assert (ours - plain).abs().max() > 1e-3, "the network hardly changes the output: the comparison means little"
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_training_the_text_encoder_of_a_flow_model_is_refused_by_name(comfy, pack, tiny):
    from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy
    from comfyui_lora_trainer.trainer.errors import ConfigError

    model, clip, _ = build(tiny, "flux")
    with pytest.raises(ConfigError, match="no text encoder to train"):
        trainable_from_comfy(model, clip).targets_for(False, train_unet=False, train_text_encoder=True)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_run_trains_each_family_from_its_own_vae_latents(comfy, pack, tiny, family, comfy_folders):
    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    # two captions of different token counts: a batch whose contexts differ in length (one forward per length
    # where the family's text is not padded to one length, as Qwen-Image's)
    root = make_kohya_folder(os.path.join(comfy_folders["input"], "set"), {"2_sks dog": [(64, 64), (64, 64)]},
                             {"2_sks dog/0": "a photo of sks dog",
                              "2_sks dog/1": "sks dog running on a long sandy beach at sunset, wide shot"})
    with torch.inference_mode():                          # as ComfyUI's executor runs loaders
        model, clip, vae = build(tiny, family)
        with torch.inference_mode(False):
            latents = cache_latents(load_dataset_folder(root), ComfyVAEEncoder(vae),
                                    BucketSettings((64, 64), 64, 64), vae_batch_size=2)
    assert {tuple(s.latent.shape) for s in latents.samples} == {(16, 8, 8)}
    unet = model.model.diffusion_model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.inference_mode():
        out = run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4), OptimizerConfig(learning_rate=1e-3),
                           TrainSettings(output_name=f"flow_{family}", epochs=2, batch_size=2,
                                         gradient_checkpointing=family in ("flux", "chroma", "wan21")))
    losses = out.result.progress.losses
    assert out.lora.tensors and any(v.abs().max() > 0 for k, v in out.lora.tensors.items()
                                    if k.endswith("lora_up.weight"))
    assert len(losses) == 2 * 2 and all(math.isfinite(x) for x in losses), losses
    assert out.lora.metadata["ss_base_model_version"] and "ss_timestep_sampling" in out.lora.metadata
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert not any(m._forward_hooks for m in unet.modules())
    assert len(out.model.patches) == len({k.split(".")[0] for k in out.lora.tensors})


@pytest.mark.parametrize("weight_dtype", [torch.float8_e4m3fn, torch.bfloat16], ids=["fp8_e4m3fn", "bf16"])
def test_flux_trains_on_comfyuis_fp8_and_bf16_weights_with_the_lora_in_fp32(comfy, pack, tiny, comfy_folders,
                                                                           weight_dtype, caplog):
    """The 24 GB-card setting: the base weights stay as UNETLoader's weight_dtype stored them (ComfyUI casts them
    for each layer's compute), only the LoRA trains, in fp32, and the file it writes loads back onto the same
    fp8/bf16 model in LoraLoader with every key taken."""
    import comfy.sd

    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    root = make_kohya_folder(os.path.join(comfy_folders["input"], "lowp"), {"2_sks dog": [(64, 64), (64, 64)]})
    with torch.inference_mode():
        model = tiny.flux_model(seed=3, weight_dtype=weight_dtype)
        clip, vae = tiny.flux_clip(seed=4), tiny.flow_vae(seed=5)
        with torch.inference_mode(False):
            latents = cache_latents(load_dataset_folder(root), ComfyVAEEncoder(vae),
                                    BucketSettings((64, 64), 64, 64), vae_batch_size=2)
    unet = model.model.diffusion_model
    assert {p.dtype for p in unet.parameters()} == {weight_dtype}
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.inference_mode():
        out = run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4), OptimizerConfig(learning_rate=1e-3),
                           TrainSettings(output_name="flux_lowp", epochs=2, batch_size=2, gradient_checkpointing=True))
    ups = [v for k, v in out.lora.tensors.items() if k.endswith("lora_up.weight")]
    assert ups and any(v.abs().max() > 0 for v in ups), "nothing trained"
    assert {v.dtype for v in out.result.tensors.values()} == {torch.float32}       # the LoRA trained in fp32
    assert all(math.isfinite(x) for x in out.result.progress.losses)
    assert {p.dtype for p in unet.parameters()} == {weight_dtype}, "the base weights were cast for training"
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(model, clip, out.lora.tensors, 1.0, 1.0)
    assert "lora key not loaded" not in caplog.text and "NOT LOADED" not in caplog.text, caplog.text
    assert len(patched.patches) == len({k.split(".")[0] for k in out.lora.tensors})


def test_fast_fp8_weights_are_refused_before_training_with_what_to_load_instead(comfy, pack, tiny):
    """weight_dtype fp8_e4m3fn_fast builds comfy.ops.fp8_ops layers, whose fp8 matmul has no training path."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models

    from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy
    from comfyui_lora_trainer.trainer.errors import ModelError

    config = comfy.supported_models.Flux(tiny.flux_unet_config())
    config.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
    config.custom_operations = comfy.ops.fp8_ops
    model = comfy.model_patcher.ModelPatcher(config.get_model({}), load_device=mm.get_torch_device(),
                                             offload_device=mm.unet_offload_device())
    with pytest.raises(ModelError, match="weight_dtype fp8_e4m3fn:"):
        trainable_from_comfy(model, tiny.flux_clip(seed=4))


@pytest.mark.parametrize("family", ["flux", "chroma"])
def test_only_flux_dev_gets_the_training_guidance_the_rest_keep_their_samplings_default(comfy, pack, tiny, family):
    """Flux dev's distilled-guidance input is guidance_scale; Chroma's is what its sampling gives it (ComfyUI's
    Chroma.extra_conds: 0), whatever guidance_scale says, so training and sampling see the same input."""
    from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy

    model, clip, _ = build(tiny, family)
    trainable = trainable_from_comfy(model, clip)
    latents, _, context, pooled = inputs(trainable, clip, batch=1)
    conds = trainable.denoiser.conditioning(latents, context, pooled, guidance=2.5)
    sampling_default = model.model.extra_conds(cross_attn=context, pooled_output=pooled, noise=latents,
                                               device=latents.device).get("guidance")
    if family == "flux":
        assert conds["guidance"].tolist() == [2.5]
    else:
        assert sampling_default is not None and torch.equal(conds["guidance"], sampling_default.cond)


def test_a_batch_of_captions_of_different_lengths_trains_each_on_its_own_text(comfy, pack, tiny, comfy_folders):
    """Qwen-Image's text has no padding, so two captions give contexts of two lengths: each sample is called
    with its own context (a tiled one would be another caption to a joint-attention DiT), and the batch's output
    is what each sample gives alone."""
    from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy
    from comfyui_lora_trainer.trainer.text_contexts import CaptionContexts

    model, clip, _ = build(tiny, "qwen_image")
    trainable = trainable_from_comfy(model, clip)
    captions = ["a photo of sks dog", "a photo of sks dog running on a long sandy beach at sunset, wide shot"]
    contexts = CaptionContexts(trainable.caption_encoder, [], torch.device("cpu"), seed=0)
    groups = contexts.groups(captions, tile=trainable.denoiser.tiles_contexts)
    assert [indices for indices, _ in groups] == [[0], [1]]
    latents, sigmas, _, _ = inputs(trainable, clip, batch=2)
    from comfyui_lora_trainer.trainer.loop import TrainStep

    step = TrainStep.__new__(TrainStep)              # only its predict(): the batch split by text and put back
    step.denoiser, step.model_inputs = trainable.denoiser, {}
    with torch.no_grad():
        together = step.predict(latents, sigmas, groups, None)
        alone = [trainable.denoiser(latents[i:i + 1], sigmas[i:i + 1], text.context, text.pooled)
                 for i, (_, text) in enumerate(groups)]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("change", [{"objective": {"min_snr_gamma": 5.0}}, {"torch_compile": True}],
                         ids=["min_snr_gamma", "torch_compile"])
def test_what_a_flow_run_refuses_stops_it_before_the_text_is_encoded(comfy, pack, tiny, comfy_folders, change):
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.errors import ConfigError
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents
    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.objective_settings import ObjectiveSettings
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    root = make_kohya_folder(os.path.join(comfy_folders["input"], "refused"), {"1_sks dog": [(64, 64)]})
    model, clip, vae = build(tiny, "flux")
    latents = cache_latents(load_dataset_folder(root), ComfyVAEEncoder(vae), BucketSettings((64, 64), 64, 64))
    encoded = []
    clip.encode_from_tokens = lambda *args, **kwargs: encoded.append(args) or pytest.fail("the text was encoded")
    settings = {"torch_compile": change.get("torch_compile", False),
                "objective": ObjectiveSettings(**change.get("objective", {}))}
    with pytest.raises(ConfigError, match="flow-matching"):
        run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4), OptimizerConfig(learning_rate=1e-3),
                     TrainSettings(output_name="refused", epochs=1, **settings))
    assert not encoded
    written = [os.path.join(folder, name) for folder, _, names in os.walk(comfy_folders["output"]) for name in names]
    assert written == []
