"""LyCORIS 4.1.3 (`pip install .[test]`) as the oracle for our LoHa and LoKr modules.

A small module tree gets our modules, with random non-zero values on every factor (the zero-initialised one
too); their tensors are written as a LyCORIS file (`lycoris_<module path with _>.<suffix>` and `.alpha`,
the prefix `lycoris.create_lycoris_from_weights` looks up for a plain module tree), LyCORIS loads it onto a
copy of the tree, and the two outputs must agree.

LyCORIS is compared through its forward (`apply_to`), not `merge_to`: in 4.1.3 LokrModule.get_merged_weight
applies alpha / rank twice (get_weight already scales, get_diff_weight scales again), so a merged LoKr
with scale != 1 is off by that factor there; ComfyUI, and LyCORIS's own forward, apply it once.
"""

from __future__ import annotations

import copy

import pytest
import safetensors.torch
import torch
from torch import nn

pytest.importorskip("lycoris", reason="lycoris-lora is the LoHa/LoKr oracle; `pip install .[test]` installs it")

from lycoris import create_lycoris_from_weights  # noqa: E402
from lycoris.functional.general import factorization as lycoris_factorization  # noqa: E402
from lycoris.modules.loha import LohaModule as LycorisLoha  # noqa: E402
from lycoris.modules.lokr import LokrModule as LycorisLokr  # noqa: E402

from trainer.networks.loha import LoHaModule  # noqa: E402
from trainer.networks.lokr import LoKrModule, factorization  # noqa: E402
from trainer.networks.lora import Dropouts  # noqa: E402


class TinyBlock(nn.Module):
    """Linear and Conv2d layers (3x3 and 1x1) whose sizes factor unevenly (40 = 5 * 8, 60 = 6 * 10, 7 = 1 * 7)."""

    def __init__(self):
        super().__init__()
        self.proj_in = nn.Conv2d(32, 40, 1)
        self.attn = nn.Module()
        self.attn.to_q = nn.Linear(40, 96)
        self.attn.to_k = nn.Linear(24, 96, bias=False)
        self.resnet = nn.Module()
        self.resnet.conv1 = nn.Conv2d(96, 60, 3, padding=1)
        self.resnet.conv2 = nn.Conv2d(60, 36, 3, stride=2, padding=1)
        self.proj_out = nn.Linear(36, 7)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        hidden = self.proj_in(x).permute(0, 2, 3, 1)
        query = self.attn.to_q(hidden) + self.attn.to_k(context).mean(1)[:, None, None]
        hidden = torch.tanh(self.resnet.conv1(query.permute(0, 3, 1, 2)))
        return self.proj_out(self.resnet.conv2(hidden).permute(0, 2, 3, 1))


def target_layers(tree: nn.Module) -> dict[str, nn.Module]:
    return {name: layer for name, layer in tree.named_modules() if isinstance(layer, (nn.Linear, nn.Conv2d))}


CASES = {   # name: (our class, rank, alpha, keyword arguments, multiplier, suffixes the case must produce)
    "loha": (LoHaModule, 4, 2.0, {}, 1.0, {"hada_w1_a", "hada_w2_b"}),
    "lokr_default": (LoKrModule, 4, 2.0, {}, 1.0, {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "lokr_w2"}),
    "lokr_decompose_both": (LoKrModule, 2, 3.0, {"decompose_both": True}, 0.5, {"lokr_w1_a", "lokr_w1_b"}),
    "lokr_factor_4": (LoKrModule, 4, 1.0, {"factor": 4}, 1.0, {"lokr_w1", "lokr_w2_b"}),
    "lokr_full_by_rank": (LoKrModule, 100000, 1.0, {}, 1.0, {"lokr_w1", "lokr_w2"}),
    "lokr_full_matrix": (LoKrModule, 4, 1.0, {"full_matrix": True}, 0.75, {"lokr_w1", "lokr_w2"}),
}


def build_ours(tree: nn.Module, case: str) -> dict[str, nn.Module]:
    cls, rank, alpha, kwargs, multiplier, _ = CASES[case]
    modules = {}
    for name, layer in target_layers(tree).items():
        module = cls(layer, rank, alpha, **kwargs)
        with torch.no_grad():       # every factor random, then dW made as large as the layer's own weight
            tensors = module.saved_parameters()
            for tensor in tensors.values():
                tensor.normal_()
            next(iter(tensors.values())).mul_(layer.weight.std() / module.delta_weight().std())
        module.multiplier = multiplier
        modules[name] = module
    return modules


