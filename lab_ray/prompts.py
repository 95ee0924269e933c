"""Prompts are data: one YAML file per prompt in conf/prompts/ (or sdg.prompts_dir).

A prompt has a `system` text, a `turn_user` / `turn_assistant` pair rendered
once per in-context example (the example is `example`) and a final
`turn_user` for the row itself. Small teachers imitate chat turns much better
than examples pasted into one message. Templates are jinja2 with
StrictUndefined: a missing variable is an error, never an empty string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from lab_ray.resources import conf_dir
from lab_ray.errors import ConfigError

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    turn_user: str
    turn_assistant: str = ""
    stop: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    positive: str | None = None
    scores: dict = field(default_factory=dict)
    output_tags: tuple[str, ...] = ()

    def render(self, row: dict[str, Any], examples: list[dict] = ()) -> list[dict[str, str]]:
        try:
            messages = [{"role": "system", "content": _render(self.system, row).strip()}]
            for ex in examples:
                messages.append({"role": "user", "content": _render(self.turn_user, {**row, **ex}).strip()})
                messages.append({"role": "assistant",
                                 "content": _render(self.turn_assistant, {**row, "example": ex}).strip()})
            messages.append({"role": "user", "content": _render(self.turn_user, row).strip()})
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt {self.name}: {e} (a variable the template uses is missing)")
        return [m for m in messages if m["content"] or m["role"] != "system"]


@lru_cache(maxsize=256)
def _compile(template: str) -> jinja2.Template:
    return _ENV.from_string(template)


def _render(template: str, variables: dict) -> str:
    return _compile(template).render(**variables)


def prompts_dir(path: str | None) -> Path:
    return Path(path) if path else conf_dir() / "prompts"


def load_prompt(name: str, directory: str | None = None) -> Prompt:
    path = prompts_dir(directory) / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"prompt file {path} not found (sdg.prompts_dir)")
    except yaml.YAMLError as e:
        raise ConfigError(f"prompt file {path} is not valid YAML: {e}")
    if not isinstance(data, dict) or "turn_user" not in data:
        raise ConfigError(f"prompt file {path} must be a mapping with at least `system` and `turn_user`")
    known = set(Prompt.__dataclass_fields__) - {"name"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"prompt file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        for key in ("system", "turn_user", "turn_assistant"):
            _compile(str(data.get(key, "")))
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"prompt file {path}:{e.lineno}: template error: {e.message}")
    return Prompt(name=name, system=str(data.get("system", "")), turn_user=str(data["turn_user"]),
                  turn_assistant=str(data.get("turn_assistant", "")), stop=tuple(data.get("stop") or ()),
                  choices=tuple(str(c) for c in data.get("choices") or ()), positive=data.get("positive"),
                  scores=dict(data.get("scores") or {}), output_tags=tuple(data.get("output_tags") or ()))


def load_personas(directory: str | None = None) -> dict[str, str]:
    path = prompts_dir(directory) / "personas.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    if not isinstance(data, dict) or "default" not in data:
        raise ConfigError(f"{path} must map persona names to texts and define `default`")
    return {str(k): str(v).strip() for k, v in data.items()}


def persona_for(leaf_path: str, mapping: dict[str, str]) -> str:
    best = ""
    for prefix in mapping:
        if (leaf_path == prefix or leaf_path.startswith(prefix.rstrip("/") + "/")) and len(prefix) > len(best):
            best = prefix
    return mapping[best] if best else "default"
