"""A RunConfig turned into the engine's settings, exactly as the nodes turn their widgets into them: the
datasets (load_dataset_folder per [[dataset]], chained as add_to chains them), BucketSettings, NetworkConfig,
OptimizerConfig and TrainSettings. An engine check that fails is reported with its section's line."""

from __future__ import annotations

import re
from contextlib import contextmanager

from ..dataset import Dataset, load_dataset_folder
from ..dataset.buckets import BucketSettings
from ..dataset.caption_processing import CaptionOptions
from ..errors import TrainerError
from ..networks import NetworkConfig
from ..flow_objective import FlowSettings
from ..objective_settings import ObjectiveSettings
from ..optimizers import OptimizerConfig, completed_betas
from ..plan import TrainSettings
from ..validation import ValidationSettings
from .config import ConfigFileError, RunConfig


@contextmanager
def reported_at(config: RunConfig, key_path: tuple):
    """An engine error about a section, as a ConfigFileError at the line of the first key of that section the
    file sets and the message names, else at the section."""
    try:
        yield
    except ConfigFileError:
        raise
    except TrainerError as exc:
        message = str(exc)
        named = [name for (section, name) in sorted(config.given, key=lambda item: item[1])
                 if section == key_path[0] and re.search(rf"\b{re.escape(name)}\b", message)]
        place = key_path + (named[0],) if named else key_path
        raise config.source.error(place, message) from None


def dataset_place(config: RunConfig, index: int) -> tuple:
    return ("dataset", index) if isinstance(config.source.table.get("dataset"), list) else ("dataset",)


def load_training_dataset(config: RunConfig) -> Dataset:
    """Each [[dataset]] as a Load Dataset Folder node reads it, later ones added to the first (add_to); or
    kohya's subsets."""
    if config.kohya is not None:
        with reported_at(config, ("datasets",) if config.source.table.get("datasets") else ("dataset",)):
            return config.kohya.load()
    combined = None
    for index, values in enumerate(config.datasets):
        with reported_at(config, dataset_place(config, index)):
            options = CaptionOptions(**{name: values[name] for name in CaptionOptions.__dataclass_fields__})
            dataset = load_dataset_folder(values["folder"], values["caption_extension"],
                                          values["regularization_folder"], values["repeats"], options,
                                          values["flip_aug"], values["alpha_mask"], values["random_crop"],
                                          values["color_aug"])
            combined = dataset if combined is None else combined.combined_with(dataset)
    return combined


def load_validation_dataset(config: RunConfig) -> Dataset | None:
    values = config["validation"]
    if not values["folder"]:
        return None
    with reported_at(config, ("validation", "folder")):
        return load_dataset_folder(values["folder"], values["caption_extension"])


def bucket_settings(config: RunConfig) -> BucketSettings:
    """As the node builds them (cache_latents rounds them itself); checked here so an error names the section."""
    values = config["buckets"]
    resolution = values["resolution"]
    resolution = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    settings = BucketSettings(resolution, values["min_bucket_reso"], values["max_bucket_reso"],
                              values["bucket_reso_steps"], values["bucket_no_upscale"], values["enable_bucket"])
    with reported_at(config, ("buckets",)):
        settings.validated()
    return settings


def network_config(config: RunConfig) -> NetworkConfig:
    values = dict(config["network"])
    train_on = values.pop("train")
    with reported_at(config, ("network",)):
        return NetworkConfig(**values, train_on=train_on).validated()


def optimizer_config(config: RunConfig) -> OptimizerConfig:
    values = config["optimizer"]
    with reported_at(config, ("optimizer",)):
        return OptimizerConfig(
            optimizer_type=values["optimizer_type"], learning_rate=values["learning_rate"],
            text_encoder_lr=values["text_encoder_lr"], loraplus_lr_ratio=values["loraplus_lr_ratio"],
            weight_decay=values["weight_decay"],
            betas=completed_betas(values["optimizer_type"], values["beta1"], values["beta2"]),
            eps=values["eps"], d_coef=values["d_coef"], decouple=values["decouple"],
            use_bias_correction=values["use_bias_correction"], safeguard_warmup=values["safeguard_warmup"],
            relative_step=values["relative_step"], extra_args=values["extra_args"], scheduler=values["lr_scheduler"],
            warmup_ratio=values["lr_warmup"], warmup_step_count=values["lr_warmup_steps"],
            num_cycles=values["lr_scheduler_num_cycles"], power=values["lr_scheduler_power"],
            max_grad_norm=values["max_grad_norm"]).validated()


def train_settings(config: RunConfig) -> TrainSettings:
    training, validation, previews = config["training"], config["validation"], config["previews"]
    with reported_at(config, ("objective",)):
        objective = ObjectiveSettings(**config["objective"]).validated()
    with reported_at(config, ("flow",)):
        flow = FlowSettings(**config["flow"]).validated()
    with reported_at(config, ("validation",)):
        checked_validation = ValidationSettings(
            split=validation["validation_split"], seed=validation["validation_seed"],
            every_n_steps=validation["validate_every_n_steps"],
            every_n_epochs=validation["validate_every_n_epochs"]).validated()
    with reported_at(config, ("training",)):
        return TrainSettings(**training, objective=objective, flow=flow, validation=checked_validation,
                             sample_every_n_steps=previews["sample_every_n_steps"],
                             sample_every_n_epochs=previews["sample_every_n_epochs"]).validated()
