"""Reading one YAML file defensively, and finding the line of a YAML path.

Every failure mode of a user's file (too big, not UTF-8, not YAML, empty, not a
mapping) becomes a Problem naming the file and line instead of an exception.
Line lookup replaces instructlab-schema's call to Go `yq` (`<path> | line`):
the only `yq` on PyPI and in Debian is the jq wrapper, which has no `line`, so
we read line numbers from PyYAML's own node marks instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab_ray.errors import Problem

_PATH_TOKEN = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\['([^']*)'\]")


@dataclass
class YamlSource:
    path: Path
    display: str  # how the file is named in messages
    text: str = ""
    data: Any = None
    node: yaml.Node | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def error(self, message: str, line: int | None = None) -> None:
        self.problems.append(Problem(message, self.display, line))

    def warning(self, message: str, line: int | None = None) -> None:
        self.problems.append(Problem(message, self.display, line, "warning"))

    def line_of(self, yaml_path: str) -> int | None:
        return line_for_path(self.node, yaml_path)


def read_yaml(path: Path, display: str, max_bytes: int) -> YamlSource:
    """Read, decode and parse; problems are recorded, never raised."""
    src = YamlSource(path, display)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            src.error(
                f"file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit for a qna.yaml "
                "(taxonomy.max_file_bytes); put long text in a knowledge document instead"
            )
            return src
        raw = path.read_bytes()
    except OSError as e:
        src.error(f"cannot be read: {e.strerror or e}")
        return src
    try:
        src.text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        src.error(f"is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); save the file as UTF-8", line)
        return src
    if not src.text.strip():
        src.error("file is empty; a qna.yaml needs version, created_by and seed_examples")
        return src
    try:
        src.node = yaml.compose(src.text, Loader=yaml.SafeLoader)
        src.data = yaml.safe_load(src.text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        src.error(msg, mark.line + 1 if mark is not None else None)
        return src
    if not isinstance(src.data, dict):
        src.error(f"top level must be a mapping of keys (version, created_by, seed_examples, ...), not {type(src.data).__name__}", 1)
    return src


def line_for_path(node: yaml.Node | None, yaml_path: str) -> int | None:
    """1-based line of `.seed_examples[2].answer`-style paths (jsonschema's json_path)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    path = yaml_path.lstrip("$")
    for m in _PATH_TOKEN.finditer(path):
        key = m.group(1) if m.group(1) is not None else m.group(3)
        if key is not None and isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == key:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif m.group(2) is not None and isinstance(node, yaml.SequenceNode):
            idx = int(m.group(2))
            if idx >= len(node.value):
                return line
            node = node.value[idx]
            line = node.start_mark.line + 1
        else:
            return line
    return line
