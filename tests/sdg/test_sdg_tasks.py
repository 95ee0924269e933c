"""Taxonomy-driven fan-out: exact per-leaf quotas, leaf-local rotated examples, stable unique ids."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from sdg_helpers import SAMPLE_LEAVES, sdg_config

from lab_ray.sdg import tasks as T
from lab_ray.sdg.plan import build_plan


def _all_tasks(spec, k: int, step: int | None = None) -> list[dict]:
    d = spec.to_dict()
    if step is None:
        return list(T.expand(d, 0, spec.quota, k))
    return [row for a in range(0, spec.quota, step) for row in T.expand(d, a, min(a + step, spec.quota), k)]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    cfg = sdg_config(tmp_path_factory.mktemp("plan"), "p", "sdg.samples_per_leaf=37", "sdg.examples_per_prompt=3")
    return cfg, build_plan(cfg)


def test_quota_is_exact_per_leaf_and_the_ranges_cover_it(plan):
    cfg, specs = plan
    assert sorted(s.leaf for s in specs) == SAMPLE_LEAVES
    for spec in specs:
        assert spec.quota == 37
        rows = _all_tasks(spec, 3)
        assert len(rows) == 37 and [r["request_index"] for r in rows] == list(range(37))
        assert {r["leaf"] for r in rows} == {spec.leaf}


def test_ranges_are_contiguous_and_never_cap_the_quota(tmp_path):
    cfg = sdg_config(tmp_path, "p", "sdg.samples_per_leaf=600", "sdg.leaves=[compositional_skills/writing/poetry/haiku]")
    (spec,) = build_plan(cfg)
    rs = T.ranges([spec])
    assert rs[0]["start"] == 0 and rs[-1]["end"] == 600
    assert all(a["end"] == b["start"] for a, b in zip(rs, rs[1:]))
    assert all(r["end"] - r["start"] <= T.RANGE for r in rs)


def test_scale_factor_quota_is_examples_times_factor(tmp_path):
    cfg = sdg_config(tmp_path, "p", "sdg.samples_per_leaf=0", "sdg.scale_factor=3")
    from lab_ray.taxonomy.loader import load_taxonomy

    tax = load_taxonomy(cfg.taxonomy.path, cfg.taxonomy)
    n_examples = {leaf.path: len(leaf.examples) for leaf in tax.leaves}
    assert {s.leaf: s.quota for s in build_plan(cfg)} == {k: 3 * v for k, v in n_examples.items()}


def test_examples_come_only_from_the_leaf_and_rotate_evenly(plan):
    cfg, specs = plan
    own = {s.leaf: {e["question"] for e in s.examples} for s in specs}
    for spec in specs:
        uses = Counter()
        for row in _all_tasks(spec, 3):
            examples = json.loads(row["examples"])
            qs = [e["question"] for e in examples]
            assert len(qs) == min(3, len(spec.examples)) == len(set(qs)), "an example repeated within a prompt"
            assert set(qs) <= own[spec.leaf], f"{spec.leaf}: an example from another leaf"
            uses.update(qs)
        assert set(uses) == own[spec.leaf], "every example of the leaf is used"
        assert max(uses.values()) - min(uses.values()) <= 1, (spec.leaf, uses)


def test_knowledge_tasks_spread_over_chunks_and_carry_them(plan):
    cfg, specs = plan
    (spec,) = [s for s in specs if s.kind == "knowledge"]
    assert len(spec.chunks) >= 2  # the sample document is chunked, not replaced by the seed contexts
    rows = _all_tasks(spec, 3)
    per_chunk = Counter(r["chunk_index"] for r in rows)
    assert set(per_chunk) == set(range(len(spec.chunks)))
    assert max(per_chunk.values()) - min(per_chunk.values()) <= 1
    assert all(r["context"] == spec.chunks[r["chunk_index"]] for r in rows)
    for r in rows:  # a knowledge example is a context with its Q/A
        assert all(e["context"] and e["question"] and e["answer"] for e in json.loads(r["examples"]))
    for s in specs:
        if s.kind != "knowledge":
            assert all(r["chunk_index"] == -1 for r in _all_tasks(s, 3))


def test_ids_are_unique_across_leaves_and_stable_across_runs_and_splits(plan, tmp_path):
    cfg, specs = plan
    first = [r["id"] for s in specs for r in _all_tasks(s, 3)]
    assert len(first) == len(set(first)) == 4 * 37
    again = build_plan(sdg_config(tmp_path, "other-run", "sdg.samples_per_leaf=37", "sdg.examples_per_prompt=3"))
    assert [r["id"] for s in again for r in _all_tasks(s, 3, step=10)] == first
    # a bigger quota extends the id list; it does not renumber the first tasks
    bigger = build_plan(sdg_config(tmp_path, "bigger", "sdg.samples_per_leaf=50", "sdg.examples_per_prompt=3"))
    by_leaf = {s.leaf: [r["id"] for r in _all_tasks(s, 3)] for s in bigger}
    for s in specs:
        assert by_leaf[s.leaf][:37] == [r["id"] for r in _all_tasks(s, 3)]


def test_the_id_plan_gives_exactly_the_expanded_tasks_ids(plan):
    """planned_ids / in_plan (resume count, finalize filter) must agree with expand (the tasks themselves)."""
    import pandas as pd

    cfg, specs = plan
    ids = T.id_plan(specs, 3)
    rows = pd.DataFrame([{"leaf": r["leaf"], "request_index": r["request_index"], "id": r["id"]}
                         for s in specs for r in _all_tasks(s, 3)])
    assert list(T.planned_ids(ids)) == rows["id"].tolist()
    assert all(T.in_plan(rows, ids))
    smaller = T.id_plan(specs[:1], 3)
    smaller["leaves"][specs[0].leaf][0] = 5  # first leaf, quota 5
    assert sum(T.in_plan(rows, smaller)) == 5
    other_k = T.id_plan(specs, 2)  # other example rotation: other ids
    assert not any(T.in_plan(rows, other_k))


def test_rotation_and_sample_id_units():
    assert T.rotation(5, 3, 0) == [0, 1, 2] and T.rotation(5, 3, 1) == [3, 4, 0] and T.rotation(2, 3, 7) == [0, 1]
    a = T.sample_id("leaf/a", [0, 1], 3)
    assert a == T.sample_id("leaf/a", [0, 1], 3) and len(a) == 20
    assert len({a, T.sample_id("leaf/b", [0, 1], 3), T.sample_id("leaf/a", [1, 0], 3),
                T.sample_id("leaf/a", [0, 1], 4), T.sample_id("leaf/a", [0, 1], 3, 1)}) == 5


def test_sdg_seed_changes_the_teacher_sampling_seed(tmp_path):
    from omegaconf import OmegaConf

    from lab_ray.sdg.stages import GenerateInstruction
    from sdg_helpers import instant_spec

    seeds = []
    for seed in (1, 1, 2):
        cfg = sdg_config(tmp_path, "s", f"sdg.seed={seed}", "sdg.samples_per_leaf=3",
                         "sdg.leaves=[compositional_skills/writing/poetry/haiku]")
        (spec,) = build_plan(cfg)
        row = next(T.expand(spec.to_dict(), 0, 1, 3))
        stage = GenerateInstruction(instant_spec(), OmegaConf.to_container(cfg.sdg, resolve=True))
        seeds.append(stage.request(row)[1]["seed"])
    assert seeds[0] == seeds[1], "the same seed gives the same request"
    assert seeds[1] != seeds[2], "another sdg.seed samples differently"


def test_judge_calibration_runs_for_every_judge_and_leaf(plan):
    """The driver-side calibration scores references through the judges' own request path."""
    from omegaconf import OmegaConf

    from lab_ray.sdg.calibration import calibrate
    from sdg_helpers import instant_spec

    cfg, specs = plan
    sdg = OmegaConf.to_container(cfg.sdg, resolve=True)
    levels = calibrate([s.to_dict() for s in specs], instant_spec(), sdg)
    skills = {s.leaf for s in specs if s.kind != "knowledge"}
    knowledge = {s.leaf for s in specs if s.kind == "knowledge"}
    for stage in ("judge_instruction", "judge_pair"):
        assert set(levels[stage]) == skills, stage
    for stage in ("judge_faithfulness", "judge_relevance", "judge_question"):
        assert set(levels[stage]) == knowledge, stage
    # the instant teacher says yes to everything: no separation between good and bad references
    assert all(abs(good - bad) < 1e-9 for lv in levels.values() for bad, good in lv.values())
