"""run_training on tiny real ComfyUI objects, called directly: what it leaves on the MODEL that came in."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import make_kohya_folder

WARMUP_PASSES = 3          # the plan's (trainer/preflight.py) forward and backward passes before step one


@pytest.fixture
def trained(comfy, pack, tiny, comfy_folders):
    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents

    root = make_kohya_folder(os.path.join(comfy_folders["input"], "set"), {"2_sks dog": [(64, 64), (64, 64)]})
    with torch.inference_mode():                          # as ComfyUI's executor runs loaders
        model, clip, vae = tiny.sd15_model(seed=11), tiny.sd1_clip(seed=12), tiny.vae(seed=13)
        with torch.inference_mode(False):
            latents = cache_latents(load_dataset_folder(root), ComfyVAEEncoder(vae), BucketSettings((64, 64), 64, 64))
    return model, clip, latents


def run(model, clip, latents, **settings):
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    with torch.inference_mode():
        return run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4), OptimizerConfig(learning_rate=1e-3),
                            TrainSettings(**{"output_name": "inproc", "epochs": 2, **settings}))


def test_incoming_model_is_left_as_it_was(trained, comfy_folders):
    model, clip, latents = trained
    unet = model.model.diffusion_model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    flags = {k: p.requires_grad for k, p in unet.named_parameters()}
    out = run(model, clip, latents)
    assert not model.patches and not clip.patcher.patches            # the input carries no LoRA
    assert len(out.model.patches) == 84                              # the output carries all of it
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: p.requires_grad for k, p in unet.named_parameters()} == flags
    assert not any(m._forward_hooks for m in unet.modules())
    assert os.listdir(comfy_folders["loras"]) == []                  # Train saves nothing unless asked


def test_second_run_with_same_name_gets_a_new_name(trained, comfy_folders):
    model, clip, latents = trained
    first = run(model, clip, latents, epochs=1)
    second = run(model, clip, latents, epochs=1)
    assert (first.lora.run_name, second.lora.run_name) == ("inproc", "inproc_2")


def test_epoch_saves_use_kohya_names(trained, comfy_folders):
    model, clip, latents = trained
    run(model, clip, latents, epochs=3, save_every_n_epochs=1)
    # kohya: every N epochs except the last, which the final save covers
    assert sorted(os.listdir(comfy_folders["loras"])) == ["inproc-000001.safetensors", "inproc-000002.safetensors"]


def test_the_family_comes_from_the_model_and_others_are_refused_clearly(comfy, pack, tiny):
    import comfy.model_sampling
    import comfy.supported_models

    from comfyui_lora_trainer.nodes.comfy_model import model_family, prediction_type_of
    from comfyui_lora_trainer.trainer.errors import ModelError

    sd15 = tiny.sd15_model(randomize=False)
    assert model_family(sd15).version == "sd_v1"
    assert model_family(tiny.model_on(comfy.supported_models.SDXL, tiny.sdxl_unet_config(), "meta")).version == \
        "sdxl_base_v1-0"
    assert model_family(tiny.model_on(comfy.supported_models.SD20, tiny.sd2_unet_config(), "meta")).version == "sd_v2"

    refiner = tiny.model_on(comfy.supported_models.SDXLRefiner, {**tiny.sdxl_unet_config(), "adm_in_channels": 2560},
                            "meta")
    with pytest.raises(ModelError, match="SD1.x, SD2.x, SDXL and flow-matching models .* this MODEL is SDXLRefiner"):
        model_family(refiner)
    inpainting = tiny.model_on(comfy.supported_models.SD15, {**tiny.sd15_unet_config(), "in_channels": 9}, "meta")
    with pytest.raises(ModelError, match="9 input channels"):
        model_family(inpainting)

    class VPrediction(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
        pass

    v_model = sd15.clone()                 # what the ModelSamplingDiscrete node does for v_prediction
    v_model.add_object_patch("model_sampling", VPrediction(sd15.model.model_config))
    assert model_family(v_model).version == "sd_v1"
    assert prediction_type_of(v_model.get_model_object("model_sampling")) == "v_prediction"


def test_sdxl_trains_unet_and_both_text_encoders_and_loraloader_takes_every_key(comfy, pack, tiny, comfy_folders,
                                                                               caplog):
    import logging
    import sys

    import comfy.model_management as mm
    import comfy.sd

    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents
    from comfyui_lora_trainer.trainer.lora_file import read_metadata, save_lora
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.networks.continue_from import read_lora_tensors
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    root = make_kohya_folder(os.path.join(comfy_folders["input"], "xl"), {"2_sks dog": [(64, 64), (128, 64)]},
                             {"2_sks dog/0": "a photo of sks dog", "2_sks dog/1": "sks dog on grass"})
    with torch.inference_mode():
        model, clip, vae = tiny.sdxl_model(seed=21), tiny.sdxl_clip(seed=22), tiny.vae(seed=23)
        with torch.inference_mode(False):
            latents = cache_latents(load_dataset_folder(root, flip_aug=True), ComfyVAEEncoder(vae),
                                    BucketSettings((64, 64), 64, 128, 64))
        out = run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4, train_on="both"),
                           OptimizerConfig(learning_rate=1e-3, text_encoder_lr=1e-3),
                           TrainSettings(output_name="xl", epochs=2, batch_size=2))
    names = {key.split(".")[0] for key in out.lora.tensors}
    assert {name.split("_")[1] for name in names} == {"te1", "te2", "unet"}
    assert len([n for n in names if n.startswith("lora_te1_")]) == 3 * 6 and \
        len([n for n in names if n.startswith("lora_te2_")]) == 3 * 6
    moved = {name.split("_")[1] for name in names if out.lora.tensors[f"{name}.lora_up.weight"].abs().max() > 0}
    assert moved == {"te1", "te2", "unet"}, "a part did not train"
    assert out.lora.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert out.lora.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"

    path = save_lora(out.lora, comfy_folders["loras"], "xl", precision="fp32")
    assert read_metadata(path)["ss_text_encoder_lr"] == "0.001"
    predict = sys.modules["lora_trainer_test_tiny_models"].ComparePredictions.predict
    with caplog.at_level(logging.WARNING):
        patched, patched_clip = comfy.sd.load_lora_for_models(model, clip, read_lora_tensors(path), 1.0, 1.0)
    assert "lora key not loaded" not in caplog.text, caplog.text
    with torch.inference_mode():
        loaded, trained, base = predict(patched), predict(out.model), predict(model)
        tokens = clip.tokenize("a photo of sks dog")
        text_loaded = patched_clip.encode_from_tokens(tokens)
        text_trained = out.clip.encode_from_tokens(tokens)
    mm.unload_all_models()
    assert (trained - base).abs().max() > 1e-4
    assert (trained - loaded).abs().max() <= 1e-5
    assert (text_trained - text_loaded).abs().max() <= 1e-5


def test_sd2_v_prediction_trains_as_v_prediction_and_says_so(comfy, pack, tiny, comfy_folders, trained):
    import sys

    import comfy.model_management as mm
    import comfy.sd

    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.lora_file import save_lora
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.networks.continue_from import read_lora_tensors
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    _, _, latents = trained
    with torch.inference_mode():
        model, clip = tiny.sd2_model(seed=31), tiny.sd2_clip(seed=32)
        out = run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4, train_on="both"),
                           OptimizerConfig(learning_rate=1e-3), TrainSettings(output_name="v2", epochs=1))
    metadata = out.lora.metadata
    assert metadata["ss_base_model_version"] == "sd_v2" and metadata["ss_v2"] == "True"
    assert metadata["modelspec.prediction_type"] == "v"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert any(name.startswith("lora_te_text_model_encoder_layers_") for name in out.lora.tensors)
    path = save_lora(out.lora, comfy_folders["loras"], "v2", precision="fp32")
    predict = sys.modules["lora_trainer_test_tiny_models"].ComparePredictions.predict
    patched, _ = comfy.sd.load_lora_for_models(model, clip, read_lora_tensors(path), 1.0, 1.0)
    with torch.inference_mode():
        loaded, trained_out, base = predict(patched), predict(out.model), predict(model)
    mm.unload_all_models()
    assert (trained_out - base).abs().max() > 1e-4 and (trained_out - loaded).abs().max() <= 1e-5


def test_a_dynamic_vram_model_trains_on_its_regular_delegate(trained, comfy_folders, tiny):
    """ComfyUI 0.4+ on NVIDIA GPUs hands out ModelPatcherDynamic, whose weights live in reusable VRAM slots
    (CPUs get a plain ModelPatcher, so the dynamic patcher is stood in for here): Train must run the forward
    and backward passes on the non-dynamic delegate, and still hand back the MODEL it got, with the LoRA."""
    model, clip, latents = trained
    with torch.inference_mode():
        delegate = tiny.sd15_model(seed=11)                  # what the loader's factory rebuilds: same weights
    calls = {"dynamic": 0, "delegate": 0}
    model.model.diffusion_model.register_forward_pre_hook(lambda *_: calls.__setitem__("dynamic", calls["dynamic"] + 1))
    delegate.model.diffusion_model.register_forward_pre_hook(
        lambda *_: calls.__setitem__("delegate", calls["delegate"] + 1))
    model.is_dynamic = lambda: True
    model.get_non_dynamic_delegate = lambda: delegate
    out = run(model, clip, latents, epochs=1)
    # every step's forward, after the plan's warm-up passes
    assert calls == {"dynamic": 0, "delegate": WARMUP_PASSES + out.result.progress.step} and calls["delegate"] > 0
    assert len(out.model.patches) == 84 and not model.patches      # patches go on a clone of the MODEL given


def test_a_dynamic_vram_model_without_a_delegate_is_refused_with_the_way_out(trained, comfy_folders):
    from comfyui_lora_trainer.trainer.errors import ModelError

    model, clip, latents = trained

    def no_factory():
        raise RuntimeError("Cannot create non-dynamic delegate: cached_patcher_init is not initialized.")

    model.is_dynamic, model.get_non_dynamic_delegate = (lambda: True), no_factory
    with pytest.raises(ModelError, match="--disable-dynamic-vram"):
        run(model, clip, latents, epochs=1)


def test_a_linked_dataset_folder_input_always_rereads_the_folder(pack):
    import math

    from comfyui_lora_trainer.nodes.load_dataset import LoRALoadDatasetFolder

    # the executor fingerprints before upstream nodes ran, so a linked input is None here
    assert math.isnan(LoRALoadDatasetFolder.fingerprint_inputs(None, ".txt"))


def test_the_vae_leaves_the_device_once_caching_is_done(comfy, pack, tiny):
    import comfy.model_management as mm

    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder

    with torch.inference_mode():
        vae, other = tiny.vae(seed=21), tiny.vae(seed=22)
        encoder = ComfyVAEEncoder(vae)
        encoder.encode(torch.rand(1, 64, 64, 3))
        other.encode(torch.rand(1, 64, 64, 3))
    assert any(loaded.model is vae.patcher for loaded in mm.current_loaded_models)
    encoder.release()
    assert not any(loaded.model is vae.patcher for loaded in mm.current_loaded_models)
    assert any(loaded.model is other.patcher for loaded in mm.current_loaded_models)   # others stay


CONTINUE_CASES = {"LoRA": {}, "LoCon": dict(algorithm="LoCon"), "LoHa": dict(algorithm="LoHa"),
                  "LoKr": dict(algorithm="LoKr", decompose_both=True, rank=2), "DyLoRA": dict(algorithm="DyLoRA"),
                  "DoRA": dict(dora=True), "LoRA with text encoder": dict(train_on="both")}


@pytest.mark.parametrize("algorithm", list(CONTINUE_CASES))
def test_continuing_from_a_file_starts_where_loraloader_puts_the_model(trained, comfy_folders, tiny, algorithm):
    """Before the first step, the continued network's output equals the file applied by ComfyUI's LoraLoader
    (so the trained network and ComfyUI's reading of its file agree, for each algorithm)."""
    import sys

    import comfy.model_management as mm
    import comfy.sd

    from comfyui_lora_trainer.nodes.comfy_model import trainable_from_comfy
    from comfyui_lora_trainer.trainer.lora_file import save_lora
    from comfyui_lora_trainer.trainer.networks import LoRANetwork, NetworkConfig
    from comfyui_lora_trainer.trainer.networks.continue_from import continue_from_file, read_lora_tensors

    model, clip, latents = trained
    config = NetworkConfig(**{"rank": 4, "alpha": 4, "conv_rank": 2, "conv_alpha": 1, **CONTINUE_CASES[algorithm]})
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    with torch.inference_mode():
        out = run_training(model, clip, latents, config, OptimizerConfig(learning_rate=1e-3),
                           TrainSettings(output_name="continue", epochs=1))
    path = save_lora(out.lora, comfy_folders["loras"], "continue", precision="fp32")
    predict = sys.modules["lora_trainer_test_tiny_models"].ComparePredictions.predict

    with torch.inference_mode(False), torch.no_grad():
        trainable = trainable_from_comfy(model, clip)
        targets = trainable.targets_for(config.uses_convolutions, config.train_unet, config.train_text_encoder)
        network = LoRANetwork(targets, NetworkConfig(**{**config.__dict__, "continue_from": path})).eval()
        continue_from_file(network, path, set(trainable.conv_targets))
        with network.attached(targets):
            continued = predict(model)
        base = predict(model)
    patched, _ = comfy.sd.load_lora_for_models(model, clip, read_lora_tensors(path), 1.0, 1.0)
    with torch.inference_mode():
        loaded = predict(patched)
    patched.unpatch_model()
    mm.unload_all_models()
    assert (continued - base).abs().max() > 1e-4                    # the file does change the model
    assert (continued - loaded).abs().max() <= 1e-5


def test_the_base_checkpoint_is_found_through_the_prompt_graph(pack):
    from comfyui_lora_trainer.nodes.base_model import base_model_file

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/v1-5.safetensors"}},
        "2": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "eps"}},
        "3": {"class_type": "LoRATrain", "inputs": {"model": ["2", 0], "clip": ["1", 1]}},
        "4": {"class_type": "LoRASaveSafetensors", "inputs": {"lora": ["3", 2]}},
        "5": {"class_type": "LoRASaveSafetensors", "inputs": {"lora": ["6", 0]}},
        "6": {"class_type": "SomethingElse", "inputs": {}},
    }
    assert base_model_file(prompt, "4") == "checkpoints/sd15/v1-5.safetensors"
    assert base_model_file(prompt, "5") is None and base_model_file(None, "4") is None


