"""Reading a run directory for the report, tolerant of every missing part.

Each loader returns None (or empty) when its input is absent or unreadable and
records why in `RunInputs.missing`, so a report on a run that only generated
data still renders, naming what it could not show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import yaml

from lab_ray.storage import StoragePath
from lab_ray.training_data import TRAINING_DATASETS



@dataclass
class RunInputs:
    run_dir: StoragePath
    stats: dict | None = None
    recipe: dict | None = None
    samples: dict[str, dict] = field(default_factory=dict)  # leaf -> {rows, short, long, phase, branch, kind, examples}
    metrics: list[dict] = field(default_factory=list)
    journal: dict | None = None
    eval: dict | None = None
    mcq_meta: dict | None = None
    calibration: dict | None = None  # sdg/calibration.json: the judges' reference levels per leaf
    missing: dict[str, str] = field(default_factory=dict)  # section -> why

    @property
    def leaves(self) -> list[str]:
        names = set(self.samples)
        if self.stats:
            names |= set(self.stats.get("leaves", {}))
        if self.eval:
            names |= set(self.eval.get("comparison") or {})
        return sorted(names)


def _json(path: StoragePath, what: str, missing: dict, key: str) -> dict | None:
    if not path.is_file():
        missing[key] = f"{what} ({path}) is missing"
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError) as e:
        missing[key] = f"{what} ({path}) cannot be read: {e}"
        return None


def read_samples(data_dir: StoragePath, per_leaf: int, missing: dict) -> dict[str, dict]:
    """Counts per leaf from the messages JSONL, streamed line by line; a few examples per leaf."""
    out: dict[str, dict] = {}
    files = [p for phase in TRAINING_DATASETS for p in sorted((data_dir / phase).glob("part-*.jsonl"))]
    if not files:
        missing["samples"] = f"no training samples ({data_dir}/knowledge_train|skills_train/part-*.jsonl)"
        return out
    for path in files:
        phase = path.parent.name
        if True:  # one shard at a time (shards are small), local or object store
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    meta = rec.get("metadata") or {}
                    leaf = str(meta.get("leaf") or "unknown")
                except (ValueError, AttributeError):
                    continue
                s = out.setdefault(leaf, {"rows": 0, "short": 0, "long": 0, "phase": phase,
                                          "branch": meta.get("branch", ""), "kind": meta.get("kind", ""),
                                          "examples": []})
                s["rows"] += 1
                s["long" if meta.get("length") == "long" else "short"] += 1
                if len(s["examples"]) < per_leaf and isinstance(rec.get("messages"), list):
                    s["examples"].append(rec)
    return out


def read_run(run_dir, examples_per_leaf: int = 2) -> RunInputs:
    from lab_ray.train.metrics import read as read_metrics

    run_dir = StoragePath(run_dir)
    r = RunInputs(run_dir)
    data = run_dir / "data"
    r.stats = _json(data / "stats.json", "generation statistics", r.missing, "stats")
    recipe = data / "recipe.yaml"
    if recipe.is_file():
        try:
            r.recipe = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            r.missing["recipe"] = f"recipe ({recipe}) cannot be read: {e}"
    else:
        r.missing["recipe"] = f"recipe ({recipe}) is missing"
    r.samples = read_samples(data, examples_per_leaf, r.missing)
    calibration = run_dir / "sdg" / "calibration.json"
    if calibration.is_file():
        r.calibration = _json(calibration, "judge calibration", r.missing, "calibration")
    metrics = run_dir / "train" / "metrics.jsonl"
    r.metrics = read_metrics(metrics)
    if not r.metrics:
        r.missing["train"] = f"training metrics ({metrics}) are missing: no training has run"
    journal = run_dir / "train" / "journal.json"
    if journal.is_file():
        r.journal = _json(journal, "training journal", r.missing, "journal")
    r.eval = _json(run_dir / "eval" / "results.json", "evaluation results", r.missing, "eval")
    meta = run_dir / "eval" / "knowledge_mcq.meta.json"
    if meta.is_file():
        r.mcq_meta = _json(meta, "MCQ generation statistics", r.missing, "mcq")
    return r
