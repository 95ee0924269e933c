"""The SDG pipeline end to end on Ray Data with test teachers: faults, the community taxonomy, edge cases."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from fixture_paths import COMMUNITY_TAXONOMY, KNOWLEDGE_DOCS, requires_fixtures
from sdg_helpers import SAMPLE_LEAVES, check_run, faulty_spec, instant_spec, sdg_config


pytestmark = pytest.mark.slow


def _row_fates(log_dir: Path) -> Counter:
    """Fates of the requests made for rows, i.e. by the stage actors, not by the driver
    (the driver's requests, e.g. judge calibration, concern no row)."""
    fates = Counter()
    for path in Path(log_dir).glob("teacher-*.log"):
        if path.name.startswith(f"teacher-{os.getpid()}-"):
            continue
        for line in path.read_text().splitlines():
            kind, fate = line.split("\t")
            fates[(kind, fate)] += 1
    return fates


def test_faulty_teacher_30_percent_the_run_completes_with_exact_counts(ray_cluster, tmp_path):
    from lab_ray.sdg.run import run_generation

    quota = 30
    cfg = sdg_config(tmp_path, "faulty", f"sdg.samples_per_leaf={quota}", "sdg.batch_size=16")
    result = run_generation(cfg, faulty_spec(fraction=0.3, garbage_share=0.5, log_dir=str(tmp_path / "log")))
    got = check_run(tmp_path / "faulty", {leaf: quota for leaf in SAMPLE_LEAVES})
    assert result.tasks == quota * len(SAMPLE_LEAVES) and result.resumed == 0
    assert result.stats["leaves"] == got["stats"]["leaves"]

    fates = _row_fates(tmp_path / "log")
    requests = sum(fates.values())
    faults = sum(n for (_, fate), n in fates.items() if fate in ("error", "garbage"))
    assert 0.2 < faults / requests < 0.4, fates  # the injected rate, over every stage's requests
    dropped = got["dropped"]
    by_reason = Counter(dropped["drop_reason"])
    # Each injected fault drops exactly its row, under its reason; nothing else is dropped
    # (the instant teacher never repeats itself or says no).
    assert by_reason["teacher_error"] == sum(n for (_, f), n in fates.items() if f == "error")
    assert by_reason["unparsable"] == sum(n for (_, f), n in fates.items() if f == "garbage")
    assert set(by_reason) <= {"teacher_error", "unparsable"}
    # faults hit every kind of stage: generation (chat) and judges (choose)
    assert fates[("chat", "error")] and fates[("chat", "garbage")]
    assert fates[("choose", "error")] and fates[("choose", "garbage")]
    # every stage a row passes makes exactly one request: the funnel's ins are the requests
    stage_in = sum(st["in"] for s in got["stats"]["leaves"].values() for st in s["stages"] if st["stage"] != "dedup")
    assert stage_in == requests
    per_stage = Counter((r["drop_stage"], r["drop_reason"]) for r in dropped.to_dict("records"))
    stages_hit = {stage for stage, _ in per_stage}
    assert {"gen_context", "gen_instruction", "judge_instruction", "gen_response", "judge_pair", "gen_qa",
            "judge_faithfulness", "judge_relevance", "judge_question"} <= stages_hit, per_stage
    # a teacher failure says what happened (garbage may be an empty text, its detail too)
    errors = dropped[dropped["drop_reason"] == "teacher_error"]
    assert errors["drop_detail"].str.contains("injected by FaultyTeacher").all()
    assert 0 < len(got["ok"]) < result.tasks


@requires_fixtures()
def test_community_taxonomy_end_to_end_with_the_instant_teacher(ray_cluster, tmp_path):
    """The InstantTeacher here, not the real CPU teacher: 16 leaves x 5 candidates through
    the real one would take most of the suite's time budget on 2 cores. It rejects 20% of
    judge requests and makes 25% of rows repeat each other, so every drop path is exercised."""
    import yaml

    from lab_ray.sdg.run import run_generation
    from lab_ray.taxonomy.loader import load_taxonomy

    summit = "https://github.com/juliadenham/Summit_knowledge"
    conf = tmp_path / "map.yaml"
    conf.write_text(yaml.safe_dump({"taxonomy": {"documents": {"repo_map": {summit: str(KNOWLEDGE_DOCS)},
                                                               "cache_dir": str(tmp_path / "doc-cache")}}}))
    quota = 5
    cfg = sdg_config(tmp_path, "community", f"taxonomy.path={COMMUNITY_TAXONOMY}", f"sdg.samples_per_leaf={quota}",
                     config_file=str(conf))
    tax = load_taxonomy(COMMUNITY_TAXONOMY, cfg.taxonomy)
    leaves = tax.leaves
    assert len(leaves) > 10
    result = run_generation(cfg, instant_spec(reject_fraction=0.2, repeat_fraction=0.25,
                                              log_dir=str(tmp_path / "log")))
    got = check_run(tmp_path / "community", {leaf.path: quota for leaf in leaves})
    assert result.tasks == quota * len(leaves)
    fates = _row_fates(tmp_path / "log")
    by_reason = Counter(got["dropped"]["drop_reason"])
    assert by_reason["judged_out"] == sum(n for (k, f), n in fates.items() if f == "rejected")
    assert by_reason["duplicate"] > 0 and by_reason["judged_out"] > 0
    assert set(by_reason) <= {"judged_out", "duplicate"}
    kinds = {leaf.kind for leaf in leaves}
    assert kinds == {"knowledge", "grounded", "freeform"}
    phases = {p: len(rows) for p, rows in got["phases"].items()}
    assert phases["knowledge_train"] > 0 and phases["skills_train"] > 0
    # knowledge samples carry a chunk of their own leaf's document
    norm = lambda s: " ".join(s.split())  # noqa: E731
    docs = {leaf: norm(" ".join(d.read_text() for d in ds)) for leaf, ds in tax.documents.items()}
    knowledge = [r for r in got["phases"]["knowledge_train"] if r["metadata"]["branch"] == "knowledge"]
    assert {r["metadata"]["leaf"] for r in knowledge} == set(docs)
    for r in knowledge:
        assert norm(r["metadata"]["chunk"]) in docs[r["metadata"]["leaf"]]


def test_a_run_where_every_row_is_dropped_completes_with_empty_outputs(ray_cluster, tmp_path):
    """A weak teacher's judges can reject everything of a tiny quota: that is a result, not a crash."""
    import json

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lab_ray.sdg.finalize import finalize
    from lab_ray.sdg.stages import with_row_columns

    leaf = "compositional_skills/writing/poetry/haiku"
    cfg = sdg_config(tmp_path, "none", f"sdg.leaves=[{leaf}]", "sdg.samples_per_leaf=3")
    out = tmp_path / "none" / "sdg"
    (out / "shards").mkdir(parents=True)
    df = with_row_columns(pd.DataFrame([{"id": f"id-{i}", "leaf": leaf, "branch": "compositional_skills",
                                      "kind": "freeform", "context": "", "chunk_index": -1} for i in range(3)]))
    df["status"], df["drop_stage"], df["drop_reason"] = "dropped", "judge_pair", "judged_out"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), out / "shards" / "part-0.parquet")
    (out / "plan.json").write_text(json.dumps({"tasks": 3, "leaves": {leaf: 3}}))
    stats = finalize(cfg, out)
    assert stats["leaves"][leaf]["kept"] == 0 and stats["leaves"][leaf]["dropped"] == {"judged_out": 3}
    check_run(tmp_path / "none", {leaf: 3}, timed=False)
