"""Write tests/reference/*_lora_keys.txt from kohya sd-scripts' own model and network code.

Produced from kohya-ss/sd-scripts commit 48d368fa557731ad0488c07304dfeba8c07910eb (2026-02-16) with

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_kohya_reference.py ~/sd-scripts --check ../shared/reference

run in the repository root (the checkout path may also come from $SD_SCRIPTS_PATH; default ~/sd-scripts). It
writes tests/reference/{sd15,sd2,sdxl}_{unet,te}_lora_keys.txt and the flow-matching DiTs' files
{flux_dev,sd35_large,sd35_medium}_unet_lora_keys.txt (`--output` for another folder; `--families sd` or `flow`
for one group); `--check DIR` compares them with the same-named files in DIR byte for byte (exit status 1 if any
differ; files DIR lacks are not compared).

How the models are built: kohya's own loaders are run, not re-implemented. For SD1 / SD2 that is
`library/model_util.py:load_models_from_stable_diffusion_checkpoint`, for SDXL
`library/sdxl_model_util.py:load_models_from_sdxl_checkpoint`. There is no checkpoint, so the reading and
converting of weights is stubbed out (each stub returns an empty state dict, and `load_state_dict` becomes a
no-op on classes that keep their own name), and everything is built on the meta device. The UNet classes
(`library/original_unet.py`, `library/sdxl_original_unet.py`) and the text-encoder configs are kohya's,
taken as the loaders create them. The LoRA modules are then those `networks/lora.py:LoRANetwork` creates:
once without `conv_dim` (rows marked `default`) and once with it (all rows, in the network's order).

Flux.1 dev and SD3.5 (DiT only; their text-encoder modules are not written): the LoRA modules are those kohya's
`networks/lora_flux.py:create_network` / `networks/lora_sd3.py:create_network` create with no network_args
(`create_network(1.0, None, None, None, [], dit)`: rank 4, alpha 1, no text encoders), on the meta device;
once more with `conv_dim` to mark any LoCon-only row (there are none: the blocks have no Conv2d). The models
(`tests/oracles/kohya_flow.py`, which also holds kohya's flow objective as an oracle):

- Flux: kohya's `library/flux_models.py:Flux(configs["dev"].params)` built on the meta device, which is what
  `library/flux_utils.py:load_flow_model` does for a dev checkpoint before reading it (it only takes the block
  counts from the checkpoint: 19 double, 38 single for dev). No stub.
- SD3.5 Large / Medium: kohya makes an MMDiT only from a checkpoint (`library/sd3_utils.py:load_mmdit`, whose
  `analyze_state_dict_state` reads depth, patch size, pos-embed size, pooled and context widths, qk_norm and the
  attn2 blocks from key shapes). It is given a state dict of meta tensors holding only those keys, shaped as in
  the released checkpoints (hidden 64 x depth: Large depth 38, pos_embed_max_size 192; Medium depth 24, 384,
  x_block attn2 in blocks 0-12; pooled 2048, context 4096, ln_k present); its
  `load_state_dict(strict=False, assign=True)` shape-checks them and the rest stays on meta
  (`kohya_flow.sd35_on_meta`, which also checks kohya's model_type: "5-large" / "5-medium").
- kohya's flow networks and models import as they are here. `kohya_flow.modules()` also imports
  `library/flux_train_utils.py` / `sd3_train_utils.py` (for the oracle), which import `library/train_util.py`,
  which does not import with transformers 5.x: they get a placeholder train_util for the import (see that
  module's docstring). The key lists use neither.

Workarounds for running kohya's code with this venv's libraries (it pins transformers 4.54, diffusers 0.32):

- kohya's modules import cleanly with diffusers 0.42 / transformers 5.x; nothing had to be stubbed to import.
- transformers 5.x dropped the `text_model` level from `CLIPTextModel` (its children are now `embeddings`,
  `encoder`, `final_layer_norm`), while 4.x, which kohya pins, has `CLIPTextModel.text_model` (a
  `CLIPTextTransformer`). `networks/lora.py` names modules by their path from the text encoder's root, so kohya
  with its own transformers writes `lora_te_text_model_encoder_layers_...`. To reproduce those names a
  `CLIPTextModel` without `text_model` is put under a holder module as `.text_model`
  (`tests/oracles/kohya_sd_scripts.py:transformers4_path`, shared with the oracle tests); the path below it
  (`encoder.layers.N.self_attn.{k,v,q,out}_proj`, `.mlp.fc1/fc2`, same registration order) is the same in both
  versions. `CLIPTextModelWithProjection` (SDXL's TE2) still has `.text_model` in 5.x and is used as it is.
- SD2's UNet: kohya builds it with `use_linear_projection` when the loader's `unet_use_linear_projection_in_v2`
  is True (the loader's own default, and what a diffusers-format SD2 gives: `proj_in` / `proj_out` are
  `Linear`). kohya's training path `train_util.load_target_model` passes False for single-file checkpoints,
  which makes them 1x1 `Conv2d`; the module names are the same. The file here is the Linear one.
- `LoRANetwork.__init__` extends the class attribute `UNET_TARGET_REPLACE_MODULE` in place (`+=` on the list)
  when `conv_dim` is given, so every later network in the same process also targets ResNet / resampling
  blocks. The list is restored after each network here (`kohya_sd_scripts.target_lists_restored`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from unittest import mock

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from tests.oracles import kohya_flow  # noqa: E402  (kohya's Flux / SD3 models on meta)
from tests.oracles import kohya_sd_scripts as kohya  # noqa: E402  (imports sd-scripts, transformers-4 paths)

OUTPUT_DIR = os.path.join(REPO_ROOT, "tests", "reference")
UNUSED_CHECKPOINT = "no-weights.safetensors"   # never opened: the readers are stubbed
FAMILIES = ("sd", "flow")
# flow-matching DiTs: file prefix -> (kohya's network module in kohya_flow.modules(), model builder)
FLOW_MODELS = {"flux_dev": ("lora_flux", kohya_flow.flux_dev_on_meta),
               "sd35_large": ("lora_sd3", lambda: kohya_flow.sd35_on_meta("large")),
               "sd35_medium": ("lora_sd3", lambda: kohya_flow.sd35_on_meta("medium"))}


def without_loading(cls: type) -> type:
    """A subclass of `cls` with its name whose load_state_dict does nothing (the model stays on meta)."""
    return type(cls.__name__, (cls,), {"load_state_dict": lambda self, *args, **kwargs: "not loaded (meta)"})


def sd_models(model_util, v2: bool):
    """(text encoder, unet) as kohya's SD1 / SD2 checkpoint loader builds them, on the meta device."""
    stubs = [
        mock.patch.object(model_util, "load_checkpoint_with_text_encoder_conversion", lambda *a, **k: (None, {})),
        mock.patch.object(model_util, "convert_ldm_unet_checkpoint", lambda *a, **k: {}),
        mock.patch.object(model_util, "convert_ldm_vae_checkpoint", lambda *a, **k: {}),
        mock.patch.object(model_util, "convert_ldm_clip_checkpoint_v1", lambda *a, **k: {}),
        mock.patch.object(model_util, "convert_ldm_clip_checkpoint_v2", lambda *a, **k: {}),
        mock.patch.object(model_util, "UNet2DConditionModel", without_loading(model_util.UNet2DConditionModel)),
        mock.patch.object(model_util, "AutoencoderKL", without_loading(model_util.AutoencoderKL)),
        mock.patch.object(model_util, "CLIPTextModel", without_loading(model_util.CLIPTextModel)),
    ]
    with contextlib.ExitStack() as stack, torch.device("meta"):
        for stub in stubs:
            stack.enter_context(stub)
        text_encoder, _vae, unet = model_util.load_models_from_stable_diffusion_checkpoint(
            v2, UNUSED_CHECKPOINT, device="meta", unet_use_linear_projection_in_v2=True)
    return text_encoder, unet


