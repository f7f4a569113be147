"""The table of every key a training TOML may hold: its section, type, default and meaning.

One row per key; the parser (config.py), the reference in docs/cli.md (`python -m trainer keys --markdown`) and
the example config (`python -m trainer keys --toml`) all read this table. Key names are the node inputs' names
(tests/comfyui/test_cli_matches_nodes.py checks every node input has its key here, with the node's default and
choices), so a setting reads the same in a workflow and in a TOML file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..dataset.caption_processing import CaptionOptions
from ..dataset.images import RESIZE_INTERPOLATIONS
from ..latent_cache import CACHE_MODES
from ..networks import ALGORITHMS, TRAIN_ON
from ..flow_objective import TIMESTEP_SAMPLINGS, WEIGHTING_SCHEMES, FlowSettings
from ..objective_settings import HUBER_SCHEDULES, LOSS_TYPES, ObjectiveSettings
from ..optimizers import OPTIMIZERS
from ..plan import MAX_TOKEN_LENGTHS, PRECISIONS
from ..schedules import SCHEDULES

# the kinds of value a key takes; "path" is a string resolved against the config file's folder, "resolution" an
# integer or [width, height]; a key whose default is None may be left out ("the optimizer's own default")
KINDS = ("str", "int", "float", "bool", "path", "resolution")
TRANSPARENCY = ("on white", "raw colour (kohya)")     # Bucket & Cache Latents' transparency options
WEIGHT_DTYPES = ("auto", "fp32", "fp16", "bf16")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")          # Save Safetensors' options (lora_file.SAVE_DTYPES)


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    kind: str
    default: object
    help: str
    choices: tuple = ()

    @property
    def optional(self) -> bool:
        """Left out, the key means "not given" (None), as a node widget at -1 / default does."""
        return self.default is None


@dataclass(frozen=True)
class Section:
    name: str
    help: str
    node: str = ""                   # the node whose inputs the section holds ("" for the CLI's own)
    repeated: bool = False           # may be an array of tables ([[dataset]])


SECTIONS = (
    Section("model", "The base model to train on."),
    Section("output", "Where the run's files go (relative paths: from the config file's folder)."),
    Section("dataset", "A dataset folder in kohya's layout (N_name sub-folders); repeat [[dataset]] to train "
                       "several folders together, each with its own caption settings (the node's add_to). Or "
                       "`kohya_config = \"dataset.toml\"` alone: kohya's dataset_config (see docs/cli.md).",
            "LoRALoadDatasetFolder", repeated=True),
    Section("buckets", "Aspect-ratio buckets and the latent cache.", "LoRABucketCacheLatents"),
    Section("network", "The LoRA network.", "LoRAConfigure"),
    Section("optimizer", "Optimizer, learning rates and schedule. A key left out uses the optimizer's own "
                         "default (the node's -1 / default).", "LoRAOptimizer"),
    Section("training", "The run: length, batch, seed, precision, saves.", "LoRATrain"),
    Section("objective", "kohya's loss and noise options.", "LoRATrain"),
    Section("flow", "Flow-matching models only (Flux.1, Chroma, SD3.x, Qwen-Image, Wan...): kohya's timestep "
                    "sampling and guidance; ignored for SD1.x / SD2.x / SDXL.", "LoRATrain"),
    Section("validation", "Validation loss: a held-out share of the images, or a validation folder.", "LoRATrain"),
    Section("previews", "In-training previews (ComfyUI checkpoints only: rendered with ComfyUI's sampler).",
            "LoRATrain"),
    Section("save", "The final LoRA file (Save Safetensors).", "LoRASaveSafetensors"),
)
SECTION_NAMES = tuple(section.name for section in SECTIONS)


def _caption_keys() -> list[Key]:
    defaults = CaptionOptions()
    helps = {
        "shuffle_caption": "Shuffle the comma-separated tags of each caption at every step.",
        "keep_tokens": "The first N tags stay in front, unshuffled and never dropped (e.g. the trigger).",
        "keep_tokens_separator": "e.g. '|||': tags before it stay fixed in front, after a second one at the end.",
        "caption_separator": "What separates tags.",
        "secondary_separator": "e.g. ';;;': 'sky;;;cloud' moves and drops as one tag, then becomes 'sky,cloud'.",
        "caption_dropout_rate": "Share of steps a sample trains with an empty caption.",
        "caption_dropout_every_n_epochs": "Every Nth epoch trains with empty captions; 0 = never.",
        "caption_tag_dropout_rate": "Each unfixed tag is left out with this probability at every step.",
        "caption_prefix": "Put before every caption.",
        "caption_suffix": "Put after every caption.",
    }
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    return [Key("dataset", f.name, kinds[type(getattr(defaults, f.name))], getattr(defaults, f.name), helps[f.name])
            for f in fields(CaptionOptions)]


OBJECTIVE_HELP = {
    "loss_type": "Loss between prediction and target: l2 (MSE), l1, huber or smooth_l1.",
    "huber_schedule": "How Huber c changes with the timestep (huber / smooth_l1 only).",
    "huber_c": "Huber threshold (huber / smooth_l1).",
    "huber_scale": "Scale of Huber c for the constant and exponential schedules.",
    "min_snr_gamma": "Min-SNR weighting; 0 = off, 5 is the paper's value.",
    "scale_v_pred_loss_like_noise_pred": "v-prediction models: scale the loss by SNR/(SNR+1).",
    "v_pred_like_loss": "Epsilon models: add this share of a v-prediction-like loss; 0 = off.",
    "debiased_estimation": "Weight the loss by 1/sqrt(SNR) (kohya's debiased_estimation_loss).",
    "noise_offset": "Per-channel constant noise; 0 = off, 0.05-0.15 usual.",
    "noise_offset_random_strength": "A random offset between 0 and noise_offset at each step.",
    "adaptive_noise_scale": "Adds this x the latent's mean absolute value to the offset (needs noise_offset).",
    "multires_noise_iterations": "Multi-resolution (pyramid) noise levels; 0 = off, 6-10 usual.",
    "multires_noise_discount": "Weight falloff per multires level.",
    "ip_noise_gamma": "Input perturbation noise; 0 = off, about 0.1.",
    "ip_noise_gamma_random_strength": "A random strength between 0 and ip_noise_gamma at each step.",
    "min_timestep": "Lowest timestep trained.",
    "max_timestep": "Timesteps are drawn below this.",
    "zero_terminal_snr": "v-prediction models: the last timestep becomes pure noise.",
}
OBJECTIVE_CHOICES = {"loss_type": LOSS_TYPES, "huber_schedule": HUBER_SCHEDULES}


def _objective_keys() -> list[Key]:
    defaults = ObjectiveSettings()
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    return [Key("objective", f.name, kinds[type(getattr(defaults, f.name))], getattr(defaults, f.name),
                OBJECTIVE_HELP[f.name], OBJECTIVE_CHOICES.get(f.name, ()))
            for f in fields(ObjectiveSettings)]


FLOW_HELP = {
    "timestep_sampling": "How sigmas are drawn; auto: the family's (Flux, Chroma: flux_shift; SD3: logit_normal; "
                         "others: shift).",
    "sigmoid_scale": "k in sigmoid(k u) for sigmoid, shift and flux_shift sampling.",
    "discrete_flow_shift": "The shift S for shift, sigma and logit_normal sampling; 0 = the model's own.",
    "weighting_scheme": "sigma sampling: the density of u (no loss weight with the raw velocity loss).",
    "logit_mean": "Mean of the logit-normal density.",
    "logit_std": "Standard deviation of the logit-normal density.",
    "mode_scale": "Scale of the mode density.",
    "guidance_scale": "Flux dev: the guidance input while training (kohya's docs advise 1.0).",
}
FLOW_CHOICES = {"timestep_sampling": TIMESTEP_SAMPLINGS, "weighting_scheme": WEIGHTING_SCHEMES}


def _flow_keys() -> list[Key]:
    defaults = FlowSettings()
    kinds = {int: "int", float: "float", str: "str"}
    return [Key("flow", f.name, kinds[type(getattr(defaults, f.name))], getattr(defaults, f.name),
                FLOW_HELP[f.name], FLOW_CHOICES.get(f.name, ())) for f in fields(FlowSettings)]


def _optional_number(name: str, help_text: str) -> Key:
    return Key("optimizer", name, "float", None, help_text + " Left out: the optimizer's own default.")


def _optional_switch(name: str, help_text: str) -> Key:
    return Key("optimizer", name, "bool", None, help_text + " Left out: the optimizer's own default.")


KEYS: tuple[Key, ...] = (
    Key("model", "path", "path", "builtin-tiny",
        "\"builtin-tiny\" (the demo's random tiny model), a diffusers-format folder (unet/, vae/, text_encoder/, "
        "tokenizer/, and text_encoder_2/ tokenizer_2/ for SDXL: SD1.x, SD2.x, SDXL), or a checkpoint file "
        "(.safetensors / .ckpt: SD1.x, SD2.x, SDXL; needs ComfyUI, found through COMFYUI_PATH or this pack's place in ComfyUI/custom_nodes)."),
    Key("model", "device", "str", "auto", "auto (CUDA when there is one, else CPU), cpu, cuda or cuda:N."),
    Key("model", "weights_dtype", "str", "auto",
        "The base weights' dtype for diffusers folders and builtin-tiny (auto: fp32; ComfyUI chooses for "
        "checkpoints).", WEIGHT_DTYPES),
    Key("model", "clip_skip", "int", 0,
        "Use the text encoder's Nth-last layer (kohya's clip_skip, ComfyUI's CLIPSetLastLayer -N); 0 or 1 = last."),

    Key("output", "loras_folder", "path", "output/loras",
        "LoRA files: intermediate saves, -interrupted files and the final file."),
    Key("output", "runs_folder", "path", "output/lora-trainer",
        "Run folders <runs_folder>/<run name>/: run.json, states, config.toml (for resume), loss.png, summary.txt."),

    Key("dataset", "folder", "path", "", "The folder holding N_name sub-folders (N = repeats per epoch). Required."),
    Key("dataset", "caption_extension", "str", ".txt", "Caption files are <image name><extension> beside each image."),
    Key("dataset", "regularization_folder", "path", "", "Regularization (class) images in the same layout; "
                                                        "\"\" = none."),
    Key("dataset", "repeats", "str", "", "Override repeat counts: 'sks dog=5, style=2'."),
    *_caption_keys(),
    Key("dataset", "flip_aug", "bool", False, "Also cache each image mirrored; training takes one at random."),
    Key("dataset", "alpha_mask", "bool", False, "Weight the loss by each image's transparency (or <name>_mask.png)."),
    Key("dataset", "random_crop", "bool", False, "kohya's random_crop: refused, latents are always cached."),
    Key("dataset", "color_aug", "bool", False, "kohya's color_aug: refused, latents are always cached."),
    Key("dataset", "kohya_config", "path", "",
        "kohya's dataset_config TOML ([general] / [[datasets]] / [[datasets.subsets]]) instead of folder; "
        "alone in its [dataset] table."),

    Key("buckets", "resolution", "resolution", 512, "Training resolution (or [width, height]); 512 for SD1.5."),
    Key("buckets", "min_bucket_reso", "int", 256, "Smallest bucket side."),
    Key("buckets", "max_bucket_reso", "int", 1024, "Largest bucket side."),
    Key("buckets", "bucket_reso_steps", "int", 64, "Bucket sides are multiples of this (64 for SD1.x/SD2/SDXL)."),
    Key("buckets", "bucket_no_upscale", "bool", False, "Never enlarge small images."),
    Key("buckets", "vae_batch_size", "int", 1, "Images encoded per VAE call."),
    Key("buckets", "cache", "str", "memory", "memory, or disk: also kohya .npz files beside the images, reused.",
        CACHE_MODES),
    Key("buckets", "resize_interpolation", "str", "auto", "kohya's resize_interpolation.", RESIZE_INTERPOLATIONS),
    Key("buckets", "transparency", "str", TRANSPARENCY[0], "Transparent pixels: on white, or the raw colour.",
        TRANSPARENCY),
    Key("buckets", "enable_bucket", "bool", True, "Off: one bucket, the resolution (kohya's enable_bucket)."),

    Key("network", "algorithm", "str", "LoRA", "LoRA, LoCon, LoHa, LoKr or DyLoRA.", tuple(ALGORITHMS)),
    Key("network", "rank", "int", 8, "network_dim."),
    Key("network", "alpha", "float", 1.0, "network_alpha; scale = alpha / rank; 0 means alpha = rank."),
    Key("network", "conv_rank", "int", 1, "LoCon: conv_dim, the rank of 3x3 convolutions."),
    Key("network", "conv_alpha", "float", 1.0, "LoCon: conv_alpha; 0 means conv alpha = conv rank."),
    Key("network", "network_dropout", "float", 0.0, "Drops units of each down projection while training."),
    Key("network", "rank_dropout", "float", 0.0, "Drops whole ranks per sample while training."),
    Key("network", "module_dropout", "float", 0.0, "Skips a module's whole update for a step."),
    Key("network", "train", "str", "unet", "Which parts get LoRA modules.", TRAIN_ON),
    Key("network", "dora", "bool", False, "DoRA (weight-decomposed LoRA) for LoRA and LoCon."),
    Key("network", "lokr_factor", "int", -1, "LoKr: LyCORIS's factor (-1: as balanced as possible)."),
    Key("network", "decompose_both", "bool", False, "LoKr: also write the smaller Kronecker factor as a product."),
    Key("network", "dylora_unit", "int", 1, "DyLoRA: the rank step trained at a time; must divide rank."),
    Key("network", "continue_from", "path", "", "Start from this LoRA file's weights; \"\" = a fresh LoRA."),

    Key("optimizer", "optimizer_type", "str", "AdamW8bit", "kohya's optimizer_type.", tuple(OPTIMIZERS)),
    Key("optimizer", "learning_rate", "float", 1e-4, "The UNet's learning rate (0 leaves the UNet's LoRA as it is)."),
    _optional_number("weight_decay", "Weight decay."),
    _optional_number("beta1", "Adam's / Lion's beta1."),
    _optional_number("beta2", "Adam's / Lion's beta2."),
    Key("optimizer", "lr_scheduler", "str", "cosine", "The learning-rate schedule.", tuple(SCHEDULES)),
    Key("optimizer", "lr_warmup", "float", 0.1, "Warmup as a share of all steps; 0 to give it in lr_warmup_steps."),
    Key("optimizer", "max_grad_norm", "float", 1.0, "Gradient clipping; 0 = off."),
    Key("optimizer", "text_encoder_lr", "float", 1e-4, "The text encoder's learning rate, when it trains."),
    Key("optimizer", "loraplus_lr_ratio", "float", 0.0, "LoRA+: the up matrices learn at lr x this; 0 = off."),
    _optional_number("eps", "The denominator's small term."),
    _optional_number("d_coef", "Prodigy: scales its estimated step."),
    _optional_switch("decouple", "AdamW-style decoupled weight decay."),
    _optional_switch("use_bias_correction", "Adam's bias correction."),
    _optional_switch("safeguard_warmup", "Prodigy: keeps d from growing too fast during warmup."),
    _optional_switch("relative_step", "Adafactor finds its own lr."),
    Key("optimizer", "extra_args", "str", "", "Any other optimizer argument, kohya's optimizer_args: 'key=value ...'."),
    Key("optimizer", "lr_warmup_steps", "int", 0, "Warmup as a number of steps (lr_warmup must be 0 then)."),
    Key("optimizer", "lr_scheduler_num_cycles", "int", 1, "cosine_with_restarts: how many cosines."),
    Key("optimizer", "lr_scheduler_power", "float", 1.0, "polynomial: the power of the decay."),

    Key("training", "output_name", "str", "my_lora", "The run's name and its files' stem; a taken name gets _2."),
    Key("training", "epochs", "int", 10, "The run's length in epochs (kohya's max_train_epochs); 0 = by max_steps."),
    Key("training", "max_steps", "int", 0, "The run's length in steps when epochs is 0 (kohya's max_train_steps)."),
    Key("training", "batch_size", "int", 1, "Images per batch (one bucket per batch)."),
    Key("training", "seed", "int", 42, "Seed for LoRA init, noise, timesteps and batch order."),
    Key("training", "precision", "str", "auto", "auto: bf16 where the GPU has it, else fp16 on a GPU, else fp32.",
        PRECISIONS),
    Key("training", "save_every_n_epochs", "int", 0, "Also save <name>-<epoch>.safetensors every N epochs."),
    Key("training", "save_every_n_steps", "int", 0, "Also save <name>-step<step>.safetensors every N steps."),
    Key("training", "keep_last_n", "int", 0, "Keep only the last N intermediate saves (and states); 0 = all."),
    Key("training", "prior_loss_weight", "float", 1.0, "Loss weight of regularization images."),
    Key("training", "gradient_accumulation_steps", "int", 1, "Batches whose gradients add up to one step."),
    Key("training", "gradient_checkpointing", "bool", False, "Recompute blocks in the backward pass (less memory)."),
    Key("training", "torch_compile", "bool", False, "Run the model through torch.compile (the LoRA traced in)."),
    Key("training", "dynamo_backend", "str", "inductor", "The torch.compile backend (kohya's dynamo_backend)."),
    Key("training", "channels_last", "bool", False, "The model's convolutions and the latents in NHWC layout."),
    Key("training", "max_token_length", "int", 75, "Captions are cut to this many tokens.", MAX_TOKEN_LENGTHS),
    Key("training", "scale_weight_norms", "float", 0.0, "Max-norm regularization of each module's update; 0 = off."),
    Key("training", "plan_only", "bool", False, "Stop after the plan and its time and memory estimate; nothing "
        "trains or is written."),

    *_objective_keys(),
    *_flow_keys(),

    Key("validation", "folder", "path", "", "A validation dataset folder (N_name layout, same bucket settings); "
                                            "\"\" = none."),
    Key("validation", "caption_extension", "str", ".txt", "The validation folder's caption extension."),
    Key("validation", "validation_split", "float", 0.0, "Or hold out this share of each training folder's images."),
    Key("validation", "validation_seed", "int", -1, "Seed of the held-out choice and noise; -1 = the training seed."),
    Key("validation", "validate_every_n_steps", "int", 0, "Also take the validation loss every N steps."),
    Key("validation", "validate_every_n_epochs", "int", 1, "Take the validation loss every N epochs; 0 = not."),

    Key("previews", "sample_prompts", "str", "", "One prompt per line, kohya's syntax (--n, --w, --h, --s, --l, --d)."),
    Key("previews", "sample_every_n_steps", "int", 0, "Render the prompts every N steps; 0 = off."),
    Key("previews", "sample_every_n_epochs", "int", 0, "Render the prompts every N epochs; 0 = off."),
    Key("previews", "sample_sampler", "str", "euler", "ComfyUI sampler for the previews."),
    Key("previews", "sample_scheduler", "str", "normal", "ComfyUI scheduler for the previews."),

    Key("save", "file_name", "str", "", "Name of the final file in loras_folder; \"\" = the run's name."),
    Key("save", "precision", "str", "fp16", "Tensor precision in the file.", SAVE_PRECISIONS),
    Key("save", "comment", "str", "", "Saved as ss_training_comment."),
)

KEYS_BY_SECTION: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    KEYS_BY_SECTION.setdefault(_key.section, {})[_key.name] = _key


def defaults(section: str) -> dict[str, object]:
    return {name: key.default for name, key in KEYS_BY_SECTION[section].items()}


def toml_value(value) -> str:
    """A value as TOML writes it (the strings, numbers, booleans and lists this table holds)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    text = str(value)
    if "\n" in text:
        return '"""\n' + text.replace("\\", "\\\\").replace('"""', '\\"""') + '"""'
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def reference_markdown() -> str:
    """docs/cli.md's key reference: one table per section."""
    lines = []
    for section in SECTIONS:
        header = f"[[{section.name}]]" if section.repeated else f"[{section.name}]"
        node = f" (node: {section.node})" if section.node else ""
        lines += [f"### `{header}`{node}", "", section.help, "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        for key in KEYS_BY_SECTION[section.name].values():
            default = "(left out)" if key.optional else f"`{toml_value(key.default)}`"
            meaning = key.help + (f" One of: {', '.join(f'`{c}`' for c in key.choices)}." if key.choices else "")
            lines.append(f"| `{key.name}` | {key.kind} | {default} | {meaning.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def example_toml() -> str:
    """Every key with its default, commented: a starting point (`python -m trainer keys --toml`)."""
    lines = ["# comfyui-lora-trainer run config: every key with its default (docs/cli.md).", ""]
    for section in SECTIONS:
        lines.append(f"[[{section.name}]]" if section.repeated else f"[{section.name}]")
        for key in KEYS_BY_SECTION[section.name].values():
            if key.name == "kohya_config":
                lines.append(f"# {key.name} = \"\"   # {key.help}")
                continue
            assignment = f"# {key.name} = (left out)" if key.optional else f"{key.name} = {toml_value(key.default)}"
            lines.append(f"{assignment:<44} # {key.help}")
        lines.append("")
    return "\n".join(lines)
