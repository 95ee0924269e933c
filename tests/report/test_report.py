"""The run report on run directories built here in the real file formats, complete and partial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from lab_ray.config import load_config
from lab_ray.eval.runner import compare, summarize
from lab_ray.report.builder import write_report

REPO = Path(__file__).resolve().parents[2]
LEAVES = {
    "knowledge/geography/islands/varrow_island": ("knowledge", "knowledge", "knowledge_train"),
    "foundational_skills/reasoning/arithmetic_word_problems": ("freeform", "foundational_skills", "knowledge_train"),
    "compositional_skills/extraction/facts_to_list": ("grounded", "compositional_skills", "skills_train"),
    "compositional_skills/writing/poetry/haiku": ("freeform", "compositional_skills", "skills_train"),
}
PLOTS = ("samples_per_leaf.png", "funnel.png", "teacher_tokens.png", "loss.png", "eval_scores.png")


def _stats(seconds: float | None = None) -> dict:
    leaves = {}
    for i, (leaf, (kind, _, _)) in enumerate(LEAVES.items()):
        rows = 12 + i
        d1, d2 = 2 + i, 1
        kept = rows - d1 - d2
        first = "knowledge_qa" if kind == "knowledge" else "instruction"
        leaves[leaf] = {"kind": kind, "rows": rows, "kept": kept,
                        "dropped": {"unparsable": d1, "judge_low": d2},
                        "prompt_tokens": 1000 * (i + 1), "completion_tokens": 300 * (i + 1),
                        "stages": [{"stage": first, "in": rows, "kept": rows - d1, "dropped": {"unparsable": d1}},
                                   {"stage": "judge", "in": rows - d1, "kept": kept, "dropped": {"judge_low": d2}},
                                   {"stage": "dedup", "in": kept, "kept": kept, "dropped": {}}]}
    total = {k: sum(v[k] for v in leaves.values()) for k in ("rows", "kept", "prompt_tokens", "completion_tokens")}
    total["dropped"] = {"unparsable": sum(v["dropped"]["unparsable"] for v in leaves.values()),
                        "judge_low": len(leaves)}
    if seconds:
        total["seconds"] = seconds
    return {"leaves": leaves, "total": total, "written_at": 0}


def _write_generation(run: Path, seconds: float | None = None) -> None:
    data = run / "data"
    stats = _stats(seconds)
    for phase in ("knowledge_train", "skills_train"):
        (data / phase).mkdir(parents=True)
    for leaf, (kind, branch, phase) in LEAVES.items():
        lines = []
        for j in range(stats["leaves"][leaf]["kept"]):
            lines.append(json.dumps({"id": f"{leaf}-{j}", "messages": [
                {"role": "user", "content": f"Question {j} about {leaf.split('/')[-1]}?"},
                {"role": "assistant", "content": f"Answer {j} " + "word " * (5 if j % 2 else 80)}],
                "metadata": {"leaf": leaf, "branch": branch, "kind": kind, "length": "short" if j % 2 else "long"}}))
        (data / phase / f"part-{abs(hash(leaf)) % 10**8:08d}.jsonl").write_text("\n".join(lines) + "\n")
    (data / "stats.json").write_text(json.dumps(stats))
    recipe = {"taxonomy": str(REPO / "taxonomy"), "teacher": "SmolLM2-135M-Instruct",
              "phases": {"knowledge_train": {"path": "data/knowledge_train", "branches": "knowledge + foundational_skills",
                                             "samples": 20, "short": 10, "long": 10},
                         "skills_train": {"path": "data/skills_train", "branches": "compositional_skills",
                                          "samples": 18, "short": 9, "long": 9}},
              "leaves": {leaf: s["kept"] for leaf, s in stats["leaves"].items()}}
    (data / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def _write_training(run: Path) -> dict:
    """train/metrics.jsonl (lab_ray/train/metrics.py records) and train/journal.json with selections."""
    from lab_ray.train.metrics import append

    tdir = run / "train"
    tdir.mkdir(parents=True)
    ck = {}
    for ph, steps in (("knowledge_short", 6), ("knowledge_long", 4), ("skills", 6)):
        for s in range(1, steps + 1):
            rec = {"phase": ph, "step": s, "total_steps": steps, "loss": 3.0 / s + 0.1, "lr": 1e-5,
                   "tokens_per_s": 900.0, "real_token_fraction": 0.9, "event": "step", "time": 1.0 * s}
            if s % 2 == 0:
                rec["checkpoint"] = str(tdir / "ray" / ph / f"checkpoint_{s:06d}")
                ck.setdefault(ph, []).append(rec["checkpoint"])
            append(tdir / "metrics.jsonl", rec)
    sel_k = ck["knowledge_long"][0]
    sel_s = ck["skills"][1]
    scores_k = {c: {"phase_score": 0.4 + 0.1 * (c == sel_k), "heldout_loss": 1.2} for c in ck["knowledge_short"] + ck["knowledge_long"]}
    scores_s = {c: {"phase_score": 0.3 + 0.2 * (c == sel_s), "heldout_loss": 1.1} for c in ck["skills"]}
    for group, scores, best in (("knowledge", scores_k, sel_k), ("skills", scores_s, sel_s)):
        for c, s in scores.items():
            append(tdir / "metrics.jsonl", {"event": "score", "group": group, "checkpoint": c, **s, "selected": c == best})
    journal = {"phases": {ph: {"status": "done", "checkpoints": ck[ph], "wall_s": 42.0} for ph in ck},
               "selection": {"knowledge": {"scores": scores_k, "selected": sel_k, "metric": "phase_score", "mode": "max"},
                             "skills": {"scores": scores_s, "selected": sel_s, "metric": "phase_score", "mode": "max"}},
               "final_checkpoint": sel_s}
    (tdir / "journal.json").write_text(json.dumps(journal))
    return journal


def _write_eval(run: Path) -> None:
    def result(model, offset):
        leaves = {}
        for leaf, (kind, branch, _) in LEAVES.items():
            metric = "accuracy" if kind == "knowledge" else "judge_1_10"
            score = 0.4 + offset if metric == "accuracy" else 4.0 + 10 * offset
            leaves[leaf] = {"metric": metric, "score": score, "n": 5, "kind": kind, "branch": branch}
        return {"model": model, "leaves": leaves, "summary": summarize(leaves)}

    trained, base = result("runs/x/final", 0.2), result("SmolLM2-135M-Instruct", 0.0)
    out = {"model": trained["model"], "base_model": base["model"], "trained": trained, "base": base,
           "comparison": compare(trained, base), "summary": {"trained": trained["summary"], "base": base["summary"]},
           "generation": {"knowledge/geography/islands/varrow_island": {"chunks": 4, "requests": 8, "valid": 2, "cloze": 15}}}
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text(json.dumps(out))


def _valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 150


@pytest.fixture(scope="module")
def cfg():
    return load_config([f"taxonomy.path={REPO / 'taxonomy'}"])


def test_full_report(tmp_path, cfg):
    run = tmp_path / "full"
    _write_generation(run, seconds=100.0)
    journal = _write_training(run)
    _write_eval(run)
    md_path = write_report(run, cfg)
    out = run / "report"
    assert md_path == out / "report.md"
    md, html = md_path.read_text(), (out / "report.html").read_text()
    for name in PLOTS:
        _valid_png(out / name)
        assert f"({name})" in md and f"src='{name}'" in html
    for leaf in LEAVES:
        assert leaf in md and leaf in html
    assert "Not available" not in md
    # funnel reasons, token totals, selection and base vs trained made it into the text
    assert "unparsable" in md and "judge_low" in md
    assert str(sum(1000 * (i + 1) for i in range(4))) in md
    assert "knowledge_long step 2" in md and "skills step 4" in md
    assert journal["final_checkpoint"] in md
    assert "+20 pt" in md and "+2.00" in md  # knowledge accuracy and judge score deltas
    assert "Question 0 about haiku?" in md  # example samples per leaf
    ct = sum(300 * (i + 1) for i in range(4))
    assert f"{ct / 100:.1f} completion tokens/s" in md
    card = (out / "dataset_card.md").read_text()
    assert "CC-BY-4.0" in card and "SmolLM2-135M-Instruct" in card and "sample-knowledge" in card
    for leaf in LEAVES:
        assert leaf in card


def test_generation_only_report_names_whats_missing(tmp_path, cfg, cli):
    run = tmp_path / "runs" / "genonly"
    _write_generation(run)
    code, out, err = cli("report", "genonly", f"run.root={tmp_path / 'runs'}", f"taxonomy.path={REPO / 'taxonomy'}")
    assert code == 0, err
    rep = run / "report"
    md = (rep / "report.md").read_text()
    for name in ("samples_per_leaf.png", "funnel.png", "teacher_tokens.png"):
        _valid_png(rep / name)
    assert not (rep / "loss.png").exists() and not (rep / "eval_scores.png").exists()
    assert "training metrics" in md and "lab-ray train" in md
    assert "evaluation results" in md and "lab-ray eval" in md
    assert "no generation wall time" in md
    for leaf in LEAVES:
        assert leaf in md
    assert (rep / "dataset_card.md").exists() and "report.md" in out


def test_empty_run_and_bad_target(tmp_path, cfg, cli):
    run = tmp_path / "empty"
    run.mkdir()
    md = write_report(run, cfg).read_text()
    assert md.count("Not available") >= 5
    assert not list((run / "report").glob("*.png"))
    assert (run / "report" / "dataset_card.md").exists()
    # eval only, then a later full run in the same directory: stale plots go, new ones come
    _write_eval(run)
    write_report(run, cfg)
    _valid_png(run / "report" / "eval_scores.png")
    code, _out, err = cli("report", str(tmp_path / "no-such-run"), f"run.root={tmp_path}")
    assert code == 1 and "no run directory" in err and "Traceback" not in err


def test_a_teacher_that_reused_prompt_tokens_gets_a_computed_per_accepted_column_per_leaf(tmp_path, cfg):
    run = tmp_path / "cached"
    _write_generation(run, seconds=100.0)
    stats = json.loads((run / "data" / "stats.json").read_text())
    for s in stats["leaves"].values():
        s["cached_prompt_tokens"] = s["prompt_tokens"] // 2
    stats["total"]["cached_prompt_tokens"] = sum(s["cached_prompt_tokens"] for s in stats["leaves"].values())
    (run / "data" / "stats.json").write_text(json.dumps(stats))
    md = write_report(run, cfg).read_text()
    assert "computed per accepted sample" in md
    leaf, s = next(iter(stats["leaves"].items()))
    billed = s["prompt_tokens"] + s["completion_tokens"]
    row = next(line for line in md.splitlines() if line.startswith(f"| {leaf} |") and str(s["prompt_tokens"]) in line)
    assert row.rstrip(" |").endswith(f"{billed / s['kept']:.0f} | {(billed - s['cached_prompt_tokens']) / s['kept']:.0f}")


def test_the_judges_section_says_what_each_judges_verdicts_rest_on_per_leaf(tmp_path, cfg):
    """From sdg/calibration.json: reference levels, whether they separate, rows per request."""
    from omegaconf import OmegaConf

    run = tmp_path / "judged"
    _write_generation(run)
    haiku, facts = "compositional_skills/writing/poetry/haiku", "compositional_skills/extraction/facts_to_list"
    (run / "sdg").mkdir()
    (run / "sdg" / "calibration.json").write_text(json.dumps({
        "judge_instruction": {haiku: [0.2, 0.7], facts: [0.5, 0.51]},
        "judge_pair": {haiku: [2.0, 2.01]},
        "rows_per_request": {"judge_instruction": {haiku: 4, facts: 1}}}))
    rows = [line for line in write_report(run, cfg).read_text().splitlines() if line.startswith("| judge_")]
    assert rows == [f"| judge_instruction | {facts} | 0.500 | 0.510 | raw score, raw threshold | 1 |",
                    f"| judge_instruction | {haiku} | 0.200 | 0.700 | calibrated | 4 |",
                    f"| judge_pair | {haiku} | 2.000 | 2.010 | raw score, raw threshold | 1 |"]
    skip = OmegaConf.merge(cfg, {"sdg": {"judge": {"unseparated": "skip"}}})
    md = write_report(run, skip).read_text()
    assert f"| judge_pair | {haiku} | 2.000 | 2.010 | skipped (sdg.judge.unseparated=skip) | 1 |" in md
    assert "| calibrated | 4 |" in md