def test_long_captions_are_cut_to_kohyas_max_token_length(comfy, pack, tiny):
    from comfyui_lora_trainer.nodes.comfy_model import ComfyCaptionEncoder

    clip = tiny.sd1_clip()
    caption = " ".join(f"word{i}" for i in range(200))        # well over 150 tokens
    lengths = {}
    with torch.inference_mode():
        for max_tokens in (75, 150, 225):
            lengths[max_tokens] = ComfyCaptionEncoder(clip, max_token_length=max_tokens).encode(caption).shape[1]
    assert lengths == {75: 77, 150: 154, 225: 231}            # ComfyUI's 77-token chunks, as many as allowed


def test_gradient_checkpointing_on_comfyuis_unet_trains_the_same_lora(trained, comfy_folders):
    model, clip, latents = trained
    plain = run(model, clip, latents, output_name="plain", epochs=1)
    checkpointed = run(model, clip, latents, output_name="checkpointed", epochs=1, gradient_checkpointing=True)
    assert checkpointed.result.progress.losses == plain.result.progress.losses
    for key, value in plain.lora.tensors.items():
        torch.testing.assert_close(checkpointed.lora.tensors[key], value, atol=1e-6, rtol=1e-5)
    assert checkpointed.lora.metadata["ss_gradient_checkpointing"] == "True"
    unet = model.model.diffusion_model
    assert all("forward" not in vars(module) for module in unet.modules()), "a block kept its wrapper"


