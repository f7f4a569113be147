"""A kohya_ss GUI config (the JSON its "Save" button writes) as this trainer's run config.

Every GUI key is either mapped to a TOML key (some with a conversion: the GUI's lr_warmup is a percentage,
max_resolution "1024,1024", LoRA_type names, mixed_precision "no", sampler names), or listed: set to something
(the run will not do it) or at its off value. Nothing is dropped without being named.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..errors import ConfigError
from .options import KEYS_BY_SECTION, SECTIONS, defaults
from .toml_writer import sections_text

# GUI key -> (section, key): the same meaning, the value as it is
DIRECT = {
    "train_data_dir": ("dataset", "folder"), "reg_data_dir": ("dataset", "regularization_folder"),
    "caption_extension": ("dataset", "caption_extension"), "shuffle_caption": ("dataset", "shuffle_caption"),
    "keep_tokens": ("dataset", "keep_tokens"), "keep_tokens_separator": ("dataset", "keep_tokens_separator"),
    "secondary_separator": ("dataset", "secondary_separator"), "caption_separator": ("dataset", "caption_separator"),
    "caption_prefix": ("dataset", "caption_prefix"), "caption_suffix": ("dataset", "caption_suffix"),
    "caption_dropout_rate": ("dataset", "caption_dropout_rate"),
    "caption_dropout_every_n_epochs": ("dataset", "caption_dropout_every_n_epochs"),
    "caption_tag_dropout_rate": ("dataset", "caption_tag_dropout_rate"), "flip_aug": ("dataset", "flip_aug"),
    "color_aug": ("dataset", "color_aug"), "random_crop": ("dataset", "random_crop"),
    "masked_loss": ("dataset", "alpha_mask"),
    "enable_bucket": ("buckets", "enable_bucket"), "min_bucket_reso": ("buckets", "min_bucket_reso"),
    "max_bucket_reso": ("buckets", "max_bucket_reso"), "bucket_reso_steps": ("buckets", "bucket_reso_steps"),
    "bucket_no_upscale": ("buckets", "bucket_no_upscale"),
    "resize_interpolation": ("buckets", "resize_interpolation"),
    "network_dim": ("network", "rank"), "network_alpha": ("network", "alpha"), "conv_dim": ("network", "conv_rank"),
    "conv_alpha": ("network", "conv_alpha"), "network_dropout": ("network", "network_dropout"),
    "rank_dropout": ("network", "rank_dropout"), "module_dropout": ("network", "module_dropout"),
    "dora_wd": ("network", "dora"), "factor": ("network", "lokr_factor"),
    "decompose_both": ("network", "decompose_both"), "unit": ("network", "dylora_unit"),
    "network_weights": ("network", "continue_from"),
    "optimizer": ("optimizer", "optimizer_type"), "text_encoder_lr": ("optimizer", "text_encoder_lr"),
    "lr_scheduler": ("optimizer", "lr_scheduler"), "lr_warmup_steps": ("optimizer", "lr_warmup_steps"),
    "lr_scheduler_num_cycles": ("optimizer", "lr_scheduler_num_cycles"),
    "lr_scheduler_power": ("optimizer", "lr_scheduler_power"), "max_grad_norm": ("optimizer", "max_grad_norm"),
    "optimizer_args": ("optimizer", "extra_args"), "loraplus_lr_ratio": ("optimizer", "loraplus_lr_ratio"),
    "output_name": ("training", "output_name"), "max_train_steps": ("training", "max_steps"),
    "train_batch_size": ("training", "batch_size"), "seed": ("training", "seed"),
    "save_every_n_epochs": ("training", "save_every_n_epochs"),
    "save_every_n_steps": ("training", "save_every_n_steps"),
    "prior_loss_weight": ("training", "prior_loss_weight"),
    "gradient_accumulation_steps": ("training", "gradient_accumulation_steps"),
    "gradient_checkpointing": ("training", "gradient_checkpointing"),
    "max_token_length": ("training", "max_token_length"), "scale_weight_norms": ("training", "scale_weight_norms"),
    "loss_type": ("objective", "loss_type"), "huber_schedule": ("objective", "huber_schedule"),
    "huber_c": ("objective", "huber_c"), "huber_scale": ("objective", "huber_scale"),
    "min_snr_gamma": ("objective", "min_snr_gamma"),
    "scale_v_pred_loss_like_noise_pred": ("objective", "scale_v_pred_loss_like_noise_pred"),
    "v_pred_like_loss": ("objective", "v_pred_like_loss"),
    "debiased_estimation_loss": ("objective", "debiased_estimation"),
    "noise_offset_random_strength": ("objective", "noise_offset_random_strength"),
    "adaptive_noise_scale": ("objective", "adaptive_noise_scale"), "ip_noise_gamma": ("objective", "ip_noise_gamma"),
    "ip_noise_gamma_random_strength": ("objective", "ip_noise_gamma_random_strength"),
    "min_timestep": ("objective", "min_timestep"), "max_timestep": ("objective", "max_timestep"),
    "zero_terminal_snr": ("objective", "zero_terminal_snr"),
    "timestep_sampling": ("flow", "timestep_sampling"), "sigmoid_scale": ("flow", "sigmoid_scale"),
    "discrete_flow_shift": ("flow", "discrete_flow_shift"), "weighting_scheme": ("flow", "weighting_scheme"),
    "logit_mean": ("flow", "logit_mean"), "logit_std": ("flow", "logit_std"), "mode_scale": ("flow", "mode_scale"),
    "guidance_scale": ("flow", "guidance_scale"),
    "validation_split": ("validation", "validation_split"), "validation_seed": ("validation", "validation_seed"),
    "validate_every_n_steps": ("validation", "validate_every_n_steps"),
    "validate_every_n_epochs": ("validation", "validate_every_n_epochs"),
    "sample_prompts": ("previews", "sample_prompts"), "sample_every_n_steps": ("previews", "sample_every_n_steps"),
    "sample_every_n_epochs": ("previews", "sample_every_n_epochs"),
    "training_comment": ("save", "comment"),
    "pretrained_model_name_or_path": ("model", "path"), "clip_skip": ("model", "clip_skip"),
    "save_last_n_epochs": ("training", "keep_last_n"),
}
# keys read by the conversions below (not DIRECT)
CONVERTED = {"max_resolution", "LoRA_type", "learning_rate", "unet_lr", "lr_warmup", "mixed_precision",
             "save_precision", "epoch", "max_train_epochs", "noise_offset", "noise_offset_type",
             "multires_noise_iterations", "multires_noise_discount", "cache_latents", "cache_latents_to_disk",
             "vae_batch_size", "output_dir", "sample_sampler", "dataset_config", "network_train_unet_only",
             "network_train_text_encoder_only", "save_model_as"}
DECIDED_BY_THE_MODEL = {"v2", "v_parameterization", "sdxl"}
LORA_TYPES = {"Standard": "LoRA", "LoCon": "LoCon", "Kohya LoCon": "LoCon", "LyCORIS/LoCon": "LoCon",
              "LyCORIS/LoHa": "LoHa", "LyCORIS/LoKr": "LoKr", "Kohya DyLoRA": "DyLoRA"}
PRECISIONS = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}
SAVE_PRECISIONS = {"float": "fp32", "fp16": "fp16", "bf16": "bf16"}
# kohya's sample sampler names -> ComfyUI's
SAMPLERS = {"ddim": "ddim", "euler": "euler", "euler_a": "euler_ancestral", "k_euler": "euler",
            "k_euler_a": "euler_ancestral", "heun": "heun", "dpm_2": "dpm_2", "k_dpm_2": "dpm_2",
            "dpm_2_a": "dpm_2_ancestral", "k_dpm_2_a": "dpm_2_ancestral", "lms": "lms", "k_lms": "lms",
            "dpmsolver++": "dpmpp_2m", "dpmsingle": "dpmpp_sde"}


@dataclass
class GuiImport:
    values: dict[str, dict]
    dataset: dict
    kohya_config: str = ""
    mapped: list[str] = field(default_factory=list)
    not_used: list[str] = field(default_factory=list)         # set in the GUI, nothing here does it
    off: list[str] = field(default_factory=list)              # no equivalent, at their off value
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"kohya_ss GUI config: {len(self.mapped)} key(s) mapped."]
        if self.not_used:
            lines.append("Set in the GUI config but without an equivalent here (NOT used by this run):")
            lines += [f"  {item}" for item in self.not_used]
        if self.off:
            lines.append(f"Without an equivalent, at their off value: {', '.join(self.off)}.")
        lines += self.notes
        return "\n".join(lines)

    def toml_text(self, source: str) -> str:
        heading = [f"Imported from the kohya_ss GUI config {source} by `python -m trainer import-kohya`."]
        heading += self.report().splitlines()
        datasets = [] if self.kohya_config else [self.dataset]
        text = sections_text(self.values, datasets)
        if self.kohya_config:
            text += f"\n[dataset]\nkohya_config = {json.dumps(self.kohya_config)}\n"
        return "".join(f"# {line}\n" for line in heading) + "\n" + text


def json_line(text: str, key: str) -> int | None:
    needle = json.dumps(key) + ":"
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line.replace('" :', '":'):
            return number
    return None


def is_off(value) -> bool:
    return value in (None, "", 0, 0.0, False, "none", "None", [], {})


class _Converter:
    def __init__(self, path: str, text: str, gui: dict):
        self.path, self.text, self.gui = path, text, gui
        self.result = GuiImport({section.name: defaults(section.name) for section in SECTIONS if not section.repeated},
                                defaults("dataset"))

    def error(self, key: str, message: str) -> ConfigError:
        line = json_line(self.text, key)
        return ConfigError(f"{os.path.basename(self.path)}:{line or '?'}: {key}: {message}")

    def typed(self, gui_key: str, section: str, key: str, value):
        kind = KEYS_BY_SECTION[section][key].kind
        try:
            if kind in ("int", "float") and isinstance(value, str):
                value = float(value) if kind == "float" else int(float(value))
            if kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            if kind == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
        except ValueError:
            raise self.error(gui_key, f"expected a number, got {value!r}.") from None
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool), "str": isinstance(value, str), "path": isinstance(value, str),
              "resolution": isinstance(value, (int, list))}[kind]
        if not ok:
            raise self.error(gui_key, f"expected {kind}, got {value!r}.")
        return float(value) if kind == "float" else value

    def put(self, gui_key: str, section: str, key: str, value) -> None:
        value = self.typed(gui_key, section, key, value)
        if section == "dataset":
            self.result.dataset[key] = value
        else:
            self.result.values[section][key] = value
        self.result.mapped.append(gui_key)

    def get(self, key: str, default=None):
        return self.gui.get(key, default)

    def convert(self) -> GuiImport:
        gui, result = self.gui, self.result
        for gui_key, (section, key) in DIRECT.items():
            if gui_key in gui and not (gui_key in ("network_weights", "reg_data_dir") and is_off(gui[gui_key])):
                if gui_key == "save_last_n_epochs" and is_off(gui[gui_key]):
                    continue
                self.put(gui_key, section, key, gui[gui_key])
        if "save_last_n_epochs" in gui and not is_off(gui["save_last_n_epochs"]):
            result.notes.append("save_last_n_epochs became keep_last_n, which counts every intermediate save "
                                "(epochs and steps alike).")
        self.convert_special()
        for key, value in gui.items():
            if key in DIRECT or key in CONVERTED:
                continue
            if key in DECIDED_BY_THE_MODEL:
                if not is_off(value):
                    result.notes.append(f"{key}: the model file decides it here (the family and prediction type "
                                        "come from the checkpoint).")
                continue
            (result.off if is_off(value) else result.not_used).append(
                key if is_off(value) else f"{key} = {json.dumps(value)} (line {json_line(self.text, key)})")
        return result

    def convert_special(self) -> None:
        gui, result, values = self.gui, self.result, self.result.values
        if "max_resolution" in gui:
            try:
                width, height = (int(part) for part in str(gui["max_resolution"]).split(","))
            except ValueError:
                raise self.error("max_resolution", "expected 'width,height' such as '512,512'.") from None
            values["buckets"]["resolution"] = width if width == height else [width, height]
            result.mapped.append("max_resolution")
        lora_type = gui.get("LoRA_type", "Standard")
        if lora_type not in LORA_TYPES:
            raise self.error("LoRA_type", f"{lora_type!r} has no equivalent here; this trainer offers "
                                          f"{', '.join(LORA_TYPES)}.")
        values["network"]["algorithm"] = LORA_TYPES[lora_type]
        result.mapped.append("LoRA_type")
        if lora_type == "LyCORIS/LoCon":
            result.notes.append("LyCORIS/LoCon trains as kohya's LoCon (networks.lora with conv_dim): the same "
                                "layers and key names.")
        unet_lr = float(gui.get("unet_lr") or 0)
        learning_rate = unet_lr or float(gui.get("learning_rate") or 0)
        if "learning_rate" in gui or "unet_lr" in gui:
            values["optimizer"]["learning_rate"] = learning_rate
            result.mapped += [key for key in ("learning_rate", "unet_lr") if key in gui]
        if gui.get("network_train_unet_only"):
            train = "unet"
        elif gui.get("network_train_text_encoder_only"):
            train = "text_encoder"
        elif "text_encoder_lr" in gui and not float(gui.get("text_encoder_lr") or 0):
            train = "unet"            # the GUI passes --network_train_unet_only when the text encoder lr is 0
        elif ("unet_lr" in gui or "learning_rate" in gui) and not learning_rate:
            train = "text_encoder"
        else:
            train = "both"
        values["network"]["train"] = train
        result.mapped += [key for key in ("network_train_unet_only", "network_train_text_encoder_only") if key in gui]
        if "lr_warmup" in gui:
            values["optimizer"]["lr_warmup"] = float(gui["lr_warmup"] or 0) / 100.0     # the GUI's is a percentage
            result.mapped.append("lr_warmup")
            if values["optimizer"]["lr_warmup_steps"] and values["optimizer"]["lr_warmup"]:
                values["optimizer"]["lr_warmup"] = 0.0
                result.notes.append("lr_warmup_steps is set, so the percentage lr_warmup is not used.")
        if "mixed_precision" in gui:
            if gui["mixed_precision"] not in PRECISIONS:
                raise self.error("mixed_precision", f"expected one of {', '.join(PRECISIONS)}.")
            values["training"]["precision"] = PRECISIONS[gui["mixed_precision"]]
            result.mapped.append("mixed_precision")
        if "save_precision" in gui:
            if gui["save_precision"] not in SAVE_PRECISIONS:
                raise self.error("save_precision", f"expected one of {', '.join(SAVE_PRECISIONS)}.")
            values["save"]["precision"] = SAVE_PRECISIONS[gui["save_precision"]]
            result.mapped.append("save_precision")
        epochs = int(float(gui.get("max_train_epochs") or 0)) or int(float(gui.get("epoch") or 0))
        if "epoch" in gui or "max_train_epochs" in gui:
            values["training"]["epochs"] = epochs
            result.mapped += [key for key in ("epoch", "max_train_epochs") if key in gui]
        self.convert_noise()
        if gui.get("cache_latents") is False:
            result.notes.append("cache_latents is off in the GUI config; this trainer always caches latents.")
        if "cache_latents" in gui:
            result.mapped.append("cache_latents")
        if "cache_latents_to_disk" in gui:
            values["buckets"]["cache"] = "disk" if gui["cache_latents_to_disk"] else "memory"
            result.mapped.append("cache_latents_to_disk")
        if "vae_batch_size" in gui:
            values["buckets"]["vae_batch_size"] = max(1, int(float(gui["vae_batch_size"] or 0)))
            result.mapped.append("vae_batch_size")
        if gui.get("output_dir"):
            values["output"]["loras_folder"] = gui["output_dir"]
            values["output"]["runs_folder"] = os.path.join(gui["output_dir"], "lora-trainer")
            result.mapped.append("output_dir")
        sampler = gui.get("sample_sampler")
        if sampler:
            if sampler not in SAMPLERS:
                result.not_used.append(f"sample_sampler = {json.dumps(sampler)} (no ComfyUI sampler of that name; "
                                       "euler is used)")
            else:
                values["previews"]["sample_sampler"] = SAMPLERS[sampler]
                result.mapped.append("sample_sampler")
        if gui.get("dataset_config"):
            result.kohya_config = gui["dataset_config"]
            result.mapped.append("dataset_config")
            result.notes.append("dataset_config is set: the dataset comes from that kohya file (train_data_dir and "
                                "the caption keys above are not used).")
        if gui.get("save_model_as", "safetensors") != "safetensors":
            result.not_used.append(f"save_model_as = {json.dumps(gui['save_model_as'])} (files are safetensors)")
        elif "save_model_as" in gui:
            result.mapped.append("save_model_as")

    def convert_noise(self) -> None:
        gui, result, objective = self.gui, self.result, self.result.values["objective"]
        kind = gui.get("noise_offset_type", "Original")
        if kind == "Multires":
            for gui_key, key in (("multires_noise_iterations", "multires_noise_iterations"),
                                 ("multires_noise_discount", "multires_noise_discount")):
                if gui_key in gui:
                    objective[key] = self.typed(gui_key, "objective", key, gui[gui_key])
            if not is_off(gui.get("noise_offset")):
                result.notes.append("noise_offset_type is Multires, so noise_offset is not used (as the GUI does).")
        else:
            if "noise_offset" in gui:
                objective["noise_offset"] = self.typed("noise_offset", "objective", "noise_offset", gui["noise_offset"])
            if not is_off(gui.get("multires_noise_iterations")):
                result.notes.append("noise_offset_type is Original, so the multires noise keys are not used.")
        result.mapped += [key for key in ("noise_offset_type", "noise_offset", "multires_noise_iterations",
                                          "multires_noise_discount") if key in gui]


def import_gui_config(path: str) -> GuiImport:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        gui = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: is not valid JSON ({exc}).") from None
    if not isinstance(gui, dict):
        raise ConfigError(f"{path}: expected a kohya_ss GUI config (a JSON object of settings).")
    return _Converter(path, text, gui).convert()
