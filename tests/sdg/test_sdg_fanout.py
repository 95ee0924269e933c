"""Fan-out stages: one request for n completions, each its own row.

Unit level (no Ray): a FanOutStage turns every live row into exactly n children
with stable unique ids, a malformed completion drops only its own child, token
sums stay exact. Engine level (a real local Ray cluster, the instant test
teacher): per-stage counts add up through two nested fan-outs, and a run killed
part-way then resumed equals an uninterrupted one (tests/sdg/test_sdg_resume.py
runs the kill itself with fan-out on).
"""

from __future__ import annotations

import pandas as pd
import pytest

from sdg_helpers import check_run, sdg_config

from lab_ray.errors import ConfigError
from lab_ray.sdg.stages import ROW_SCHEMA, GenerateInstruction, GenerateKnowledgeQA, check_fanout
from lab_ray.sdg.stats import fanout_depth
from lab_ray.sdg.tasks import child_id, expand, quota_rows

SDG = {"temperature": 0.7, "seed": 1, "context_max_tokens": 8, "instruction_max_tokens": 8, "response_max_tokens": 8,
       "knowledge": {"max_tokens": 8}, "judge": {}}
INSTANT = "lab_ray.testing.fake_teachers:InstantTeacher"


def _spec(**args) -> dict:
    return {"kind": "python", "factory": INSTANT, "args": args}