def test_comfyuis_unet_compiled_and_channels_last_train_the_same_lora(trained, comfy_folders):
    """torch.compile traces ComfyUI's forward with the LoRA hooks and the SDPA override inside (aot_eager: the
    same tracing as inductor, no C++ compiler); channels_last gives ComfyUI's weights back as they were."""
    model, clip, latents = trained
    unet = model.model.diffusion_model
    plain = run(model, clip, latents, output_name="plain", epochs=1)
    weights = {name: p.data_ptr() for name, p in unet.named_parameters()}    # inference tensors replaced by now
    compiled = run(model, clip, latents, output_name="compiled", epochs=1, torch_compile=True,
                   dynamo_backend="aot_eager")
    nhwc = run(model, clip, latents, output_name="nhwc", epochs=1, channels_last=True)
    assert "torch.compile (aot_eager)" in compiled.summary and "channels-last" in nhwc.summary
    for other in (compiled, nhwc):
        for key, value in plain.lora.tensors.items():
            torch.testing.assert_close(other.lora.tensors[key], value, atol=1e-4, rtol=1e-3)
    assert {name: p.data_ptr() for name, p in unet.named_parameters()} == weights
    assert all(p.is_contiguous() for p in unet.parameters())


def test_loss_and_noise_options_reach_the_step_and_the_file(trained, comfy_folders):
    """kohya's options change the run (min-SNR on a v-prediction-independent epsilon model, noise offset,
    huber) and are recorded as kohya records them; zero terminal SNR on an epsilon model is refused by name."""
    from comfyui_lora_trainer.trainer.errors import ConfigError
    from comfyui_lora_trainer.trainer.objective_settings import ObjectiveSettings

    model, clip, latents = trained
    plain = run(model, clip, latents, output_name="plain", epochs=1)
    options = ObjectiveSettings(loss_type="huber", min_snr_gamma=5.0, noise_offset=0.1, min_timestep=100)
    tuned = run(model, clip, latents, output_name="tuned", epochs=1, objective=options)
    assert tuned.result.progress.losses != plain.result.progress.losses
    metadata = tuned.lora.metadata
    assert (metadata["ss_loss_type"], metadata["ss_min_snr_gamma"], metadata["ss_noise_offset"]) == \
        ("huber", "5.0", "0.1")
    assert metadata["modelspec.timestep_range"] == "100,1000" and "min-SNR gamma 5" in tuned.summary
    assert plain.lora.metadata["ss_min_snr_gamma"] == "None" and plain.lora.metadata["ss_loss_type"] == "l2"
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        run(model, clip, latents, output_name="zsnr", epochs=1, objective=ObjectiveSettings(zero_terminal_snr=True))


