"""Where a key sits in a TOML file, for error messages: tomllib gives values, not their line numbers.

The text is scanned line by line, tracking the `[table]` / `[[array.of.tables]]` headers (and which element of
each array a header opens), so a key path such as ("dataset", 1, "folder") or ("datasets", 0, "subsets", 2,
"image_dir") maps to the line that set it. Multi-line strings and arrays are stepped over.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_NAME = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_ASSIGNMENT = re.compile(rf"^\s*({_NAME}(?:\s*\.\s*{_NAME})*)\s*=")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", dotted))


class TomlLines:
    """Line numbers (1-based) of a TOML text's tables and keys, by key path."""

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        counters: dict[tuple, int] = {}          # array-of-tables path (concrete) -> elements seen
        table: tuple = ()
        in_string = None                         # the quote of an open multi-line string
        depth = 0                                # open brackets of a multi-line array
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            if depth:
                depth += line.count("[") - line.count("]")
                continue
            header = _HEADER.match(line)
            if header and "=" not in header.group(2):
                table = self._open(header.group(1) == "[[", _parts(header.group(2)), counters)
                self.lines.setdefault(table, number)
                continue
            assignment = _ASSIGNMENT.match(line)
            if not assignment:
                continue
            path = table + _parts(assignment.group(1))
            self.lines.setdefault(path, number)
            rest = line[assignment.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_string = quote
            if in_string is None:
                value = re.sub(r"""("[^"]*"|'[^']*')""", "", rest.split("#")[0])
                depth = max(0, value.count("[") - value.count("]"))

    def _concrete(self, names: tuple[str, ...], counters: dict[tuple, int]) -> tuple:
        """A header's names with the current element index after each array of tables on the way."""
        path: tuple = ()
        for name in names:
            path += (name,)
            if path in counters:
                path += (counters[path] - 1,)
        return path

    def _open(self, is_array: bool, names: tuple[str, ...], counters: dict[tuple, int]) -> tuple:
        if not is_array:
            return self._concrete(names, counters)
        parent = self._concrete(names[:-1], counters)
        array = parent + (names[-1],)
        counters[array] = counters.get(array, 0) + 1
        for other in [key for key in counters if len(key) > len(array) and key[:len(array)] == array]:
            del counters[other]                  # a new element starts its own nested arrays
        return array + (counters[array] - 1,)

    def line_of(self, path: tuple) -> int | None:
        """The line that set `path`, else the line of the nearest table around it, else None."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None
