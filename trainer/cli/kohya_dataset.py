"""kohya's dataset_config TOML ([general] / [[datasets]] / [[datasets.subsets]]) read into this trainer's dataset.

kohya's own rule for a value: the subset's, else its dataset's, else [general]'s, else the command line's, else
sd-scripts' default (library/config_util.py). Here the command line is the run config: a dataset-level key
(resolution, batch_size, the bucket keys, validation_split / _seed, prior_loss_weight, max_token_length) that
kohya's file leaves out comes from [buckets] / [training] / [validation]; subset keys kohya's file leaves out
take sd-scripts' defaults (caption_extension ".caption", num_repeats 1). A key the run config sets itself and
kohya's file sets to another value is an error (the run could only follow one). Keys this trainer has no
equivalent for are refused with their line when set, and listed as ignored when at their "off" value.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ..dataset.caption_processing import CaptionOptions
from ..dataset.folders import scan_subset
from ..dataset.records import Dataset, check_unique_names
from ..errors import DatasetError

# subset keys: kohya's name -> (kind, sd-scripts' default)
SUBSET_KEYS = {
    "image_dir": ("path", None),
    "num_repeats": ("int", 1),
    "class_tokens": ("str", ""),
    "caption_extension": ("str", ".caption"),
    "is_reg": ("bool", False),
    "shuffle_caption": ("bool", False),
    "keep_tokens": ("int", 0),
    "keep_tokens_separator": ("str", ""),
    "caption_separator": ("str", ","),
    "secondary_separator": ("str", ""),
    "caption_prefix": ("str", ""),
    "caption_suffix": ("str", ""),
    "caption_dropout_rate": ("float", 0.0),
    "caption_dropout_every_n_epochs": ("int", 0),
    "caption_tag_dropout_rate": ("float", 0.0),
    "flip_aug": ("bool", False),
    "alpha_mask": ("bool", False),
    "random_crop": ("bool", False),
    "color_aug": ("bool", False),
    "resize_interpolation": ("str", None),        # run-wide here: [buckets] resize_interpolation
}
# dataset keys: kohya's name -> (run config section, key there)
DATASET_KEYS = {
    "resolution": ("buckets", "resolution"),
    "batch_size": ("training", "batch_size"),
    "enable_bucket": ("buckets", "enable_bucket"),
    "min_bucket_reso": ("buckets", "min_bucket_reso"),
    "max_bucket_reso": ("buckets", "max_bucket_reso"),
    "bucket_reso_steps": ("buckets", "bucket_reso_steps"),
    "bucket_no_upscale": ("buckets", "bucket_no_upscale"),
    "validation_split": ("validation", "validation_split"),
    "validation_seed": ("validation", "validation_seed"),
    "prior_loss_weight": ("training", "prior_loss_weight"),
    "max_token_length": ("training", "max_token_length"),
}
# kohya keys with no equivalent here: name -> (its "off" value, why)
WITHOUT_EQUIVALENT = {
    "enable_wildcard": (False, "wildcard captions ({a|b}) are not implemented"),
    "face_crop_aug_range": (None, "face-crop augmentation changes the image per step; latents are always cached"),
    "token_warmup_min": (1, "token warmup is not implemented"),
    "token_warmup_step": (0, "token warmup is not implemented"),
    "custom_attributes": (None, "custom attributes are for kohya's own extensions"),
    "network_multiplier": (1.0, "one network multiplier per dataset is not implemented"),
    "debug_dataset": (False, "kohya's dataset viewer; use Load Dataset Folder's summary (printed at the start)"),
    "metadata_file": (None, "fine-tuning datasets (captions in a JSON metadata file) are not supported: use "
                            "folders with caption files"),
    "conditioning_data_dir": (None, "ControlNet datasets are not supported"),
}
NOT_NEEDED = {"cache_info": "image sizes are read from the headers each time (fast)"}


@dataclass
class KohyaSubset:
    values: dict                       # SUBSET_KEYS' values
    where: str                         # "file:line" of its table


@dataclass
class KohyaDatasets:
    """kohya's subsets, the dataset-level values that apply to the run, and what was ignored."""

    path: str
    subsets: list[KohyaSubset]
    run_values: dict[tuple[str, str], object] = field(default_factory=dict)    # (section, key) -> value
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)           # the file's tables, paths absolute (stored for resume)

    def load(self) -> Dataset:
        """The subsets scanned as Load Dataset Folder scans an N_name folder, with their kohya options."""
        subsets, skipped, warnings = [], [], []
        for subset in self.subsets:
            values = subset.values
            scanned = scan_subset(values["image_dir"], values["num_repeats"], values["class_tokens"],
                                  values["caption_extension"], skipped, warnings, values["is_reg"],
                                  values["alpha_mask"])
            if scanned is None:
                continue
            options = CaptionOptions(**{name: values[name] for name in CaptionOptions.__dataclass_fields__})
            subsets.append(dataclasses.replace(scanned, caption_options=options.checked(),
                                               flip_aug=values["flip_aug"], alpha_mask=values["alpha_mask"],
                                               random_crop=values["random_crop"], color_aug=values["color_aug"]))
        if not subsets:
            reasons = "; ".join(item.describe() for item in skipped[:5])
            raise DatasetError(f"{self.path}: no subset has an image to train on ({reasons}).")
        check_unique_names(subsets)
        root = os.path.dirname(subsets[0].folder)
        return Dataset(root, subsets[0].caption_extension, tuple(subsets), (), tuple(skipped), tuple(warnings))