def test_step_saves_keep_the_last_n_with_their_states_and_resume_to_the_same_lora(trained, comfy_folders):
    """Each intermediate save writes the LoRA, a resumable state and the run log, so a run killed after a save
    continues from it: resuming from the newest one gives the uninterrupted run's final weights."""
    import json

    from comfyui_lora_trainer.nodes.comfy_host import run_data_folder
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    model, clip, latents = trained                     # 4 batches per epoch at batch 1
    whole = run(model, clip, latents, output_name="steps", epochs=2, save_every_n_steps=2, keep_last_n=2)
    assert sorted(os.listdir(comfy_folders["loras"])) == ["steps-step00000004.safetensors",
                                                          "steps-step00000006.safetensors"]
    folder = run_data_folder("steps")
    assert sorted(name for name in os.listdir(folder) if name.startswith("state-")) == \
        ["state-00000004", "state-00000006"]
    with open(os.path.join(folder, "run.json"), encoding="utf-8") as handle:
        log = json.load(handle)
    assert log["status"] == "finished" and [os.path.basename(p) for p, _ in log["saves"]] == \
        ["steps-step00000004.safetensors", "steps-step00000006.safetensors"]

    log["status"] = "running"                         # as the log read when the server died after step 6's save
    with open(os.path.join(folder, "run.json"), "w", encoding="utf-8") as handle:
        json.dump(log, handle)
    with torch.inference_mode():
        resumed = run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4),
                               OptimizerConfig(learning_rate=1e-3),
                               TrainSettings(output_name="steps", epochs=2, save_every_n_steps=2, keep_last_n=2),
                               resume_from="steps")
    assert resumed.result.progress.losses == whole.result.progress.losses
    assert all(torch.equal(resumed.lora.tensors[k], whole.lora.tensors[k]) for k in whole.lora.tensors)


