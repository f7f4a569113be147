"""Typed optimizer arguments and the strict parser of the node's free-form "extra arguments" field.

The field takes kohya's `--optimizer_args` shape: `key=value` pairs separated by spaces or new lines, a
tuple as comma-separated numbers (`betas=0.9,0.99`). Each value is parsed as the type its argument has;
an unknown key, a repeated key or a value of the wrong type is a ConfigError that names what is valid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

KINDS = ("float", "int", "bool", "pair", "triple", "float_or_none")
_EXAMPLES = {"float": "0.5", "int": "4096", "bool": "true", "pair": "0.9,0.999", "triple": "0.98,0.92,0.99",
             "float_or_none": "0.9 or None"}


@dataclass(frozen=True)
class Argument:
    name: str
    kind: str                     # one of KINDS
    default: Any                  # the optimizer class's own default
    help: str = ""

    def parse(self, text: str, where: str) -> Any:
        """`text` as this argument's type; `where` names the field for the error."""
        problem = (f"{where}: {self.name}={text} is not {self._expected()}; write e.g. "
                   f"{self.name}={_EXAMPLES[self.kind]}")
        text = text.strip().strip("()[]").strip()
        try:
            if self.kind == "bool":
                if text.lower() not in ("true", "false"):
                    raise ValueError
                return text.lower() == "true"
            if self.kind == "int":
                return int(text)
            if self.kind == "float_or_none" and text.lower() == "none":
                return None
            if self.kind in ("float", "float_or_none"):
                return _number(text)
            values = tuple(_number(part) for part in text.split(","))
        except ValueError:
            raise ConfigError(problem + ".") from None
        if len(values) != (2 if self.kind == "pair" else 3):
            raise ConfigError(problem + ".")
        return values

    def _expected(self) -> str:
        return {"float": "a number", "int": "a whole number", "bool": "true or false",
                "pair": "two numbers", "triple": "three numbers",
                "float_or_none": "a number or None"}[self.kind]


def _number(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise ValueError(text)
    return value


def format_value(value: Any) -> str:
    """As kohya writes an argument into ss_optimizer (`str(v)` of the parsed Python value)."""
    return str(value)


def parse_extra_arguments(text: str, arguments: tuple[Argument, ...], optimizer: str) -> dict[str, Any]:
    """`key=value ...` -> {key: typed value}; every key must be one of `arguments`."""
    by_name = {argument.name: argument for argument in arguments}
    valid = ", ".join(by_name) or "none"
    where = f"Optimizer extra arguments ({optimizer})"
    normalised = re.sub(r"\s*([=,])\s*", r"\1", text.strip())
    parsed: dict[str, Any] = {}
    for token in normalised.split():
        key, equals, value = token.partition("=")
        if not equals or not key or not value:
            raise ConfigError(f"{where}: {token!r} is not key=value. Write pairs separated by spaces, e.g. "
                              f"'weight_decay=0.01 betas=0.9,0.99'; {optimizer} takes: {valid}.")
        if key == "lr":
            raise ConfigError(f"{where}: set the learning rate with learning_rate / text_encoder_lr on the node, "
                              "not as an extra argument.")
        if key not in by_name:
            raise ConfigError(f"{where}: {optimizer} has no argument {key!r}. Valid ones: {valid}.")
        if key in parsed:
            raise ConfigError(f"{where}: {key} is given twice; keep one.")
        parsed[key] = by_name[key].parse(value, where)
    return parsed
