"""Personas: the system text of the response stage, chosen by taxonomy path
(creative for writing and roleplay, precise for STEM and extraction)."""

from __future__ import annotations

import yaml

from lab_ray.errors import ConfigError
from lab_ray.prompts import prompts_dir


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