EXPECTED = {"str": "a string", "bool": "true or false", "int": "an integer", "float": "a number",
            "path": "a string (a path)", "resolution": "an integer or [width, height]"}


def _checked(source, kind: str, value, key_path: tuple):
    from .config import resolved_path, type_name

    ok = {"str": isinstance(value, str), "path": isinstance(value, str), "bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "resolution": (isinstance(value, int) and not isinstance(value, bool)) or (
              isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value))}[kind]
    if not ok:
        raise source.error(key_path, f"expected {EXPECTED[kind]}, got {type_name(value)} ({value!r}).")
    if kind == "path":
        return resolved_path(value, source, key_path)
    if kind == "resolution":
        return (value, value) if isinstance(value, int) else (value[0], value[1])
    return float(value) if kind == "float" else value


def _run_kind(section: str, key: str) -> str:
    from .options import KEYS_BY_SECTION

    return KEYS_BY_SECTION[section][key].kind


class _Reader:
    """One kohya file read against one run config."""

    def __init__(self, source, config):
        self.source, self.config = source, config
        self.result = KohyaDatasets(source.path or "config", [])
        self.run_choice: dict[tuple[str, str], tuple[object, str]] = {}     # (section, key) -> (value, where)

    def check_known(self, values: dict, place: tuple, level: str) -> None:
        from .config import unknown_key_error

        allowed = set(SUBSET_KEYS) | set(DATASET_KEYS) | set(WITHOUT_EQUIVALENT) | set(NOT_NEEDED)
        allowed |= {"subsets"} if level == "dataset" else set()
        allowed -= {"image_dir"} if level != "subset" else set()
        for name, value in values.items():
            if name not in allowed:
                raise unknown_key_error(self.source, place + (name,), sorted(allowed))
            where = self.source.where(place + (name,))
            if name in WITHOUT_EQUIVALENT:
                off, why = WITHOUT_EQUIVALENT[name]
                if value != off:
                    raise self.source.error(place + (name,), f"kohya's {name} has no equivalent here: {why}. "
                                                             "Remove it (or set it off) to train with this trainer.")
                self.result.notes.append(f"{where}: {name} ignored (off; {why})")
            elif name in NOT_NEEDED:
                self.result.notes.append(f"{where}: {name} ignored ({NOT_NEEDED[name]})")

    def choose(self, section: str, key: str, value, key_path: tuple) -> None:
        """A run-wide value kohya's file gives: the same wherever it is given."""
        where = self.source.where(key_path)
        if (section, key) in self.run_choice and self.run_choice[(section, key)][0] != value:
            first, first_where = self.run_choice[(section, key)]
            raise self.source.error(key_path, f"{value!r} differs from {first!r} at {first_where}; this trainer "
                                              "runs all datasets with one value.")
        self.run_choice[(section, key)] = (value, where)

    def dataset_values(self, general: dict, dataset: dict, place: tuple) -> None:
        for kohya_name, (section, key) in DATASET_KEYS.items():
            for values, where in ((dataset, place), (general, ("general",))):
                if kohya_name in values:
                    value = _checked(self.source, _run_kind(section, key), values[kohya_name], where + (kohya_name,))
                    self.choose(section, key, value, where + (kohya_name,))
                    break

    def subset_values(self, general: dict, dataset: dict, place: tuple, subset: dict, sub_place: tuple) -> dict:
        if "image_dir" not in subset:
            raise self.source.error(sub_place, "image_dir is missing: the folder of this subset's images.")
        values = {}
        for name, (kind, default) in SUBSET_KEYS.items():
            for candidate, where in ((subset, sub_place), (dataset, place), (general, ("general",))):
                if name in candidate:
                    values[name] = _checked(self.source, kind, candidate[name], where + (name,))
                    if name == "resize_interpolation":
                        self.choose("buckets", name, values[name], where + (name,))
                    break
            else:
                values[name] = default
        if not os.path.isdir(values["image_dir"]):
            raise self.source.error(sub_place + ("image_dir",), f"the folder {values['image_dir']} does not exist.")
        return values

    def read(self) -> KohyaDatasets:
        table, source = self.source.table, self.source
        general, datasets = table.get("general", {}), table.get("datasets", [])
        if not isinstance(general, dict):
            raise source.error(("general",), "expected a table ([general]).")
        if not isinstance(datasets, list) or not datasets:
            raise source.error(("datasets",), "no [[datasets]] table: kohya's dataset_config lists its datasets as "
                                              "[[datasets]], each with [[datasets.subsets]] (image_dir = ...).")
        self.check_known(general, ("general",), "general")
        for index, dataset in enumerate(datasets):
            place = ("datasets", index)
            if not isinstance(dataset, dict) or not dataset.get("subsets"):
                raise source.error(place, "a [[datasets]] table without [[datasets.subsets]]: give each subset's "
                                          "image_dir.")
            self.check_known(dataset, place, "dataset")
            self.dataset_values(general, dataset, place)
            for sub_index, subset in enumerate(dataset["subsets"]):
                sub_place = place + ("subsets", sub_index)
                self.check_known(subset, sub_place, "subset")
                values = self.subset_values(general, dataset, place, subset, sub_place)
                self.result.subsets.append(KohyaSubset(values, source.where(sub_place)))
        config = self.config
        for (section, key), (value, where) in self.run_choice.items():
            if (section, key) in config.given and config[section][key] != value:
                raise source.error(("datasets",), f"{where} sets {key} = {value!r} but [{section}] {key} is "
                                                  f"{config[section][key]!r}; give it in one place.")
            self.result.run_values[(section, key)] = value
        # what resume reads back: one dataset holding every subset (they share the run-wide values)
        run_wide = {name: list(self.run_choice[target][0]) if isinstance(self.run_choice[target][0], tuple)
                    else self.run_choice[target][0]
                    for name, target in DATASET_KEYS.items() if target in self.run_choice}
        subsets = [{name: value for name, value in subset.values.items() if value is not None}
                   for subset in self.result.subsets]
        self.result.raw = {"datasets": [{**run_wide, "subsets": subsets}]}
        return self.result


def read_kohya_datasets(source, config) -> KohyaDatasets:
    """kohya's tables in `source` (a dataset_config file, or the run config itself) for the run `config`."""
    return _Reader(source, config).read()
