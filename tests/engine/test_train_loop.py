import torch

from tests.helpers import make_kohya_folder
from trainer.buckets import BucketSettings
from trainer.dataset import load_dataset_folder
from trainer.latent_cache import cache_latents
from trainer.loop import TrainCallbacks, train_lora
from trainer.network import NetworkConfig
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