def test_a_model_loaded_in_fp8_trains_with_its_weights_left_in_fp8(comfy, pack, tiny, trained, comfy_folders):
    """kohya's fp8_base: the base weights stay in the precision ComfyUI loaded them (float8 here, computed
    through ComfyUI's manual cast), the LoRA trains in fp32."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    _, clip, latents = trained
    with torch.inference_mode():
        config = comfy.supported_models.SD15(tiny.sd15_unet_config(context_dim=32, tiny=True))
        config.unet_config["num_heads"] = 2
        config.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
        base = config.get_model({})
        tiny.randomize_(base.diffusion_model, 41)
        model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                                 offload_device=mm.unet_offload_device())
        before = {k: v.clone() for k, v in base.diffusion_model.state_dict().items()}
        out = run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4), OptimizerConfig(learning_rate=1e-3),
                           TrainSettings(output_name="fp8", epochs=1))
    weights = base.diffusion_model.state_dict()
    assert any(v.dtype == torch.float8_e4m3fn for v in weights.values())
    assert all(v.dtype == before[k].dtype and torch.equal(v.float(), before[k].float()) for k, v in weights.items())
    assert all(torch.isfinite(torch.tensor(out.result.progress.losses)))
    assert all(t.dtype == torch.float32 for t in out.lora.tensors.values())
    assert out.lora.metadata["ss_fp8_base"] == "True"


def test_validation_loss_goes_to_the_run_log_the_files_and_the_graph(trained, comfy_folders, tiny, comfy):
    import json

    from comfyui_lora_trainer.nodes.comfy_host import run_data_folder
    from comfyui_lora_trainer.nodes.comfy_model import ComfyVAEEncoder
    from comfyui_lora_trainer.nodes.train import run_training
    from comfyui_lora_trainer.trainer.dataset import load_dataset_folder
    from comfyui_lora_trainer.trainer.dataset.buckets import BucketSettings
    from comfyui_lora_trainer.trainer.latent_cache import cache_latents
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings
    from comfyui_lora_trainer.trainer.validation import ValidationSettings

    model, clip, latents = trained
    root = make_kohya_folder(os.path.join(comfy_folders["input"], "val"), {"1_sks dog": [(64, 64)] * 2})
    with torch.inference_mode():
        vae = tiny.vae(seed=13)
        with torch.inference_mode(False):
            held_out = cache_latents(load_dataset_folder(root), ComfyVAEEncoder(vae), BucketSettings((64, 64), 64, 64))
        settings = TrainSettings(output_name="val", epochs=2, save_every_n_epochs=1,
                                 validation=ValidationSettings(every_n_steps=3))
        out = run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4), OptimizerConfig(learning_rate=1e-3),
                           settings, validation_latents=held_out)
        plain = run_training(model, clip, latents, NetworkConfig(rank=4, alpha=4), OptimizerConfig(learning_rate=1e-3),
                             TrainSettings(output_name="noval", epochs=2))
    assert [step for step, _ in out.result.progress.validation_losses] == [3, 4, 6, 8]
    assert all(torch.equal(out.lora.tensors[k], plain.lora.tensors[k]) for k in plain.lora.tensors)
    with open(os.path.join(run_data_folder("val"), "run.json"), encoding="utf-8") as handle:
        assert [step for step, _ in json.load(handle)["validation_losses"]] == [3, 4, 6, 8]
    assert out.lora.metadata["ss_num_validation_images"] == "2"
    assert float(out.lora.metadata["ss_validation_loss"]) == out.result.progress.validation_losses[-1][1]
    from safetensors import safe_open
    with safe_open(os.path.join(comfy_folders["loras"], "val-000001.safetensors"), "pt") as handle:
        assert handle.metadata()["ss_validation_loss_step"] == "4"      # the epoch save carries the epoch's value
    assert out.loss_image.shape == plain.loss_image.shape


def test_previews_render_with_the_lora_so_far_and_leave_the_run_as_it_was(trained, comfy_folders, tiny):
    from PIL import Image

    from comfyui_lora_trainer.nodes.comfy_host import run_data_folder
    from comfyui_lora_trainer.nodes.train import PreviewSettings, run_training
    from comfyui_lora_trainer.trainer.errors import ConfigError
    from comfyui_lora_trainer.trainer.networks import NetworkConfig
    from comfyui_lora_trainer.trainer.optim import OptimizerConfig
    from comfyui_lora_trainer.trainer.plan import TrainSettings

    model, clip, latents = trained
    prompts = "a photo of sks dog --s 2 --d 1\nsks dog on grass --n blurry --w 128 --h 64 --s 2 --l 3"
    with torch.inference_mode():
        vae = tiny.vae(seed=13)
        args = (model, clip, latents, NetworkConfig(rank=4, alpha=4, network_dropout=0.1),
                OptimizerConfig(learning_rate=1e-3))
        previewed = run_training(*args, TrainSettings(output_name="previews", epochs=2, sample_every_n_steps=4),
                                 previews=PreviewSettings(vae, prompts))
        plain = run_training(*args, TrainSettings(output_name="plain", epochs=2))
        with pytest.raises(ConfigError, match="need the VAE"):
            run_training(*args, TrainSettings(output_name="x", epochs=1, sample_every_n_epochs=1),
                         previews=PreviewSettings(None, prompts))
    samples = sorted(os.listdir(os.path.join(run_data_folder("previews"), "samples")))
    assert samples == ["step00000004_00.png", "step00000004_01.png", "step00000008_00.png", "step00000008_01.png"]
    with Image.open(os.path.join(run_data_folder("previews"), "samples", "step00000004_01.png")) as image:
        assert image.size == (128, 64)                                  # --w / --h
    assert previewed.result.progress.losses == plain.result.progress.losses
    assert all(torch.equal(previewed.lora.tensors[k], plain.lora.tensors[k]) for k in plain.lora.tensors)
    assert "4 preview image(s)" in previewed.summary


def test_out_of_memory_mid_run_keeps_the_work_and_leaves_the_model_as_it_came(trained, comfy_folders, monkeypatch):
    """An exception inside training (out of memory here, raised by the model at the third step): the state
    and the LoRA so far are written first, the error names what to change, the incoming MODEL is unchanged."""
    import sys

    from comfyui_lora_trainer.nodes import comfy_model
    from comfyui_lora_trainer.nodes.comfy_host import run_data_folder
    from comfyui_lora_trainer.trainer.errors import TrainerError

    model, clip, latents = trained
    predict = sys.modules["lora_trainer_test_tiny_models"].ComparePredictions.predict
    with torch.inference_mode():
        before = predict(model)
    calls = {"n": 0}
    real_call = comfy_model.ComfyDenoiser.__call__

    def running_out(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == WARMUP_PASSES + 3:             # step 3's forward, after the plan's warm-up passes
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(comfy_model.ComfyDenoiser, "__call__", running_out)
    with pytest.raises(TrainerError, match="Out of memory at step 3") as info:
        run(model, clip, latents, output_name="oom", epochs=2)
    assert "gradient_checkpointing" in str(info.value) and "batch_size" in str(info.value)
    assert "oom-interrupted.safetensors" in os.listdir(comfy_folders["loras"])
    assert any(name.startswith("state-00000002") for name in os.listdir(run_data_folder("oom")))
    monkeypatch.setattr(comfy_model.ComfyDenoiser, "__call__", real_call)
    with torch.inference_mode():
        assert torch.equal(predict(model), before)


def test_the_unet_is_loaded_with_room_for_what_training_adds(trained, comfy_folders, monkeypatch):
    """ComfyUI's memory manager is asked to keep free the LoRA's weights, gradients and optimizer moments and
    the activations of the largest batch (ComfyUI's own forward estimate x 4, or x 1 with checkpointing)."""
    import comfy.model_management as mm

    from comfyui_lora_trainer.trainer.memory import ACTIVATIONS_KEPT, LORA_BYTES_PER_PARAMETER

    model, clip, latents = trained
    asked = []
    real = mm.load_models_gpu

    def recording(models, memory_required=0, **kwargs):
        if any(m is model for m in models):               # the UNet's load (CLIP loads itself to encode)
            asked.append(memory_required)
        return real(models, memory_required=memory_required, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", recording)
    out = run(model, clip, latents, output_name="memory", epochs=1, batch_size=2)
    parameters = sum(t.numel() for k, t in out.lora.tensors.items() if not k.endswith(".alpha"))
    forward = model.model.memory_required((2, 4, 8, 8))                 # 64x64 buckets, batch 2
    assert asked[0] == parameters * LORA_BYTES_PER_PARAMETER + int(forward * ACTIVATIONS_KEPT + 0.999999)
    asked.clear()
    run(model, clip, latents, output_name="memory_checkpointed", epochs=1, batch_size=2, gradient_checkpointing=True)
    assert asked[0] == parameters * LORA_BYTES_PER_PARAMETER + int(forward + 0.999999)


def test_dora_starts_from_the_model_as_comfyui_patched_it(trained, comfy_folders):
    """A MODEL that already carries a LoRA (LoraLoader before Train): DoRA's magnitude is taken from the weights
    after ComfyUI applied that patch, so a fresh DoRA changes nothing before its first step."""
    import comfy.model_management as mm

    from comfyui_lora_trainer.nodes.comfy_model import apply_lora_patches, trainable_from_comfy
    from comfyui_lora_trainer.trainer.networks import LoRANetwork, NetworkConfig

    model, clip, latents = trained
    first = run(model, clip, latents, output_name="upstream", epochs=1)
    upstream = {k: (v * 50 if k.endswith("lora_up.weight") else v) for k, v in first.lora.tensors.items()}
    patched, patched_clip = apply_lora_patches(model, clip, upstream)
    with torch.inference_mode(False), torch.no_grad():
        trainable = trainable_from_comfy(patched, patched_clip)
        targets = trainable.targets_for(False)
        network = LoRANetwork(targets, NetworkConfig(rank=4, dora=True))
        trainable.prepare(False, 0)                   # ComfyUI patches the weights here
        network.start_from_loaded_weights()
        worst = max(float(m.delta_weight().abs().max()) for m in network.lora_modules.values())
    mm.unload_all_models()
    assert worst < 1e-5, worst
