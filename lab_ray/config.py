"""Typed configuration: dataclass schema + conf/ YAML + --config FILE + key=value.

Merge order (later wins): the dataclass defaults, `conf/defaults.yaml`, the
profile files chosen in `profiles` (e.g. `conf/teacher/cpu.yaml` goes into
`teacher`), `--config FILE`, then dotlist overrides. The schema is a structured
OmegaConf config, so an unknown key or a wrong type is an error naming the key.
A profile is chosen with `profiles.teacher=NAME` or the shorthand `teacher=NAME`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lab_ray.errors import ConfigError
from lab_ray.resources import conf_dir
from lab_ray.eval.config import EvalConfig
from lab_ray.report.config import ReportConfig
from lab_ray.pipeline.config import PipelineConfig, SubmitConfig
from lab_ray.sdg.config import SDGConfig
from lab_ray.taxonomy.config import TaxonomyConfig
from lab_ray.teacher.config import TeacherConfig
from lab_ray.train.config import TrainConfig

PROFILE_GROUPS = ("teacher", "sdg", "train")


@dataclass
class RunConfig:
    name: str = "default"
    # Run directories live under root: runs/<name>/ (a rerun with a name resumes).
    root: str = "runs"


@dataclass
class RayConfig:
    # None: start a local Ray in-process; "auto" or ray://... to attach.
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    include_dashboard: bool = False


@dataclass
class ProfilesConfig:
    teacher: str = "cpu"
    sdg: str = ""
    train: str = ""


@dataclass
class LabRayConfig:
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    sdg: SDGConfig = field(default_factory=SDGConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def _read_yaml(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read: {e}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path}{line} is not valid YAML: {getattr(e, 'problem', e)}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _anchor_paths(data: dict, base: Path) -> dict:
    """Relative repo_map directories in a config file are relative to that file. One inside
    the working directory stays relative to it, as taxonomy.path does: a Ray Job unpacks its
    working directory on every node at a different absolute path, and a task on another node
    (a checkpoint scorer loading the taxonomy) resolves it against its own copy."""
    repo_map = ((data.get("taxonomy") or {}).get("documents") or {}).get("repo_map")
    if isinstance(repo_map, dict):
        cwd = Path.cwd().resolve()
        for url, local in repo_map.items():
            if isinstance(local, str) and not Path(local).expanduser().is_absolute():
                target = (base / local).resolve()
                repo_map[url] = str(target.relative_to(cwd)) if target.is_relative_to(cwd) else str(target)
    return data


def _split_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Separate profile shorthands (`teacher=NAME`) from dotlist overrides."""
    profiles: dict[str, str] = {}
    dotlist: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in PROFILE_GROUPS:
            profiles[key] = value
        elif key.startswith("profiles."):
            profiles[key.split(".", 1)[1]] = value
        else:
            dotlist.append(item)
    return profiles, dotlist


def _merge(base: DictConfig, data: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, data)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        if key:
            raise ConfigError(f"{source}: setting '{key}': {msg}")
        raise ConfigError(f"{source}: {msg}")


def load_config(overrides: Sequence[str] = (), config_file: str | None = None) -> DictConfig:
    """Resolve the full configuration; raises ConfigError naming the bad key."""
    cfg: DictConfig = OmegaConf.structured(LabRayConfig)
    cdir = conf_dir()
    defaults_path = cdir / "defaults.yaml"
    layers: list[tuple[dict, str]] = []
    if defaults_path.exists():
        layers.append((_anchor_paths(_read_yaml(defaults_path, "config file"), cdir), str(defaults_path)))
    user: dict = {}
    if config_file:
        user = _anchor_paths(_read_yaml(Path(config_file), "config file"), Path(config_file).parent)
    cli_profiles, dotlist = _split_overrides(overrides)

    # Which profile of each group: defaults.yaml < --config < command line.
    chosen: dict[str, str] = dict(OmegaConf.to_container(cfg.profiles))  # type: ignore[arg-type]
    for data, _ in layers + [(user, "")]:
        chosen.update({k: v for k, v in (data.get("profiles") or {}).items() if v is not None})
    chosen.update(cli_profiles)
    for group, name in chosen.items():
        if group not in PROFILE_GROUPS:
            raise ConfigError(f"profiles.{group}: unknown profile group (known: {', '.join(PROFILE_GROUPS)})")
        if not name:
            continue
        path = cdir / group / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in (cdir / group).glob("*.yaml")) if (cdir / group).is_dir() else []
            raise ConfigError(f"{group} profile {name!r} not found at {path} (known: {', '.join(known) or 'none'})")
        layers.append(({group: _read_yaml(path, "profile"), "profiles": {group: name}}, str(path)))
    if config_file:
        layers.append((user, config_file))
    for data, source in layers:
        cfg = _merge(cfg, data, source)
    try:
        cfg.merge_with_dotlist(dotlist)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        raise ConfigError(f"override '{key}': {str(e).splitlines()[0]}")
    cfg = _merge(cfg, {"profiles": cli_profiles}, "command line") if cli_profiles else cfg
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config interpolation failed: {str(e).splitlines()[0]}")
    return cfg
