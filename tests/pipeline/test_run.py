"""`lab-ray run` end to end: the real CPU teacher, real generation, all training phases with
eval-based selection, eval against the base model, the report; then a rerun that resumes.

Runs as a subprocess with its own local Ray (as a user runs it), on the sample taxonomy with
tiny quotas and one optimizer step per phase: the point is the whole flow and its journal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from proc_marks import kill_marked

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

TINY_RUN = [
    "sdg.samples_per_leaf=4", "pipeline.require_every_leaf=false",
    "train.num_workers=1", "train.live=false", "train.selection.max_heldout_rows=4",
    *[f"train.{ph}.{k}" for ph in ("knowledge_short", "knowledge_long", "skills")
      for k in ("max_steps=1", "checkpoint_every=1", "max_seq_len=384")],
    "eval.skills.max_questions_per_leaf=1",
]


def lab_ray_run(root: Path, name: str, *extra: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    mark = uuid.uuid4().hex
    env = dict(os.environ, CI="1", LAB_RAY_TEST_MARK=mark, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    try:
        return subprocess.run([sys.executable, "-m", "lab_ray.cli", "run", f"run.root={root}", f"run.name={name}",
                               *TINY_RUN, *extra], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    finally:
        kill_marked(mark)  # any Ray process the run left behind


def test_run_end_to_end_then_resume(tmp_path):
    root = tmp_path / "runs"
    p = lab_ray_run(root, "e2e")
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    rdir = root / "e2e"
    journal = json.loads((rdir / "run.json").read_text())["steps"]
    assert [s for s in ("validate", "generate", "train", "eval", "report") if journal[s]["status"] != "done"] == []

    # Generation: every planned task accounted for, training data written.
    stats = json.loads((rdir / "data" / "stats.json").read_text())
    assert stats["total"]["rows"] == 4 * 4 and stats["total"]["kept"] == journal["generate"]["kept"] > 0
    # Training: the final model is the skills selection's choice, a plain HF directory.
    final = Path(journal["train"]["final_checkpoint"])
    train = json.loads((rdir / "train" / "journal.json").read_text())
    assert train["final_checkpoint"] == str(final) and (final / "model.safetensors").is_file()
    if train["phases"]["skills"]["status"] == "done":
        sel = train["selection"]["skills"]
        assert sel["metric"] == "phase_score" and sel["selected"] == str(final)
        assert all("heldout_loss" in s for s in sel["scores"].values())  # the tie-breaker was scored too
    # Eval: base vs trained, per leaf.
    results = json.loads(Path(journal["eval"]["path"]).read_text())
    assert set(journal["eval"]["summary"]) == {"trained", "base"}
    comparison = results["comparison"]
    assert len(comparison) == 4, comparison  # every leaf of the sample taxonomy
    skills = [v for v in comparison.values() if v["kind"] != "knowledge"]
    assert skills and all(1 <= v["trained"] <= 10 and 1 <= v["base"] <= 10 for v in skills), comparison
    # Report: Markdown + HTML with its plots, and the dataset card; the run prints where they are.
    report = rdir / "report"
    assert (report / "report.md").is_file() and (report / "report.html").is_file()
    assert (report / "dataset_card.md").is_file() and len(list(report.glob("*.png"))) >= 4
    assert f"model:  {final}" in p.stdout and f"report: {report / 'report.md'}" in p.stdout

    # Resume: a run stopped after training (eval and report not done) redoes only those.
    data = json.loads((rdir / "run.json").read_text())
    for step in ("eval", "report"):
        del data["steps"][step]
    (rdir / "run.json").write_text(json.dumps(data))
    model_mtime = (final / "model.safetensors").stat().st_mtime
    shard_mtimes = {f: f.stat().st_mtime for f in (rdir / "sdg" / "shards").iterdir()}
    p2 = lab_ray_run(root, "e2e")
    assert p2.returncode == 0, (p2.stdout[-3000:], p2.stderr[-3000:])
    again = json.loads((rdir / "run.json").read_text())["steps"]
    for step in ("generate", "train"):
        assert again[step] == journal[step], step  # not redone
    assert again["eval"]["status"] == again["report"]["status"] == "done"
    assert again["eval"]["summary"] == journal["eval"]["summary"]  # same model, same eval sets
    assert (final / "model.safetensors").stat().st_mtime == model_mtime
    assert {f: f.stat().st_mtime for f in (rdir / "sdg" / "shards").iterdir()} == shard_mtimes
    assert "generate:" not in p2.stdout and "train:" not in p2.stdout


def test_bad_override_is_one_clear_error(tmp_path):
    p = lab_ray_run(tmp_path, "bad", "sdg.samples_per_leaf=lots", timeout=120)
    assert p.returncode == 2 and "sdg.samples_per_leaf" in p.stderr and "Traceback" not in p.stderr
