"""Knowledge augmentation (sdg.knowledge.views): Q/A from views of each chunk, judged against the chunk.

Unit level: the view stage makes one row per view, generated views cost one request each,
gen_qa reads the view and the faithfulness judge the original chunk. Engine level (local
Ray, the instant test teacher): on the sample knowledge leaf and on the fixture taxonomy's
knowledge leaves (their real documents), every Q/A row records its view, per-stage counts
add up, and a rerun finds every task done.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import yaml

from fixture_paths import COMMUNITY_TAXONOMY, KNOWLEDGE_DOCS, requires_fixtures
from sdg_helpers import check_run, sdg_config

from lab_ray.errors import ConfigError
from lab_ray.sdg.stages import (ROW_SCHEMA, VIEWS, AugmentDocument, GenerateKnowledgeQA, JudgeFaithfulness,
                                effective_fanout, stage_order)
from lab_ray.sdg.tasks import expand

INSTANT = {"kind": "python", "factory": "lab_ray.testing.fake_teachers:InstantTeacher", "args": {}}
SDG = {"temperature": 0.7, "seed": 1, "knowledge": {"max_tokens": 24, "views": list(VIEWS)}, "judge": {}}
CHUNK = "Varrow Island lies north of the bay. Its lighthouse was built in 1871 and is 31 metres tall."


def _rows(n: int) -> pd.DataFrame:
    spec = {"leaf": "knowledge/x", "branch": "knowledge", "kind": "knowledge", "task_description": "",
            "domain": "geography", "persona": "", "chunks": [CHUNK],
            "examples": [{"question": "How tall?", "answer": "31 m.", "context": "A seed passage."}]}
    return pd.DataFrame([{**{c.name: c.default for c in ROW_SCHEMA.values()}, **r} for r in expand(spec, 0, n, 1)])


def _user_turn(messages: list[dict]) -> str:
    return messages[-1]["content"]


def test_one_row_per_view_the_qa_reads_the_view_and_the_judge_the_chunk():
    out = AugmentDocument(INSTANT, SDG)(_rows(3))
    assert len(out) == 3 * len(VIEWS) and out["id"].is_unique
    assert list(out["view"]) == list(VIEWS) * 3
    assert (out["status"] == "ok").all()
    doc = out[out["view"] == "document"]
    assert (doc["document_view"] == CHUNK).all() and (doc["prompt_tokens"] == 0).all()
    generated = out[out["view"] != "document"]
    assert (generated["document_view"] != CHUNK).all() and (generated["prompt_tokens"] > 0).all()
    # the views are asked for with their own prompts
    aug = AugmentDocument(None, SDG)
    asks = {v: _user_turn(aug.request(_rows(1).iloc[0].to_dict(), v)[1]["messages"]) for v in VIEWS[1:]}
    assert len(set(asks.values())) == 3 and all(CHUNK in a for a in asks.values())

    row = generated.iloc[0].to_dict()
    qa = GenerateKnowledgeQA(None, SDG).request(row)[1]["messages"]
    assert row["document_view"] in _user_turn(qa) and CHUNK not in _user_turn(qa)
    assert "A seed passage." in qa[1]["content"]  # the in-context examples keep their own passage
    judged = JudgeFaithfulness(None, SDG).request({**row, "question": "Q?", "answer": "A."})[1]["messages"]
    assert CHUNK in _user_turn(judged) and row["document_view"] not in _user_turn(judged)


def test_a_failed_view_drops_only_its_own_row():
    spec = {"kind": "python", "factory": "lab_ray.testing.fake_teachers:FaultyTeacher",
            "args": {"fraction": 0.5, "garbage_share": 1.0}}
    out = AugmentDocument(spec, SDG)(_rows(8))
    assert len(out) == 8 * len(VIEWS)
    bad = out[out["status"] == "dropped"]
    assert len(bad) > 0 and set(bad["drop_stage"]) == {"gen_view"} and "document" not in set(bad["view"])
    assert (out[out["view"] == "document"]["status"] == "ok").all()


@pytest.mark.parametrize("views, match", [(["summary"], "unknown view"), (["document", "document"], "each view once")])
def test_bad_views_are_config_errors(views, match):
    with pytest.raises(ConfigError, match=match):
        effective_fanout({"knowledge": {"views": views}})


def test_views_off_means_no_stage():
    assert "gen_view" not in stage_order("knowledge", effective_fanout({"knowledge": {"views": []}}))
    assert "gen_view" in stage_order("knowledge", effective_fanout({"knowledge": {"views": ["atomic_facts"]}}))
    with pytest.raises(ConfigError, match="sdg.knowledge.views"):
        from lab_ray.sdg.stages import check_fanout
        check_fanout({"gen_view": 2})


LEAF = "knowledge/geography/islands/varrow_island"


def _check_views(run, views: list[str], leaves: set[str]) -> None:
    final = run["final"]
    knowledge = final[final["kind"] == "knowledge"]
    reached_qa = knowledge[~knowledge["drop_stage"].isin(["gen_view"])]
    assert set(reached_qa["view"]) == set(views)  # every Q/A row records its view
    rows = [r for r in run["phases"]["knowledge_train"] if r["metadata"]["branch"] == "knowledge"]
    assert rows and {r["metadata"]["leaf"] for r in rows} == leaves
    assert all(r["metadata"]["view"] in views for r in rows)
    assert {r["metadata"]["view"] for r in rows} == set(views)


def test_views_on_the_sample_knowledge_leaf(ray_cluster, tmp_path):
    from lab_ray.sdg.run import run_generation

    views = ["document", "detailed_summary", "atomic_facts"]
    cfg = sdg_config(tmp_path, "views", f"sdg.leaves=[{LEAF}]", "sdg.samples_per_leaf=12", "sdg.fanout.gen_qa=2",
                     f"sdg.knowledge.views=[{','.join(views)}]")
    result = run_generation(cfg, INSTANT)
    fanout = effective_fanout(cfg.sdg)
    assert fanout == {"gen_qa": 2, "gen_view": 3}
    assert result.tasks == 2  # 12 candidates = 2 chunks' requests x 3 views x 2 Q/A
    run = check_run(tmp_path / "views", {LEAF: 12}, fanout=fanout)
    _check_views(run, views, {LEAF})
    stages = result.stats["leaves"][LEAF]["stages"]
    assert [s["stage"] for s in stages][:2] == ["gen_view", "gen_qa"]
    assert stages[0]["in"] == 2 and stages[0]["fanout"] == 3 and stages[1]["fanout"] == 2
    assert run_generation(cfg, INSTANT).resumed == 2  # a rerun finds every task done


@requires_fixtures()
def test_views_on_the_fixture_knowledge_documents(ray_cluster, tmp_path):
    from lab_ray.sdg.run import run_generation
    from lab_ray.taxonomy.loader import load_taxonomy

    conf = tmp_path / "map.yaml"
    conf.write_text(yaml.safe_dump({"taxonomy": {"documents": {
        "repo_map": {"https://github.com/juliadenham/Summit_knowledge": str(KNOWLEDGE_DOCS)},
        "cache_dir": str(tmp_path / "doc-cache")}}}))
    base = sdg_config(tmp_path, "fixture", f"taxonomy.path={COMMUNITY_TAXONOMY}", config_file=str(conf))
    leaves = {leaf.path for leaf in load_taxonomy(COMMUNITY_TAXONOMY, base.taxonomy).leaves if leaf.is_knowledge}
    assert leaves
    views = list(VIEWS)
    cfg = sdg_config(tmp_path, "fixture", f"taxonomy.path={COMMUNITY_TAXONOMY}", f"sdg.leaves=[{','.join(leaves)}]",
                     "sdg.samples_per_leaf=8", f"sdg.knowledge.views=[{','.join(views)}]", config_file=str(conf))
    run_generation(cfg, INSTANT)
    run = check_run(tmp_path / "fixture", {leaf: 8 for leaf in leaves}, fanout=effective_fanout(cfg.sdg))
    _check_views(run, views, leaves)
    # faithfulness was judged on the chunk: every kept knowledge row's chunk is its leaf's document text
    kept = run["ok"][run["ok"]["kind"] == "knowledge"]
    assert (kept["context"] != kept["document_view"]).sum() >= len(kept) * 0.5  # generated views differ
    assert Counter(kept["view"]).keys() == set(views)
