"""DyLoRAModule: per-slice parameters, the generator's rank draw, the truncated training forward, the saved file."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional

from trainer.networks.dylora import DyLoRAModule
from trainer.networks.lora import Dropouts


def _dropouts(seed: int) -> Dropouts:
    drop = Dropouts()
    drop.generator = torch.Generator().manual_seed(seed)
    return drop


def _module(layer: nn.Module, rank: int = 8, alpha: float = 4.0, unit: int = 1, seed: int = 0) -> DyLoRAModule:
    torch.manual_seed(123)
    module = DyLoRAModule(layer, rank, alpha, _dropouts(seed), unit=unit)
    with torch.no_grad():                                   # a trained-looking up (init is zeros)
        for up in module.lora_B:
            up.normal_(0, 0.5)
    return module


def _layers():
    return [("linear", nn.Linear(12, 10), torch.randn(3, 5, 12)),
            ("conv3x3", nn.Conv2d(6, 7, 3, padding=1), torch.randn(2, 6, 5, 5)),
            ("conv1x1", nn.Conv2d(6, 7, 1), torch.randn(2, 6, 5, 5))]


def _plain_lora(layer: nn.Module, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float):
    if isinstance(layer, nn.Linear):
        return x @ down.T @ up.T * scale
    return functional.conv2d(functional.conv2d(x, down, padding=layer.padding), up) * scale


def _merged(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    if down.dim() == 2:
        return up @ down * scale
    return torch.einsum("or,rikl->oikl", up.flatten(1), down) * scale


def test_slices_are_separate_parameters_and_init():
    module = DyLoRAModule(nn.Conv2d(6, 7, 3, padding=1), 4, 1.0)
    params = list(module.parameters())
    assert len(params) == 8
    assert all(p.shape == (1, 6, 3, 3) for p in module.lora_A)
    assert all(p.shape == (7, 1, 1, 1) for p in module.lora_B)
    assert all(torch.count_nonzero(p) == 0 for p in module.lora_B)
    bound = 1 / (6 * 9) ** 0.5                              # kaiming_uniform(a=sqrt(5)): 1 / sqrt(fan_in)
    assert all(p.abs().max() <= bound and p.abs().max() > bound / 2 for p in module.lora_A)
    linear = DyLoRAModule(nn.Linear(12, 10), 4, 1.0)
    assert [tuple(p.shape) for p in linear.lora_A] == [(1, 12)] * 4
    assert [tuple(p.shape) for p in linear.lora_B] == [(10, 1)] * 4
    assert linear.rank_key == DyLoRAModule.RANK_KEY == "lora_down.weight"
    assert linear.alpha.dim() == 0 and linear.alpha.dtype == torch.float32 and "alpha" in linear.state_dict()
    assert linear.scale == 0.25 and linear.multiplier == 1.0 and not linear.skips_this_call()


@pytest.mark.parametrize("unit", [1, 2])
def test_adamw_step_changes_only_the_drawn_slice(unit):
    layer = nn.Linear(12, 10)
    module = _module(layer, rank=8, unit=unit, seed=3)
    module.train()
    before = [p.detach().clone() for p in module.parameters()]
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.01)
    optimizer.zero_grad(set_to_none=True)
    module(torch.randn(4, 12)).square().sum().backward()
    optimizer.step()
    b = module.last_b
    trained = set(range(b, b + unit))
    for i in range(8):
        for params, start in ((module.lora_A, 0), (module.lora_B, 8)):
            changed = not torch.equal(params[i].detach(), before[start + i])
            assert changed == (i in trained), (i, b)
            assert (params[i].grad is not None) == (i in trained)


def test_same_seed_same_draws_and_other_seed_differs():
    layer = nn.Linear(12, 10)

    def draws(seed):
        module = DyLoRAModule(layer, 16, 1.0, _dropouts(seed), unit=2).train()
        x = torch.randn(1, 12)
        out = []
        for _ in range(40):
            module(x)
            out.append(module.last_b)
        return out

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_python_random_is_not_used():
    import random

    module = DyLoRAModule(nn.Linear(4, 4), 8, 1.0, _dropouts(1)).train()
    state = random.getstate()
    module(torch.randn(2, 4))
    assert random.getstate() == state


@pytest.mark.parametrize("rank,unit", [(8, 1), (12, 4), (6, 3)])
def test_draws_cover_every_multiple_of_unit(rank, unit):
    module = DyLoRAModule(nn.Linear(4, 4), rank, 1.0, _dropouts(0), unit=unit)
    counts = {}
    n = 3000
    for _ in range(n):
        b = module.draw_b()
        counts[b] = counts.get(b, 0) + 1
    assert sorted(counts) == list(range(0, rank, unit))
    for c in counts.values():                               # uniform over the rank // unit choices
        assert abs(c / n - unit / rank) < 0.05


@pytest.mark.parametrize("rank,unit", [(8, 3), (4, 8), (4, 0), (4, -2)])
def test_unit_must_divide_rank(rank, unit):
    with pytest.raises(ValueError, match="unit"):
        DyLoRAModule(nn.Linear(4, 4), rank, 1.0, unit=unit)


@pytest.mark.parametrize("kind", ["network", "rank", "module"])
def test_dropouts_are_refused(kind):
    with pytest.raises(ValueError, match="dropout"):
        DyLoRAModule(nn.Linear(4, 4), 4, 1.0, Dropouts(**{kind: 0.1}))


def test_refuses_other_layers():
    with pytest.raises(TypeError):
        DyLoRAModule(nn.LayerNorm(4), 4, 1.0)


@pytest.mark.parametrize("name,layer,x", _layers(), ids=lambda v: v if isinstance(v, str) else "")
def test_saved_round_trip_is_exact(name, layer, x):
    source = _module(layer, rank=6)
    saved = source.saved_parameters()
    down_shape = (6, *layer.weight.shape[1:]) if name != "linear" else (6, 12)
    up_shape = (layer.weight.shape[0], 6, 1, 1) if name != "linear" else (10, 6)
    assert tuple(saved["lora_down.weight"].shape) == down_shape
    assert tuple(saved["lora_up.weight"].shape) == up_shape
    assert not saved["lora_down.weight"].requires_grad
    target = DyLoRAModule(layer, 6, 4.0)
    target.load_saved_parameters({k: v.clone() for k, v in saved.items()})
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)
    reloaded = target.saved_parameters()
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)


def test_load_checks_shapes():
    module = DyLoRAModule(nn.Linear(12, 10), 4, 1.0)
    good = module.saved_parameters()
    with pytest.raises(ValueError, match=r"\(4, 12\)"):
        module.load_saved_parameters({"lora_down.weight": torch.zeros(5, 12), "lora_up.weight": good["lora_up.weight"]})
    with pytest.raises(ValueError, match=r"\(10, 4\)"):
        module.load_saved_parameters({"lora_down.weight": good["lora_down.weight"]})


@pytest.mark.parametrize("name,layer,x", _layers(), ids=lambda v: v if isinstance(v, str) else "")
def test_saved_file_as_plain_lora_matches_delta_and_eval_forward(name, layer, x):
    module = _module(layer, rank=8, alpha=3.0).eval()
    saved = module.saved_parameters()
    down, up = saved["lora_down.weight"], saved["lora_up.weight"]
    scale = float(module.alpha) / 8
    delta = module.delta_weight()
    assert delta.shape == layer.weight.shape
    torch.testing.assert_close(delta, _merged(down, up, scale), atol=1e-6, rtol=0)
    with torch.no_grad():
        update = module(x)
        merged_out = (functional.linear(x, delta) if name == "linear"
                      else functional.conv2d(x, delta, padding=layer.padding))
    torch.testing.assert_close(update, _plain_lora(layer, x, down, up, scale), atol=1e-6, rtol=0)
    torch.testing.assert_close(update, merged_out, atol=1e-5, rtol=0)
    module.multiplier = 0.5
    with torch.no_grad():
        torch.testing.assert_close(module(x), update * 0.5, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,layer,x", _layers(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("b", [0, 2, 6])
def test_training_forward_is_the_rank_k_file(name, layer, x, b):
    """At draw b the training forward is the first k = b + unit ranks at alpha / k: what the rank-k file cut by
    kohya's extract_lora_from_dylora.py (slices [:k], alpha unchanged) is read as."""
    module = _module(layer, rank=8, alpha=3.0, unit=2).train()
    k = b + 2
    saved = module.saved_parameters()
    down, up = saved["lora_down.weight"][:k], saved["lora_up.weight"][:, :k]
    expected = _plain_lora(layer, x, down, up, 3.0 / k)
    got = module.forward_at(x, b)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    got.sum().backward()
    for i in range(8):
        assert (module.lora_A[i].grad is not None) == (b <= i < k)
        assert (module.lora_B[i].grad is not None) == (b <= i < k)


def test_training_forward_uses_the_drawn_b_and_full_draw_is_the_full_file():
    layer = nn.Linear(12, 10)
    module = _module(layer, rank=4, alpha=2.0, seed=9).train()
    x = torch.randn(3, 12)
    twin = DyLoRAModule(layer, 4, 2.0, _dropouts(9))
    for _ in range(10):
        b = twin.draw_b()
        torch.testing.assert_close(module(x), module.forward_at(x, b), atol=0, rtol=0)
        assert module.last_b == b
    with torch.no_grad():
        full_train = module.forward_at(x, 3)
        full_eval = module.eval()(x)
    torch.testing.assert_close(full_train, full_eval, atol=1e-6, rtol=0)


def test_forward_at_rejects_bad_b():
    module = DyLoRAModule(nn.Linear(4, 4), 8, 1.0, unit=2)
    for b in (-2, 1, 8):
        with pytest.raises(ValueError):
            module.forward_at(torch.randn(1, 4), b)
