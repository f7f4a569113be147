"""The committed Flux.1 dev / SD3.5 LoRA module lists (tests/reference/*_unet_lora_keys.txt, made from kohya's
own networks/lora_flux.py and networks/lora_sd3.py by scripts/make_kohya_reference.py).

The count and shape tests read the committed files only (CI); the last test, dev only, makes them again from
kohya's code (tests/oracles/kohya_flow.py) and compares byte for byte.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

from tests.oracles import kohya_flow
from tests.reference_data import REPO_ROOT, kohya_modules, reference_folder

FLOW_FILES = ("flux_dev", "sd35_large", "sd35_medium")
FLUX_LINEARS = {"img_mod_lin": (3072, 18432), "img_attn_qkv": (3072, 9216), "img_attn_proj": (3072, 3072),
                "img_mlp_0": (3072, 12288), "img_mlp_2": (12288, 3072), "linear1": (3072, 21504),
                "linear2": (15360, 3072), "modulation_lin": (3072, 9216)}


def rows(model: str) -> list[list[str]]:
    file_name = f"{model}_unet_lora_keys.txt"
    with open(os.path.join(reference_folder(file_name), file_name), "rb") as handle:
        text = handle.read()
    assert text.isascii() and b"\r" not in text and text.endswith(b"\n")
    return [line.split("\t") for line in text.decode("ascii").splitlines()]


@pytest.mark.parametrize("model", FLOW_FILES)
def test_every_row_is_a_default_linear(model):
    table = rows(model)
    assert all(len(row) == 4 and row[1] == "Linear" and row[3] == "default" for row in table)
    assert len(kohya_modules(model)) == len(kohya_modules(model, with_conv=True)) == len(table)


def test_flux_dev_has_10_modules_per_double_block_and_3_per_single():
    modules = kohya_modules("flux_dev")
    assert len(modules) == 304
    double = [name for name in modules if name.startswith("lora_unet_double_blocks_")]
    single = [name for name in modules if name.startswith("lora_unet_single_blocks_")]
    assert (len(double), len(single)) == (19 * 10, 38 * 3) and len(double) + len(single) == len(modules)
    pattern = re.compile(r"lora_unet_(double_blocks_(\d+)_(img|txt)_(mod_lin|attn_qkv|attn_proj|mlp_0|mlp_2)"
                         r"|single_blocks_(\d+)_(linear1|linear2|modulation_lin))")
    for name, (_, shape) in modules.items():
        match = pattern.fullmatch(name)
        assert match, name
        kind = f"img_{match.group(4)}" if match.group(4) else match.group(6)
        assert shape == FLUX_LINEARS[kind], name
    assert list(modules)[:2] == ["lora_unet_double_blocks_0_img_mod_lin", "lora_unet_double_blocks_0_img_attn_qkv"]
    assert list(modules)[-1] == "lora_unet_single_blocks_37_modulation_lin"


@pytest.mark.parametrize("model, depth, attn2_blocks, count", [("sd35_large", 38, (), 377),
                                                                ("sd35_medium", 24, tuple(range(13)), 263)])
def test_sd35_has_10_modules_per_block_less_the_last_context_block_plus_attn2(model, depth, attn2_blocks, count):
    modules = kohya_modules(model)
    hidden = 64 * depth
    assert len(modules) == count == 10 * depth - 3 + 2 * len(attn2_blocks)
    pattern = re.compile(r"lora_unet_joint_blocks_(\d+)_(context|x)_block_(attn_qkv|attn_proj|attn2_qkv|attn2_proj"
                         r"|mlp_fc1|mlp_fc2|adaLN_modulation_1)")
    for name, (_, shape) in modules.items():
        match = pattern.fullmatch(name)
        assert match, name
        block, stream, layer = int(match.group(1)), match.group(2), match.group(3)
        assert block < depth and shape[0] == (4 * hidden if layer == "mlp_fc2" else hidden), name
        if layer.startswith("attn2"):
            assert stream == "x" and block in attn2_blocks, name
    last = [name for name in modules if name.startswith(f"lora_unet_joint_blocks_{depth - 1}_context_block_")]
    assert last == [f"lora_unet_joint_blocks_{depth - 1}_context_block_attn_qkv",
                    f"lora_unet_joint_blocks_{depth - 1}_context_block_adaLN_modulation_1"]
    assert modules[last[1]][1][1] == (2 * hidden)           # pre_only: shift and scale only
    assert modules["lora_unet_joint_blocks_0_x_block_adaLN_modulation_1"][1][1] == (
        (9 if attn2_blocks else 6) * hidden)                  # blocks with attn2 modulate it too


def test_kohyas_code_makes_the_committed_files():
    reason = kohya_flow.missing_reason()
    if reason:
        pytest.skip(reason)
    spec = importlib.util.spec_from_file_location("make_kohya_reference",
                                                  os.path.join(REPO_ROOT, "scripts", "make_kohya_reference.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    made = script.flow_reference_files(kohya_flow.kohya.sd_scripts_path())
    assert sorted(made) == sorted(f"{model}_unet_lora_keys.txt" for model in FLOW_FILES)
    for file_name, text in made.items():
        with open(os.path.join(reference_folder(file_name), file_name), "rb") as handle:
            assert handle.read() == text.encode("ascii"), file_name
