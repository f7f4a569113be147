"""A training TOML read into checked values: every key known, of its type, among its choices, every folder there.

A bad key stops the run with the file, line and key in the message (ConfigFileError), never a stack trace.
`RunConfig` holds the values of every section with the table's defaults filled in (options.py), paths made
absolute; engine_settings.py turns it into the engine's settings objects, as the nodes do.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

from ..errors import ConfigError
from ..paths import path_text_problem
from .options import KEYS_BY_SECTION, SECTION_NAMES, SECTIONS, Key
from .toml_lines import TomlLines
from .tiny_model import BUILTIN_TINY

KOHYA_TABLES = ("general", "datasets")         # kohya's dataset_config tables, accepted inline too
REQUIRED_FOLDER = ("dataset", "folder")


class ConfigFileError(ConfigError):
    """A setting in a config file that cannot be used; the message names the file, the line and the key."""


@dataclass
class ConfigSource:
    """A parsed TOML file and how to point at places in it."""

    path: str                         # the file ("" for a config made in code)
    table: dict
    lines: TomlLines
    base_dir: str                     # relative paths in the file are read from here

    def where(self, key_path: tuple) -> str:
        line = self.lines.line_of(key_path)
        name = os.path.basename(self.path) if self.path else "config"
        return f"{name}:{line}" if line else name

    def error(self, key_path: tuple, message: str) -> ConfigFileError:
        return ConfigFileError(f"{self.where(key_path)}: {describe_path(key_path)}: {message}")


def describe_path(key_path: tuple) -> str:
    """("dataset", 1, "folder") -> "[[dataset]] #2 folder"; ("network", "rank") -> "[network] rank"."""
    if not key_path:
        return "the file"
    if len(key_path) > 1 and isinstance(key_path[1], int):
        head = f"[[{key_path[0]}]] #{key_path[1] + 1}"
        rest = key_path[2:]
    else:
        head, rest = f"[{key_path[0]}]", key_path[1:]
    tail = ".".join(f"#{part + 1}" if isinstance(part, int) else str(part) for part in rest)
    return f"{head} {tail}".strip()


def read_toml(path: str) -> ConfigSource:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    try:
        text = data.decode("utf-8")
        table = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: is not UTF-8 text; save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: is not valid TOML: {exc}.") from None
    return ConfigSource(os.path.abspath(path), table, TomlLines(text), os.path.dirname(os.path.abspath(path)))


def source_from_text(text: str, path: str, base_dir: str) -> ConfigSource:
    return ConfigSource(path, tomllib.loads(text), TomlLines(text), base_dir)


@dataclass
class RunConfig:
    """Every section's checked values (defaults filled in), the datasets, and what the file set itself."""

    source: ConfigSource
    values: dict[str, dict] = field(default_factory=dict)        # section -> key -> value
    datasets: list[dict] = field(default_factory=list)           # each [[dataset]] table's values
    kohya: object = None                                         # kohya_dataset.KohyaDatasets, when given
    given: set = field(default_factory=set)                      # (section, key) the file set

    def __getitem__(self, section: str) -> dict:
        return self.values[section]


def type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def checked_value(key: Key, value, source: ConfigSource, key_path: tuple):
    """The value as its kind, or ConfigFileError saying what was expected."""
    kind = key.kind
    expected = {"str": "a string", "path": "a string (a path)", "int": "an integer", "float": "a number",
                "bool": "true or false", "resolution": "an integer or [width, height]"}[kind]
    ok = {"str": isinstance(value, str), "path": isinstance(value, str),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "resolution": (isinstance(value, int) and not isinstance(value, bool)) or (
              isinstance(value, list) and len(value) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in value))}[kind]
    if not ok:
        raise source.error(key_path, f"expected {expected}, got {type_name(value)} ({value!r}).")
    if kind == "float":
        value = float(value)
    if kind == "resolution":
        value = (value, value) if isinstance(value, int) else (value[0], value[1])
    if key.choices and value not in key.choices:
        raise source.error(key_path, f"{value!r} is not one of {', '.join(repr(c) for c in key.choices)}.")
    if kind == "path":
        value = resolved_path(value, source, key_path)
    return value


def resolved_path(value: str, source: ConfigSource, key_path: tuple) -> str:
    """An absolute path, relative ones read from the config file's folder; "" and builtin-tiny stay as they are."""
    if value == "" or (key_path[-1] == "path" and value == BUILTIN_TINY):
        return value
    problem = path_text_problem(value)
    if problem:
        raise source.error(key_path, f"cannot be used: {problem}.")
    return os.path.normpath(os.path.join(source.base_dir, os.path.expanduser(value)))