def sdxl_models(model_util, sdxl_model_util):
    """([text encoder 1, text encoder 2], unet) as kohya's SDXL checkpoint loader builds them, on meta."""
    stubs = [
        mock.patch.object(sdxl_model_util, "load_file", lambda *a, **k: {}),
        mock.patch.object(sdxl_model_util, "_load_state_dict_on_device", lambda *a, **k: "not loaded (meta)"),
        mock.patch.object(sdxl_model_util, "convert_sdxl_text_encoder_2_checkpoint", lambda *a, **k: ({}, None)),
        mock.patch.object(model_util, "convert_ldm_vae_checkpoint", lambda *a, **k: {}),
    ]
    with contextlib.ExitStack() as stack, torch.device("meta"):
        for stub in stubs:
            stack.enter_context(stub)
        text_encoder1, text_encoder2, _vae, unet, _logit_scale, _info = (
            sdxl_model_util.load_models_from_sdxl_checkpoint(None, UNUSED_CHECKPOINT, "meta"))
    return [text_encoder1, text_encoder2], unet


def kohya_lora_modules(lora, text_encoders, unet, conv_dim):
    """kohya's LoRANetwork LoRA modules (text encoders first, then UNet), in its order."""
    with kohya.target_lists_restored(lora), torch.device("meta"):
        network = lora.LoRANetwork(text_encoders, unet, lora_dim=4, alpha=1, conv_lora_dim=conv_dim,
                                   conv_alpha=1 if conv_dim else None)
    return network.text_encoder_loras, network.unet_loras


