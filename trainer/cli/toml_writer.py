"""A RunConfig written back as TOML, paths absolute: the run folder's config.toml, which `resume` reads, and
what `import-kohya` writes."""

from __future__ import annotations

from .config import RunConfig
from .options import KEYS_BY_SECTION, SECTIONS, toml_value


def _table(header: str, values: dict, keys) -> list[str]:
    lines = [header]
    for name in keys:
        value = values.get(name)
        if value is not None:
            lines.append(f"{name} = {toml_value(value)}")
    return lines + [""]


def sections_text(values: dict[str, dict], datasets: list[dict], kohya_raw: dict | None = None) -> str:
    """Every section in the table's order; [[dataset]] tables, or kohya's [[datasets]] when the run used them."""
    lines: list[str] = []
    for section in SECTIONS:
        keys = KEYS_BY_SECTION[section.name]
        if not section.repeated:
            lines += _table(f"[{section.name}]", values.get(section.name, {}), keys)
            continue
        if kohya_raw is not None:
            for dataset in kohya_raw["datasets"]:
                lines += _table("[[datasets]]", dataset, [name for name in dataset if name != "subsets"])
                for subset in dataset["subsets"]:
                    lines += _table("[[datasets.subsets]]", subset, list(subset))
            continue
        for dataset in datasets:
            lines += _table("[[dataset]]", dataset, [name for name in keys if dataset.get(name) != ""
                                                     or name == "folder"])
    return "\n".join(lines)


def config_text(config: RunConfig, heading: str) -> str:
    kohya = config.kohya.raw if config.kohya is not None else None
    comment = "".join(f"# {line}\n" for line in heading.splitlines())
    return comment + "\n" + sections_text(config.values, config.datasets, kohya)