def unknown_key_error(source: ConfigSource, key_path: tuple, known) -> ConfigFileError:
    name = key_path[-1]
    close = difflib.get_close_matches(str(name), list(known), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else f" Known here: {', '.join(known)}."
    if len(key_path) == 1:
        where = source.where(key_path)
        return ConfigFileError(f"{where}: unknown section [{name}].{hint}")
    return source.error(key_path, f"unknown key.{hint}")


def checked_section(source: ConfigSource, section: str, table, key_path: tuple, given: set) -> dict:
    if not isinstance(table, dict):
        raise source.error(key_path, f"expected a table ([{section}]), got {type_name(table)}.")
    keys = KEYS_BY_SECTION[section]
    values = {name: resolved_path(key.default, source, key_path + (name,)) if key.kind == "path" else key.default
              for name, key in keys.items()}
    for name, value in table.items():
        if name not in keys:
            raise unknown_key_error(source, key_path + (name,), keys)
        values[name] = checked_value(keys[name], value, source, key_path + (name,))
        given.add((section, name))
    return values


def check_places(config: RunConfig) -> None:
    """The folders and files the config names exist (the run would stop on them later, far from the line)."""
    source = config.source
    model = config["model"]["path"]
    if model != BUILTIN_TINY and not os.path.exists(model):
        raise source.error(("model", "path"), f"{model} does not exist. Give \"{BUILTIN_TINY}\", a diffusers-format "
                                              "folder or a checkpoint file.")
    for index, dataset in enumerate(config.datasets):
        place = ("dataset", index) if isinstance(source.table.get("dataset"), list) else ("dataset",)
        if dataset["kohya_config"]:
            require_file(source, place + ("kohya_config",), dataset["kohya_config"], "kohya's dataset_config")
            continue
        if not dataset["folder"]:
            raise source.error(place + ("folder",), "missing: give the folder that holds your N_name sub-folders "
                                                    "(or kohya_config, kohya's dataset_config file).")
        require_folder(source, place + ("folder",), dataset["folder"])
        if dataset["regularization_folder"]:
            require_folder(source, place + ("regularization_folder",), dataset["regularization_folder"])
    if config["validation"]["folder"]:
        require_folder(source, ("validation", "folder"), config["validation"]["folder"])
    if config["network"]["continue_from"]:
        require_file(source, ("network", "continue_from"), config["network"]["continue_from"], "a LoRA file")


def require_folder(source: ConfigSource, key_path: tuple, folder: str) -> None:
    if not os.path.exists(folder):
        raise source.error(key_path, f"the folder {folder} does not exist.")
    if not os.path.isdir(folder):
        raise source.error(key_path, f"{folder} is a file, not a folder.")


def require_file(source: ConfigSource, key_path: tuple, path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise source.error(key_path, f"{path} is not a file; give the path of {what}.")


def parse_config(source: ConfigSource) -> RunConfig:
    """Every table checked; the datasets from [[dataset]] tables, kohya_config, or inline kohya tables."""
    from .kohya_dataset import read_kohya_datasets

    table = source.table
    config = RunConfig(source)
    for name, value in table.items():
        if name in KOHYA_TABLES:
            continue
        if name not in SECTION_NAMES:
            raise unknown_key_error(source, (name,), SECTION_NAMES + KOHYA_TABLES)
    for section in SECTIONS:
        if section.repeated:
            continue
        config.values[section.name] = checked_section(source, section.name, table.get(section.name, {}),
                                                      (section.name,), config.given)
    datasets = table.get("dataset")
    inline_kohya = any(name in table for name in KOHYA_TABLES)
    if datasets is None and not inline_kohya:
        raise source.error(("dataset",), "no dataset: add a [dataset] table with folder = \"...\" (or kohya's "
                                         "[[datasets]] tables).")
    if datasets is not None and inline_kohya:
        raise source.error(("datasets",), "the dataset is given twice: [dataset] and kohya's [general] / "
                                          "[[datasets]]; keep one.")
    if datasets is not None:
        tables = datasets if isinstance(datasets, list) else [datasets]
        for index, dataset_table in enumerate(tables):
            place = ("dataset", index) if isinstance(datasets, list) else ("dataset",)
            values = checked_section(source, "dataset", dataset_table, place, config.given)
            if values["kohya_config"] and (len(dataset_table) > 1 or len(tables) > 1):
                raise source.error(place + ("kohya_config",), "kohya_config stands alone: it names every folder "
                                                              "and its options, so give no other [dataset] key.")
            config.datasets.append(values)
    check_places(config)
    if inline_kohya:
        config.kohya = read_kohya_datasets(source, config)
    elif config.datasets[0]["kohya_config"]:
        config.kohya = read_kohya_datasets(read_toml(config.datasets[0]["kohya_config"]), config)
    if config.kohya is not None:                # kohya's run-wide values (resolution, batch_size, ...) apply
        for (section, key), value in config.kohya.run_values.items():
            config.values[section][key] = value
    return config


def load_config(path: str) -> RunConfig:
    return parse_config(read_toml(path))