def row(module) -> tuple[str, str, str]:
    layer = module.org_module
    kind = layer.__class__.__name__
    if kind == "Linear":
        shape = (layer.in_features, layer.out_features)
    else:
        shape = (layer.in_channels, layer.out_channels, tuple(layer.kernel_size))
    return module.lora_name, kind, repr(shape)


def lines(with_conv, default) -> str:
    default_names = {module.lora_name for module in default}
    text = ""
    for module in with_conv:
        name, kind, shape = row(module)
        text += f"{name}\t{kind}\t{shape}\t{'default' if name in default_names else 'LoCon-only'}\n"
    return text


def flow_lora_modules(network_module, dit, conv_dim):
    """kohya's Flux / SD3 create_network on the DiT, no text encoders, no network_args but conv_dim."""
    kwargs = {"conv_dim": str(conv_dim)} if conv_dim else {}    # network_args arrive as strings
    with torch.device("meta"):
        network = network_module.create_network(1.0, None, None, None, [], dit, **kwargs)
    if network.text_encoder_loras:
        raise SystemExit("kohya created text-encoder modules without text encoders")
    return network.unet_loras


def flow_reference_files(sd_scripts: str) -> dict[str, str]:
    reason = kohya_flow.missing_reason(sd_scripts)
    if reason:
        raise SystemExit(reason)
    loaded = kohya_flow.modules(sd_scripts)
    files = {}
    for model, (network_name, build) in FLOW_MODELS.items():
        dit = build()
        network_module = getattr(loaded, network_name)
        default = flow_lora_modules(network_module, dit, conv_dim=None)
        with_conv = flow_lora_modules(network_module, dit, conv_dim=4)
        files[f"{model}_unet_lora_keys.txt"] = lines(with_conv, default)
    return files


def reference_files(sd_scripts: str, families=FAMILIES) -> dict[str, str]:
    files = sd_reference_files(sd_scripts) if "sd" in families else {}
    if "flow" in families:
        files.update(flow_reference_files(sd_scripts))
    return files


def sd_reference_files(sd_scripts: str) -> dict[str, str]:
    reason = kohya.missing_reason(sd_scripts)
    if reason:
        raise SystemExit(reason)
    loaded = kohya.modules(sd_scripts)
    model_util, sdxl_model_util, lora = loaded.model_util, loaded.sdxl_model_util, loaded.lora
    files = {}
    for model, (text_encoders, unet) in (("sd15", sd_models(model_util, v2=False)),
                                         ("sd2", sd_models(model_util, v2=True)),
                                         ("sdxl", sdxl_models(model_util, sdxl_model_util))):
        text_encoders = kohya.text_encoder_list(text_encoders)     # a list, transformers-4 module paths
        te_default, unet_default = kohya_lora_modules(lora, text_encoders, unet, conv_dim=None)
        te_conv, unet_conv = kohya_lora_modules(lora, text_encoders, unet, conv_dim=4)
        if [m.lora_name for m in te_conv] != [m.lora_name for m in te_default]:
            raise SystemExit(f"{model}: conv_dim changed the text-encoder modules")
        files[f"{model}_unet_lora_keys.txt"] = lines(unet_conv, unet_default)
        files[f"{model}_te_lora_keys.txt"] = lines(te_conv, te_default)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sd_scripts", nargs="?",
                        default=os.environ.get("SD_SCRIPTS_PATH", os.path.expanduser("~/sd-scripts")))
    parser.add_argument("--output", default=OUTPUT_DIR)
    parser.add_argument("--check", metavar="DIR", help="compare with the same-named files in DIR")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                        help="sd: SD1.5 / SD2 / SDXL UNets and text encoders; flow: Flux.1 dev, SD3.5 L / M DiTs")
    args = parser.parse_args()
    logging.disable(logging.INFO)          # kohya logs every network it creates
    files = reference_files(os.path.abspath(os.path.expanduser(args.sd_scripts)), args.families)
    os.makedirs(args.output, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(args.output, name), "w", encoding="ascii", newline="\n") as handle:
            handle.write(text)
        rows = text.splitlines()
        default = sum(line.endswith("\tdefault") for line in rows)
        print(f"{name}: {len(rows)} rows, {default} default, {len(rows) - default} LoCon-only")
    differ = 0
    if args.check:
        for name, text in files.items():
            other = os.path.join(args.check, name)
            if not os.path.isfile(other):
                continue
            with open(other, "rb") as handle:
                same = handle.read() == text.encode("ascii")
            differ += not same
            print(f"{name}: {'identical to' if same else 'DIFFERS from'} {other}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