def _rows(kind: str, n: int) -> pd.DataFrame:
    spec = {"leaf": "compositional_skills/x", "branch": "compositional_skills", "kind": kind,
            "task_description": "list facts", "domain": "geo", "persona": "Be precise.",
            "examples": [{"question": f"Name fact {i}.", "answer": "Water is wet.", "context": "A passage."}
                         for i in range(3)],
            "chunks": ["A chunk of a document about rivers."] if kind == "knowledge" else [], "fanout": "x=4"}
    rows = [{**{c.name: c.default for c in ROW_SCHEMA.values()}, **r} for r in expand(spec, 0, n, 2)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("stage, kind", [(GenerateInstruction, "freeform"), (GenerateKnowledgeQA, "knowledge")])
def test_a_reply_of_n_items_with_malformed_ones_keeps_the_others_and_counts_the_drops(stage, kind):
    width, parents = 6, 8
    sdg = {**SDG, "fanout": {stage.stage: width}}
    out = stage(_spec(malformed_item_fraction=0.4), sdg)(_rows(kind, parents))
    assert len(out) == parents * width
    assert out["id"].is_unique
    # ids: derived from the parent's and the index, the same on every run
    again = stage(_spec(malformed_item_fraction=0.4), sdg)(_rows(kind, parents))
    assert list(out["id"]) == list(again["id"])
    for tid, kids in out.groupby("task_id", sort=False):
        assert list(kids["id"]) == [child_id(tid, stage.stage, j) for j in range(width)]
        assert list(kids["item_path"]) == [str(j) for j in range(width)]
    bad = out[out["status"] == "dropped"]
    assert set(bad["drop_stage"]) == {stage.stage}
    assert set(bad["drop_reason"]) <= {"unparsable", "duplicate"}
    unparsable = (bad["drop_reason"] == "unparsable").sum()
    # the teacher garbles ~40% of items 1..n-1 (never item 0): some dropped, most kept, none lost
    assert 0 < unparsable < parents * (width - 1)
    ok = out[out["status"] == "ok"]
    assert len(ok) + len(bad) == parents * width and len(ok) >= parents
    assert (ok["question"].str.strip() != "").all()
    # a parent's prompt is paid once (the teacher counts it once per request) and split exactly
    single = stage(_spec(), SDG)(_rows(kind, parents))
    assert out["prompt_tokens"].sum() == single["prompt_tokens"].sum()


def test_sibling_completions_that_repeat_one_another_are_dropped_before_any_judge():
    stage = GenerateInstruction
    out = stage(_spec(), {**SDG, "fanout": {stage.stage: 4}})(_rows("freeform", 3))

    # Build a reply whose completions repeat: the second copy of each text is a duplicate.
    from lab_ray.teacher.client import TeacherReply

    inst = stage(None, {**SDG, "fanout": {stage.stage: 4}})
    parent = {**_rows("freeform", 1).iloc[0].to_dict()}
    kids = inst.fan_out(parent, TeacherReply(True, ["Why is water wet?", "why  is WATER wet?", "Name a river.",
                                                    "Name a river."], prompt_tokens=10, completion_tokens=8))
    assert [k["status"] for k in kids] == ["ok", "dropped", "ok", "dropped"]
    assert [k["drop_reason"] for k in kids] == ["", "duplicate", "", "duplicate"]
    assert sum(k["prompt_tokens"] for k in kids) == parent["prompt_tokens"] and len(out) == 12
    # fewer completions than asked: the missing children are dropped as teacher errors, never lost
    short = inst.fan_out(parent, TeacherReply(True, ["One?", "Two?"], prompt_tokens=10, completion_tokens=2))
    assert [k["drop_reason"] for k in short] == ["", "", "teacher_error", "teacher_error"]


@pytest.mark.parametrize("bad", [{"judge_pair": 3}, {"gen_instruction": 0}, {"gen_qa": 2.5}, {"gen_qa": 65}])
def test_fanout_config_errors_name_the_key(bad):
    with pytest.raises(ConfigError, match=r"sdg\.fanout\."):
        check_fanout(bad)


def test_quota_rows_weights_a_row_by_the_children_it_stands_for():
    fanout = {"gen_context": 2, "gen_instruction": 3, "gen_qa": 4}
    assert [quota_rows("grounded", d, fanout) for d in (0, 1, 2)] == [6, 3, 1]
    assert [quota_rows("freeform", d, fanout) for d in (0, 1)] == [3, 1]
    assert [quota_rows("knowledge", d, fanout) for d in (0, 1)] == [4, 1]


LEAVES = {"grounded": "compositional_skills/extraction/facts_to_list",
          "freeform": "compositional_skills/writing/poetry/haiku"}


def test_per_stage_counts_add_up_through_nested_fanouts(ray_cluster, tmp_path):
    """Grounded rows pass two fan-outs (context x2, instruction x3): every stage's rows in,
    drops and rows out add up in stats.json, and the quota is met in candidate rows."""
    from lab_ray.sdg.run import run_generation

    fanout = {"gen_context": 2, "gen_instruction": 3}
    overrides = ["sdg.samples_per_leaf=13", f"sdg.leaves=[{','.join(LEAVES.values())}]",
                 *(f"sdg.fanout.{k}={v}" for k, v in fanout.items())]
    cfg = sdg_config(tmp_path, "nested", *overrides)
    spec = {"kind": "python", "factory": "lab_ray.testing.fake_teachers:FaultyTeacher",
            "args": {"fraction": 0.2, "malformed_item_fraction": 0.3}}
    result = run_generation(cfg, spec)
    # 13 candidates: grounded needs ceil(13/6)=3 requests (18 rows), freeform ceil(13/3)=5 (15 rows)
    assert result.tasks == 3 + 5
    got = check_run(tmp_path / "nested", {LEAVES["grounded"]: 18, LEAVES["freeform"]: 15}, fanout=fanout)
    # the funnel walks back from the stored rows to exactly the requests made per leaf
    for kind, requests in (("grounded", 3), ("freeform", 5)):
        stages = result.stats["leaves"][LEAVES[kind]]["stages"]
        assert stages[0]["in"] == requests, stages
        for a, b in zip(stages, stages[1:]):
            assert b["in"] == a["kept"], stages
        for s in stages:
            w = s.get("fanout", 1)
            assert w == fanout.get(s["stage"], 1)
            assert s["in"] * w >= s["kept"] + (sum(s["dropped"].values()) if w == 1 else 0)
        assert stages[-1]["kept"] == result.stats["leaves"][LEAVES[kind]]["kept"]
        # tokens per stage: every teacher stage spent some, and they add up to the leaf's totals
        leaf = result.stats["leaves"][LEAVES[kind]]
        teacher_stages = [s for s in stages if s["stage"] != "dedup"]
        assert all(s["prompt_tokens"] > 0 for s in teacher_stages), teacher_stages
        for key in ("prompt_tokens", "completion_tokens"):
            assert sum(s[key] for s in stages) == leaf[key] > 0
    final = got["final"]
    # per row too: a row's stage split sums to its totals, through both fan-outs
    split = final.filter(regex=r"^(gen|judge)_\w+_prompt_tokens$").sum(axis=1)
    assert (split == final["prompt_tokens"]).all()
    assert final["id"].is_unique and len(final) > result.tasks
    # rows out of gen_instruction = 3 x the rows that reached it alive (a fan-out makes exactly w)
    grounded = final[final["kind"] == "grounded"]
    assert set(fanout_depth(grounded["item_path"])) <= {0, 1, 2}
    for tid, rows in grounded.groupby("task_id"):
        paths = set(rows["item_path"])
        # a task either failed before fanning out (one row) or accounts for all 6 candidates
        share = sum(1 / 6 if p.count(".") else (1 / 2 if p else 1.0) for p in paths)
        assert abs(share - 1.0) < 1e-9, (tid, sorted(paths))
    again = run_generation(cfg, spec)
    assert again.resumed == again.tasks == result.tasks  # a rerun finds every task done


def test_progress_counts_a_fanout_stage_in_parents_and_out_in_children():
    from lab_ray.sdg.progress import batch_delta

    stage = GenerateInstruction
    before = _rows("freeform", 3)
    out = stage(_spec(malformed_item_fraction=0.4), {**SDG, "fanout": {stage.stage: 4}})(before.copy())
    d = batch_delta(stage.stage, before, out, n_live=3)
    ok = int((out["status"] == "ok").sum())
    assert d["in"] == 3 and d["kept"] == ok and 3 <= ok < 12
    assert sum(d["dropped"].values()) == 12 - ok
    assert d["prompt_tokens"] == int(out["prompt_tokens"].sum()) > 0
