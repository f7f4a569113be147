import math

import pytest
import torch

from tests.helpers import make_kohya_folder
from trainer.dataset.buckets import BucketSettings
from trainer.dataset import load_dataset_folder
from trainer.latent_cache import cache_latents
from trainer.loop import TrainCallbacks, train_lora
from trainer.errors import ConfigError
from trainer.networks import NetworkConfig
from trainer.optim import OptimizerConfig
from trainer.plan import TrainSettings


def small_cache(tmp_path, encoder):
    root = make_kohya_folder(str(tmp_path / "data"), {"2_sks dog": [(64, 64), (64, 64), (128, 64)]},
                             {"2_sks dog/0": "a photo of sks dog"})
    dataset = load_dataset_folder(root)
    return cache_latents(dataset, encoder, BucketSettings((64, 64), 64, 128, 64))


def test_training_moves_lora_and_keeps_base(tmp_path, tiny_trainable, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    base_before = {k: v.clone() for k, v in tiny_trainable.frozen_root.state_dict().items()}
    flags_before = [p.requires_grad for p in tiny_trainable.frozen_root.parameters()]
    steps = []
    result = train_lora(tiny_trainable, cache, NetworkConfig(rank=4, alpha=2),
                        OptimizerConfig(learning_rate=1e-3, scheduler="constant", warmup_ratio=0.0),
                        TrainSettings(epochs=2, batch_size=2, seed=3),
                        TrainCallbacks(on_step=lambda p, total: steps.append((p.step, total))))
    # buckets: 64x64 has 2 images x 2 repeats = 4 -> 2 batches; 128x64 has 2 -> 1 batch; 3 per epoch
    assert result.plan.batches_per_epoch == 3 and result.plan.total_steps == 6
    assert steps[-1] == (6, 6)
    assert all(torch.isfinite(torch.tensor(result.progress.losses)))
    ups = [v for k, v in result.tensors.items() if k.endswith("lora_up.weight")]
    assert any(u.abs().max() > 0 for u in ups), "lora_up stayed at its zero init: nothing trained"
    for key, value in tiny_trainable.frozen_root.state_dict().items():
        assert torch.equal(value, base_before[key]), key
    assert [p.requires_grad for p in tiny_trainable.frozen_root.parameters()] == flags_before
    # hooks are gone: the model's output is the base output again
    assert all(not m._forward_hooks for m in tiny_trainable.lora_targets.values())


class Cancelled(Exception):
    pass


def cancel_at_check(n: int):
    """A check_cancel that cancels at its n-th call (the start of step n: n - 1 steps are done)."""
    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if calls["n"] == n:
            raise Cancelled()

    return check


def cancelled_state(tmp_path, cache, args, at_check: int):
    """Run `args` (network, optimizer, settings), cancel at the given check, and load the state it kept."""
    from trainer.resume import latest_state_folder, load_state, save_state, state_folder_name

    def keep(progress, state, exc):
        save_state(str(tmp_path / "run" / state_folder_name(state.step)), state)

    with pytest.raises(Cancelled):
        train_lora(fresh_model(), cache, *args, TrainCallbacks(check_cancel=cancel_at_check(at_check), on_abort=keep))
    return load_state(latest_state_folder(str(tmp_path / "run")))


def test_cancel_hands_the_partial_lora_to_on_abort_then_raises(tmp_path, tiny_trainable, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    calls = {"checks": 0}
    kept = {}

    def check_cancel():
        calls["checks"] += 1
        if calls["checks"] == 3:
            raise Cancelled()

    def on_abort(progress, state, exc):
        kept.update(step=progress.step, tensors=state.network, exc=exc)

    with pytest.raises(Cancelled):
        train_lora(tiny_trainable, cache, NetworkConfig(rank=4), OptimizerConfig(learning_rate=1e-2),
                   TrainSettings(epochs=5, batch_size=1),
                   TrainCallbacks(check_cancel=check_cancel, on_abort=on_abort))
    assert kept["step"] == 2 and isinstance(kept["exc"], Cancelled)
    assert any(t.abs().max() > 0 for k, t in kept["tensors"].items() if k.endswith("lora_up.weight"))
    assert all(not m._forward_hooks for m in tiny_trainable.lora_targets.values())


def test_same_seed_same_run(tmp_path, tiny_vae_encoder):
    from tests.engine.conftest import HashedWordEncoder, tiny_unet
    from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable

    cache = small_cache(tmp_path, tiny_vae_encoder)
    runs = []
    for _ in range(2):
        model = diffusers_sd1_trainable(tiny_unet(), FunctionCaptionEncoder(HashedWordEncoder()))
        runs.append(train_lora(model, cache, NetworkConfig(rank=2), OptimizerConfig(learning_rate=1e-3),
                               TrainSettings(epochs=1, seed=5)))
    assert runs[0].progress.losses == runs[1].progress.losses
    assert all(torch.equal(runs[0].tensors[k], runs[1].tensors[k]) for k in runs[0].tensors)


def test_steps_and_epochs_as_kohya_means_them_and_lr_follows_the_schedule(tmp_path, tiny_trainable,
                                                                          tiny_vae_encoder):
    from trainer.plan import plan_run

    cache = small_cache(tmp_path, tiny_vae_encoder)                     # 6 steps per epoch at batch 1
    overridden = plan_run(cache, TrainSettings(epochs=3, max_steps=8, batch_size=1))
    assert overridden.total_steps == 18 and "max_steps 8 not used" in overridden.describe()
    with pytest.raises(ConfigError, match="both 0"):
        TrainSettings(epochs=0, max_steps=0).validated()
    result = train_lora(tiny_trainable, cache, NetworkConfig(rank=2),
                        OptimizerConfig(learning_rate=1e-3, scheduler="cosine", warmup_ratio=0.25),
                        TrainSettings(epochs=0, max_steps=8, batch_size=1))
    assert result.plan.total_steps == 8 and result.progress.step == 8 and result.plan.epochs == 2
    lrs = result.progress.learning_rates
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-3) and lrs[-1] < lrs[3]


def test_divergence_stops_with_the_last_finite_lora(tmp_path, tiny_trainable, tiny_vae_encoder):
    from trainer.errors import TrainerError

    cache = small_cache(tmp_path, tiny_vae_encoder)
    kept = {}
    with pytest.raises(TrainerError, match="became") as info:
        train_lora(tiny_trainable, cache, NetworkConfig(rank=4, alpha=4),
                   OptimizerConfig(learning_rate=1e8, scheduler="constant", warmup_ratio=0.0, max_grad_norm=0.0),
                   TrainSettings(epochs=50, batch_size=1),
                   TrainCallbacks(on_abort=lambda progress, state, exc: kept.update(tensors=state.network)))
    assert "previous step was kept" in str(info.value)
    assert kept and all(torch.isfinite(t).all() for t in kept["tensors"].values())


def test_fp16_model_trains_with_loss_scaling(tmp_path, tiny_vae_encoder):
    from tests.engine.conftest import HashedWordEncoder, tiny_unet
    from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable

    cache = small_cache(tmp_path, tiny_vae_encoder)
    model = diffusers_sd1_trainable(tiny_unet().half(), FunctionCaptionEncoder(HashedWordEncoder()))
    result = train_lora(model, cache, NetworkConfig(rank=2), OptimizerConfig(learning_rate=1e-3),
                        TrainSettings(epochs=1, precision="fp32"))
    assert result.precision == "fp16"
    assert all(math.isfinite(x) for x in result.progress.losses)
    assert all(t.dtype == torch.float32 for t in result.tensors.values())


def fresh_model():
    from tests.engine.conftest import HashedWordEncoder, tiny_unet
    from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable

    return diffusers_sd1_trainable(tiny_unet(), FunctionCaptionEncoder(HashedWordEncoder()))


def test_cancelled_run_resumes_exactly(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    args = (NetworkConfig(rank=4, alpha=2), OptimizerConfig(learning_rate=2e-3, warmup_ratio=0.2))
    settings = TrainSettings(epochs=3, batch_size=2, seed=9)               # 3 batches per epoch, 9 steps
    whole = train_lora(fresh_model(), cache, *args, settings)
    state = cancelled_state(tmp_path, cache, (*args, settings), at_check=5)    # mid-epoch: 4 steps done
    assert state.step == 4
    resumed = train_lora(fresh_model(), cache, *args, settings, resume=state)
    assert resumed.progress.step == 9 and resumed.progress.losses == whole.progress.losses
    assert resumed.progress.learning_rates == whole.progress.learning_rates
    assert all(torch.equal(resumed.tensors[k], whole.tensors[k]) for k in whole.tensors)

    with pytest.raises(ConfigError, match="seed: was 9, now 10"):
        train_lora(fresh_model(), cache, *args, TrainSettings(epochs=3, batch_size=2, seed=10), resume=state)


@pytest.mark.parametrize("requested, device, bf16, weights, expected", [
    ("auto", "cpu", False, torch.float32, "fp32"),
    ("auto", "cuda", True, torch.float32, "bf16"),
    ("auto", "cuda", False, torch.float32, "fp16"),
    ("auto", "cpu", False, torch.float16, "fp16"),       # fp16 weights compute in fp16 whatever auto says
    ("auto", "cuda", True, torch.float16, "bf16"),
    ("fp32", "cuda", True, torch.float32, "fp32"),
    ("bf16", "cpu", False, torch.float32, "bf16"),       # asked for explicitly: CPU autocast runs bf16
    ("fp16", "cuda", True, torch.float32, "fp16"),
])
def test_training_precision_auto_follows_the_device(monkeypatch, requested, device, bf16, weights, expected):
    from trainer import loop

    monkeypatch.setattr(loop.torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert loop.training_precision(requested, torch.device(device), weights) == expected


def test_bf16_on_a_gpu_without_it_is_an_error_that_names_auto(monkeypatch):
    from trainer import loop

    monkeypatch.setattr(loop.torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(loop.torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ConfigError, match="Tesla T4.*auto"):
        loop.training_precision("bf16", torch.device("cuda"), torch.float32)


def test_default_precision_trains_on_cpu_in_fp32_and_says_so(tmp_path, tiny_vae_encoder, tiny_trainable):
    from trainer.loop import describe_precision

    cache = small_cache(tmp_path, tiny_vae_encoder)
    result = train_lora(tiny_trainable, cache, NetworkConfig(rank=2), OptimizerConfig(), TrainSettings(epochs=1))
    assert result.settings.precision == "auto" and result.precision == "fp32"
    assert describe_precision("auto", "fp32", torch.float32) == "precision auto: fp32 (no CUDA GPU)"


def test_trainer_errors_show_their_short_name():
    """ComfyUI's error dialog prints module.qualname except for built-ins; ours must read 'DatasetError'."""
    from trainer import errors

    for error in (errors.TrainerError, errors.DatasetError, errors.ConfigError, errors.ModelError, errors.SaveError):
        assert error.__module__ == "builtins"
        assert issubclass(error, errors.TrainerError)


def test_shuffled_captions_are_encoded_per_step_and_a_resumed_run_sees_the_same_ones(tmp_path, tiny_vae_encoder):
    from tests.engine.conftest import HashedWordEncoder, tiny_unet
    from trainer.dataset.caption_processing import CaptionOptions
    from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable
    from trainer.resume import latest_state_folder, load_state, save_state, state_folder_name

    root = make_kohya_folder(str(tmp_path / "data"), {"3_x": [(64, 64), (64, 64)]},
                             {"3_x/0": "sks dog, red collar, grass, park", "3_x/1": "sks dog, snow, night, hat"})
    options = CaptionOptions(shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.2)
    cache = cache_latents(load_dataset_folder(root, caption_options=options), tiny_vae_encoder,
                          BucketSettings((64, 64), 64, 64))
    assert all(s.caption_options == options for s in cache.samples)

    def model(seen):
        words = HashedWordEncoder()

        def encode(caption):
            seen.append(caption)
            return words(caption)
        return diffusers_sd1_trainable(tiny_unet(), FunctionCaptionEncoder(encode))

    args = (NetworkConfig(rank=2), OptimizerConfig(learning_rate=1e-3), TrainSettings(epochs=3, batch_size=2))
    seen_whole = []
    whole = train_lora(model(seen_whole), cache, *args)
    assert len(set(seen_whole)) > 4 and all(c.startswith("sks dog") for c in seen_whole)

    cancels = {"n": 0}

    def cancel_at_step_5():
        cancels["n"] += 1
        if cancels["n"] == 5:                             # mid-epoch: 3 steps per epoch, 4 done
            raise Cancelled()

    def keep(progress, state, exc):
        save_state(str(tmp_path / "run" / state_folder_name(state.step)), state)

    with pytest.raises(Cancelled):
        train_lora(model([]), cache, *args, TrainCallbacks(check_cancel=cancel_at_step_5, on_abort=keep))
    resumed = train_lora(model([]), cache, *args, resume=load_state(latest_state_folder(str(tmp_path / "run"))))
    assert resumed.progress.losses == whole.progress.losses
    assert all(torch.equal(resumed.tensors[k], whole.tensors[k]) for k in whole.tensors)


def test_locon_trains_the_convolution_blocks_too(tmp_path, tiny_vae_encoder, tiny_trainable):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    result = train_lora(tiny_trainable, cache, NetworkConfig("LoCon", rank=4, alpha=2, conv_rank=2, conv_alpha=1),
                        OptimizerConfig(learning_rate=1e-3), TrainSettings(epochs=1, batch_size=2))
    names = {key.split(".")[0] for key in result.tensors}
    convs = set(tiny_trainable.conv_targets)
    assert convs and convs <= names and set(tiny_trainable.lora_targets) <= names
    conv1 = next(n for n in convs if n.endswith("resnets_0_conv1"))
    assert result.tensors[f"{conv1}.lora_down.weight"].shape[0] == 2           # conv rank on 3x3
    shortcut_or_emb = next(n for n in convs if n.endswith("time_emb_proj"))
    assert result.tensors[f"{shortcut_or_emb}.lora_down.weight"].shape[0] == 4  # network rank on Linear
    assert float(result.tensors[f"{conv1}.alpha"]) == 1.0


@pytest.mark.parametrize("network", [
    NetworkConfig(rank=4, alpha=4, network_dropout=0.1, rank_dropout=0.2, module_dropout=0.3),
    NetworkConfig("DyLoRA", rank=4, alpha=4, dylora_unit=2),              # its rank draws are random too
    NetworkConfig("LoKr", rank=4, alpha=4, rank_dropout=0.2, module_dropout=0.2),
    NetworkConfig("LoHa", rank=4, alpha=4, module_dropout=0.3),
    NetworkConfig(rank=4, alpha=4, dora=True, module_dropout=0.3),
], ids=["LoRA dropouts", "DyLoRA", "LoKr dropouts", "LoHa dropout", "DoRA dropout"])
def test_a_run_with_random_draws_resumes_exactly(tmp_path, tiny_vae_encoder, network):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    args = (network, OptimizerConfig(learning_rate=2e-3), TrainSettings(epochs=2, batch_size=2, seed=4))
    whole = train_lora(fresh_model(), cache, *args)
    plain = train_lora(fresh_model(), cache, NetworkConfig(rank=4, alpha=4), *args[1:])
    assert whole.progress.losses != plain.progress.losses            # the dropouts did something
    resumed = train_lora(fresh_model(), cache, *args, resume=cancelled_state(tmp_path, cache, args, at_check=3))
    assert resumed.progress.losses == whole.progress.losses
    assert all(torch.equal(resumed.tensors[k], whole.tensors[k]) for k in whole.tensors)


def test_gradient_accumulation_follows_kohyas_step_arithmetic_and_averages_gradients(tmp_path, tiny_vae_encoder):
    from trainer.loop import TrainStep
    from trainer.networks import LoRANetwork
    from trainer.plan import plan_run
    from trainer.text_contexts import CaptionContexts

    cache = small_cache(tmp_path, tiny_vae_encoder)        # 3 batches per epoch at batch 2
    plan = plan_run(cache, TrainSettings(epochs=3, batch_size=2, gradient_accumulation_steps=2))
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (3, 2, 6)   # ceil(3 / 2) = 2
    result = train_lora(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(learning_rate=1e-3),
                        TrainSettings(epochs=3, batch_size=2, gradient_accumulation_steps=2))
    assert result.progress.step == 6 and len(result.progress.losses) == 6

    # two batches at divisor 2 give the mean of their gradients, the same draws as two separate batches
    def stepper_and_network():
        model = fresh_model()
        targets = model.targets_for(False)
        torch.manual_seed(0)
        network = LoRANetwork(targets, NetworkConfig(rank=2))
        for module in network.lora_modules.values():
            torch.nn.init.normal_(module.up.weight, std=0.1)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
        captions = CaptionContexts(model.caption_encoder, cache.samples, torch.device("cpu"), 0)
        return TrainStep(model.denoiser, network, optimizer, OptimizerConfig(), captions, "fp32", seed=5), network, \
            targets

    batches = [[sample] for sample in cache.samples[:2]]
    stepper, network, targets = stepper_and_network()
    separate = []
    with network.attached(targets):
        for batch in batches:
            stepper.accumulate(batch, 1, [batch[0].caption])
            separate.append([p.grad.clone() for p in network.parameters()])
            stepper.optimizer.zero_grad()
    stepper, network, targets = stepper_and_network()
    with network.attached(targets):
        for batch in batches:
            stepper.accumulate(batch, 1, [batch[0].caption], divisor=2)
    for grad, first, second in zip((p.grad for p in network.parameters()), *separate):
        torch.testing.assert_close(grad, (first + second) / 2, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("network", [NetworkConfig(rank=2, network_dropout=0.2, rank_dropout=0.2),
                                     NetworkConfig("DyLoRA", rank=4, dylora_unit=2)], ids=["dropouts", "DyLoRA"])
def test_gradient_checkpointing_trains_the_same_lora(tmp_path, tiny_vae_encoder, network):
    """The recomputed blocks draw the same dropout coins and DyLoRA ranks as their forward did."""
    cache = small_cache(tmp_path, tiny_vae_encoder)
    args = (network, OptimizerConfig(learning_rate=1e-3))
    plain = train_lora(fresh_model(), cache, *args, TrainSettings(epochs=1, batch_size=2, seed=3))
    model = fresh_model()
    checkpointed = train_lora(model, cache, *args, TrainSettings(epochs=1, batch_size=2, seed=3,
                                                                 gradient_checkpointing=True))
    assert checkpointed.progress.losses == plain.progress.losses
    for key, value in plain.tensors.items():
        torch.testing.assert_close(checkpointed.tensors[key], value, atol=1e-6, rtol=1e-5)
    assert all("forward" not in vars(block) for block in model.checkpoint_blocks), "a block kept its wrapper"


def test_a_step_fp16_loss_scaling_skips_does_not_advance_the_schedule(tmp_path, tiny_vae_encoder, monkeypatch):
    """accelerate's rule: the LR schedule steps only when the optimizer did."""
    from tests.engine.conftest import HashedWordEncoder, tiny_unet
    from trainer import loop
    from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable

    scaler_class = torch.amp.GradScaler
    monkeypatch.setattr(loop.torch.amp, "GradScaler",
                        lambda device, enabled: scaler_class(device, init_scale=2.0 ** 127, enabled=enabled))
    cache = small_cache(tmp_path, tiny_vae_encoder)
    model = diffusers_sd1_trainable(tiny_unet().half(), FunctionCaptionEncoder(HashedWordEncoder()))
    result = train_lora(model, cache, NetworkConfig(rank=2), OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0),
                        TrainSettings(epochs=2, precision="fp16"))
    assert result.progress.step == 12
    assert result.progress.learning_rates == [1e-3] * 12         # every step overflowed: cosine never moved
    assert all(float(v.abs().max()) == 0 for k, v in result.tensors.items() if k.endswith("lora_up.weight"))


def test_a_run_with_gradient_accumulation_resumes_exactly(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    args = (NetworkConfig(rank=2, network_dropout=0.1), OptimizerConfig(learning_rate=2e-3),
            TrainSettings(epochs=3, batch_size=1, seed=4, gradient_accumulation_steps=4))   # 6 batches: 2 steps
    whole = train_lora(fresh_model(), cache, *args)
    assert whole.progress.step == 6
    state = cancelled_state(tmp_path, cache, args, at_check=4)
    assert state.step == 3                                    # mid-epoch, after a full accumulation group
    resumed = train_lora(fresh_model(), cache, *args, resume=state)
    assert resumed.progress.losses == whole.progress.losses
    assert all(torch.equal(resumed.tensors[k], whole.tensors[k]) for k in whole.tensors)


def fixed_denoising_loss(model, cache, network=None, seed: int = 123) -> float:
    """The training images' denoising loss at fixed noise and timesteps (the same draw every call)."""
    from trainer.objective import noisy_latents_and_target, per_sample_mse

    denoiser = model.denoiser
    generator = torch.Generator().manual_seed(seed)
    latents = denoiser.scale_latents(torch.stack([s.latent for s in cache.samples if s.bucket == (64, 64)]))
    latents = latents.repeat(4, 1, 1, 1)                  # several timesteps per image
    noisy, timesteps, target = noisy_latents_and_target(latents, denoiser.alphas_cumprod, "epsilon", generator)
    contexts = torch.cat([model.caption_encoder.encode(s.caption) for s in cache.samples
                          if s.bucket == (64, 64)] * 4)
    targets = model.targets_for(False)
    with torch.no_grad():
        if network is None:
            prediction = denoiser(noisy, timesteps, contexts)
        else:
            network.eval()
            with network.attached(targets):
                prediction = denoiser(noisy, timesteps, contexts)
    return float(per_sample_mse(prediction, target).mean())


def test_training_lowers_the_denoising_loss_on_the_training_images(tmp_path, tiny_vae_encoder):
    from trainer.networks import LoRANetwork

    root = make_kohya_folder(str(tmp_path / "data"), {"1_sks dog": [(64, 64), (64, 64)]},
                             {"1_sks dog/0": "a photo of sks dog", "1_sks dog/1": "sks dog on grass"})
    cache = cache_latents(load_dataset_folder(root), tiny_vae_encoder, BucketSettings((64, 64), 64, 128, 64))
    model = fresh_model()
    before = fixed_denoising_loss(model, cache)
    config = NetworkConfig(rank=8, alpha=8)
    result = train_lora(model, cache, config, OptimizerConfig(learning_rate=3e-3, scheduler="constant",
                                                              warmup_ratio=0.0),
                        TrainSettings(epochs=150, batch_size=2, seed=1))
    trained = LoRANetwork(model.targets_for(False), config)
    trained.load_kohya_state_dict(result.tensors)
    after = fixed_denoising_loss(model, cache, trained)
    untrained = fixed_denoising_loss(model, cache, LoRANetwork(model.targets_for(False), config))
    assert untrained == before, "a fresh LoRA (zero up matrices) must leave the model's loss as it is"
    print(f"denoising loss on the training images: {before:.4f} before, {after:.4f} after")
    assert after <= 0.7 * before, f"the loss fell only from {before:.4f} to {after:.4f}"
    frozen_run = train_lora(model, cache, config, OptimizerConfig(optimizer_type="AdamW", learning_rate=0.0),
                            TrainSettings(epochs=20, batch_size=2, seed=1))
    unchanged = LoRANetwork(model.targets_for(False), config)
    unchanged.load_kohya_state_dict(frozen_run.tensors)
    assert fixed_denoising_loss(model, cache, unchanged) == before      # learning rate 0: nothing moved


def test_step_counts_are_kohyas_with_repeats_regularization_batch_and_accumulation(tmp_path, tiny_vae_encoder):
    """kohya: 3 images x 3 repeats = 9 train samples, 4 regularization images repeated to 9; batch 2 gives
    ceil(18 / 2) = 9 batches per epoch, accumulation 2 gives ceil(9 / 2) = 5 steps per epoch."""
    from trainer.plan import plan_run

    root = make_kohya_folder(str(tmp_path / "data"), {"3_sks dog": [(64, 64)] * 3})
    reg = make_kohya_folder(str(tmp_path / "reg"), {"1_dog": [(64, 64)] * 4})
    cache = cache_latents(load_dataset_folder(root, regularization_folder=reg), tiny_vae_encoder,
                          BucketSettings((64, 64), 64, 128, 64))
    assert (cache.num_train_images, cache.num_reg_images) == (9, 4)
    settings = TrainSettings(epochs=2, batch_size=2, gradient_accumulation_steps=2, save_every_n_epochs=1,
                             save_every_n_steps=4)
    plan = plan_run(cache, settings)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (9, 5, 10)
    saves = []
    result = train_lora(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(), settings,
                        TrainCallbacks(on_checkpoint=lambda progress, state, kind: saves.append(
                            (kind, progress.step, progress.epoch, state.step))))
    assert result.progress.step == 10
    # kohya saves at steps 4 and 8 and after epoch 1 (step 5); the last epoch is the final save, not an extra one
    assert saves == [("step", 4, 0, 4), ("epoch", 5, 1, 5), ("step", 8, 1, 8)]
"""After the lead's loop edits: the effective lr is logged per step by train_lora and survives Cancel + resume.
(Append to tests/engine/test_train_loop.py, which defines small_cache, fresh_model and Cancelled.)"""


@pytest.mark.parametrize("name, lr", [("Prodigy", 1.0), ("DAdaptAdam", 1.0), ("AdamW8bit", 1e-3), ("Adafactor", 1e-3),
                                      ("AdamW", 1e-3)])
def test_effective_lr_is_logged_per_step_and_resumes(tmp_path, tiny_vae_encoder, name, lr):

    cache = small_cache(tmp_path, tiny_vae_encoder)
    args = (NetworkConfig(rank=4, alpha=2),
            OptimizerConfig(optimizer_type=name, learning_rate=lr, warmup_ratio=0.0 if name == "Adafactor" else 0.2))
    settings = TrainSettings(epochs=3, batch_size=2, seed=9)
    whole = train_lora(fresh_model(), cache, *args, settings)
    effective = whole.progress.effective_learning_rates
    assert len(effective) == len(whole.progress.losses) == 9
    if name in ("Prodigy", "DAdaptAdam"):
        assert effective != whole.progress.learning_rates           # d * lr, not the scheduled lr
    elif name != "Adafactor":
        assert effective == whole.progress.learning_rates
    state = cancelled_state(tmp_path, cache, (*args, settings), at_check=5)
    resumed = train_lora(fresh_model(), cache, *args, settings, resume=state)
    assert resumed.progress.losses == whole.progress.losses and resumed.progress.effective_learning_rates == effective
    assert all(torch.equal(resumed.tensors[k], whole.tensors[k]) for k in whole.tensors)