def lycoris_state_dict(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in modules.items():
        lora_name = "lycoris_" + name.replace(".", "_")
        for suffix, tensor in module.saved_parameters().items():
            state[f"{lora_name}.{suffix}"] = tensor.detach().clone().contiguous()
        state[f"{lora_name}.alpha"] = module.alpha.detach().clone()
    return state


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_loads_our_file_and_computes_the_same_output(case, tmp_path):
    torch.manual_seed(0)
    tree = TinyBlock().eval()
    x, context = torch.randn(2, 32, 8, 8), torch.randn(2, 5, 24)
    with torch.no_grad():
        base = tree(x, context)
    ours = build_ours(tree, case)
    state = lycoris_state_dict(ours)
    suffixes = {key.split(".", 1)[1] for key in state}
    assert CASES[case][5] <= suffixes, f"{case} does not exercise {sorted(CASES[case][5] - suffixes)}"
    path = tmp_path / f"{case}.safetensors"
    safetensors.torch.save_file(state, str(path))

    with_ours = copy.deepcopy(tree)
    layers = target_layers(with_ours)
    for name, module in ours.items():
        layers[name].register_forward_hook(lambda _layer, args, out, module=module: out + module(args[0]))
    with torch.no_grad():
        expected = with_ours(x, context)

    network, _ = create_lycoris_from_weights(CASES[case][4], str(path), tree)
    wanted_type = LycorisLoha if CASES[case][0] is LoHaModule else LycorisLokr
    by_lora_name = {"lycoris_" + name.replace(".", "_"): layer for name, layer in target_layers(tree).items()}
    assert sorted(lora.lora_name for lora in network.loras) == sorted(by_lora_name), "a module was not loaded"
    for lora in network.loras:
        assert type(lora) is wanted_type and lora.org_module[0] is by_lora_name[lora.lora_name]
    network.apply_to()
    loaded = set(network.state_dict())
    assert loaded == set(state), f"left over: {sorted(set(state) - loaded)}, missing: {sorted(loaded - set(state))}"
    with torch.no_grad():
        got = tree(x, context)
    assert (expected - base).norm() > 0.3 * base.norm(), "too small an update for the comparison to mean much"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_factorization_matches_lycoris():
    assert [factorization(n) for n in (320, 1280, 768)] == [(16, 20), (32, 40), (24, 32)]
    for dimension in range(1, 1300):
        for factor in (-1, 0, 1, 2, 3, 4, 8, 12, 16, 17, 64, 5000):
            assert factorization(dimension, factor) == lycoris_factorization(dimension, factor), (dimension, factor)


LAYERS = {
    "linear_40_96": lambda: nn.Linear(40, 96),
    "linear_320": lambda: nn.Linear(320, 320),
    "conv3x3_96_60": lambda: nn.Conv2d(96, 60, 3, padding=1),
    "conv1x1_60_48": lambda: nn.Conv2d(60, 48, 1),
    "conv3x3_groups2": lambda: nn.Conv2d(64, 64, 3, groups=2),
}


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("kwargs", [{}, {"decompose_both": True}, {"factor": 4}, {"factor": 8, "decompose_both": True},
                                    {"full_matrix": True}], ids=repr)
def test_lokr_layout_init_alpha_and_scale_match_lycoris(layer_name, kwargs):
    """Same keys, shapes, thresholds, alpha and scale as LyCORIS's own constructor; the same init bit for bit."""
    layer = LAYERS[layer_name]()
    for rank in (1, 2, 3, 4, 5, 8, 10, 16, 100000):
        for alpha in (1.0, 0.0, 7.0):
            torch.manual_seed(rank)
            reference = LycorisLokr("lycoris_x", layer, lora_dim=rank, alpha=alpha, **kwargs)
            torch.manual_seed(rank)
            ours = LoKrModule(layer, rank, alpha, **kwargs)
            expected = reference.custom_state_dict()
            saved = dict(ours.saved_parameters(), alpha=ours.alpha)
            assert saved.keys() == expected.keys(), (rank, alpha)
            for key, tensor in expected.items():
                assert torch.equal(saved[key].detach(), tensor.float()), (rank, alpha, key)
            assert ours.scale == pytest.approx(reference.scale)
            zero = "lokr_w2_b" if "lokr_w2_b" in saved else "lokr_w2"
            assert torch.count_nonzero(saved[zero]) == 0 and torch.count_nonzero(ours.delta_weight()) == 0
            assert ours.rank_key == ("lokr_w2_b" if "lokr_w2_b" in saved else None)
            if ours.rank_key:
                assert saved[ours.rank_key].shape[0] == rank


@pytest.mark.parametrize("layer_name", ["linear_40_96", "conv3x3_96_60"])
def test_lokr_rank_and_module_dropout_match_lycoris(layer_name):
    """LyCORIS drops whole output rows of dW (coin > p, no rescale) and skips the module (coin < p)."""
    layer = LAYERS[layer_name]()
    torch.manual_seed(0)
    ours = LoKrModule(layer, 4, 2.0, Dropouts(rank=0.5, module=0.3))
    with torch.no_grad():
        for tensor in ours.saved_parameters().values():
            tensor.normal_(0.0, 0.2)
    reference = LycorisLokr("lycoris_x", layer, lora_dim=4, alpha=2.0, rank_dropout=0.5, module_dropout=0.3)
    with torch.no_grad():
        for suffix, tensor in ours.saved_parameters().items():
            getattr(reference, suffix).copy_(tensor)
    x = torch.randn(2, 40) if isinstance(layer, nn.Linear) else torch.randn(2, 96, 6, 6)
    with torch.no_grad():
        base = layer(x)
    ours.train()
    reference.train()
    reference.apply_to()
    skipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        with torch.no_grad():
            skip = ours.skips_this_call()
            expected = base if skip else base + ours(x)
        torch.manual_seed(seed)
        with torch.no_grad():
            got = layer(x)
        skipped += skip
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    reference.restore()
    assert 0 < skipped < 12
