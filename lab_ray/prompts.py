"""Prompts are data: one YAML file per prompt in conf/prompts/ (or a prompts_dir).

Shared by generation (sdg) and evaluation (eval).

A prompt has a `system` text, a `turn_user` / `turn_assistant` pair rendered
once per in-context example (the example is `example`) and a final
`turn_user` for the row itself. A judge's prompt may also have
`turn_user_batch`: the question for several rows at once (`items`, the rows;
the other variables are the values the rows share), for
sdg.judge.rows_per_request. Small teachers imitate chat turns much better
than examples pasted into one message. Templates are jinja2 with
StrictUndefined: a missing variable is an error, never an empty string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
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
    turn_user_batch: str = ""  # several rows in one question (judges; `items` = the rows)
    path: str = field(default="", compare=False)  # the file it was loaded from (for errors)

    def variables(self) -> set[str]:
        """The row values the prompt reads: its templates' free variables; the
        example turns read `example` and the example's own keys, not the row's."""
        names = set().union(*(template_variables(t) for t in (self.system, self.turn_user)))
        return names | (template_variables(self.turn_assistant) - {"example"})

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

    def render_batch(self, shared: dict[str, Any], items: list[dict]) -> list[dict[str, str]]:
        """The system text and `turn_user_batch` for several rows: `items` are the rows, `shared`
        the values they have in common (the system text and the batch question read those)."""
        try:
            messages = [{"role": "system", "content": _render(self.system, shared).strip()},
                        {"role": "user", "content": _render(self.turn_user_batch, {**shared, "items": items}).strip()}]
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt {self.name}: {e} (a variable the batch template uses is missing)")
        return [m for m in messages if m["content"] or m["role"] != "system"]


@lru_cache(maxsize=256)
def _compile(template: str) -> jinja2.Template:
    return _ENV.from_string(template)


def _render(template: str, variables: dict) -> str:
    return _compile(template).render(**variables)


@lru_cache(maxsize=256)
def _variables(template: str) -> tuple[str, ...]:
    return tuple(sorted(jinja2.meta.find_undeclared_variables(_ENV.parse(template))))


def template_variables(template: str) -> set[str]:
    """The free variables a template reads (jinja2.meta)."""
    return set(_variables(template))


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
    known = set(Prompt.__dataclass_fields__) - {"name", "path"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"prompt file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        for key in ("system", "turn_user", "turn_assistant", "turn_user_batch"):
            _compile(str(data.get(key, "")))
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"prompt file {path}:{e.lineno}: template error: {e.message}")
    return Prompt(name=name, system=str(data.get("system", "")), turn_user=str(data["turn_user"]),
                  turn_assistant=str(data.get("turn_assistant", "")), stop=tuple(data.get("stop") or ()),
                  choices=tuple(str(c) for c in data.get("choices") or ()), positive=data.get("positive"),
                  scores=dict(data.get("scores") or {}), output_tags=tuple(data.get("output_tags") or ()),
                  turn_user_batch=str(data.get("turn_user_batch") or ""), path=str(path))


class MemoRenderer:
    """`Prompt.render` without per-row repeats (the hot path of a generation stage).

    A prompt's system text and its in-context example turns depend on a few
    leaf-level variables and on the row's example rotation only, so each
    template's output is memoised on the values of exactly the variables the
    template reads; the row's own final turn is rendered every time. The
    caller checks `render` against `Prompt.render` now and then (see
    sdg.stages.TeacherStage.messages) and falls back to the latter on any
    difference.
    """

    LIMIT = 4096  # entries per cache; cleared when full

    def __init__(self, prompt: Prompt):
        self.prompt = prompt
        self.vars = {t: _variables(t) for t in (prompt.system, prompt.turn_user, prompt.turn_assistant)}
        self.cache: dict = {}
        self.parsed: dict[str, list] = {}
        self.prefixes: dict = {}

    def examples(self, text: str) -> list[dict]:
        """A row's `examples` JSON, parsed once per distinct text."""
        out = self.parsed.get(text)
        if out is None:
            if len(self.parsed) >= self.LIMIT:
                self.parsed.clear()
            out = self.parsed[text] = json.loads(text)
        return out

    def prefix_vars(self, examples: list[dict]) -> tuple:
        """The row variables the system text and the example turns read (an example's own keys win)."""
        p = self.prompt
        names = set(self.vars[p.system])
        for ex in examples:
            names |= set(self.vars[p.turn_user]) - set(ex)
            names |= set(self.vars[p.turn_assistant]) - {"example"}
        return tuple(sorted(names))

    def prefix(self, row: dict, examples_text: str | None, examples: list[dict]) -> list[dict]:
        """System message + example turns, memoised on (examples text, the row values they read)."""
        names = self.prefix_vars(examples)
        key = (examples_text, tuple(row.get(v, MemoRenderer) for v in names))
        try:
            out = self.prefixes.get(key)
        except TypeError:
            return self._prefix(row, examples)
        if out is None:
            out = self._prefix(row, examples)
            if len(self.prefixes) >= self.LIMIT:
                self.prefixes.clear()
            self.prefixes[key] = out
        return out

    def _prefix(self, row: dict, examples: list[dict]) -> list[dict]:
        p = self.prompt
        messages = [{"role": "system", "content": self._cached(p.system, row)}]
        for ex in examples:
            messages.append({"role": "user", "content": self._cached(p.turn_user, {**row, **ex})})
            messages.append({"role": "assistant", "content": self._cached(p.turn_assistant, {**row, "example": ex})})
        return messages

    @staticmethod
    def _freeze(v):
        if isinstance(v, dict):
            return tuple(sorted((k, MemoRenderer._freeze(x)) for k, x in v.items()))
        if isinstance(v, list):
            return tuple(MemoRenderer._freeze(x) for x in v)
        return v

    def _cached(self, template: str, variables: dict) -> str:
        key = (template, tuple(self._freeze(variables.get(v, MemoRenderer)) for v in self.vars[template]))
        try:
            out = self.cache.get(key)
        except TypeError:  # an unhashable value: no memo
            return _render(template, variables).strip()
        if out is None:
            out = _render(template, variables).strip()
            if len(self.cache) >= self.LIMIT:
                self.cache.clear()
            self.cache[key] = out
        return out

    def render(self, row: dict, examples: list[dict], examples_text: str | None = None) -> list[dict[str, str]]:
        p = self.prompt
        try:
            messages = list(self.prefix(row, examples_text, examples))
            messages.append({"role": "user", "content": _render(p.turn_user, row).strip()})
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt {p.name}: {e} (a variable the template uses is missing)")
        return [m for m in messages if m["content"] or m["role"] != "system"]
