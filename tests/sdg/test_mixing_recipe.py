"""Mixing recipes (sdg.mixing): how many samples of each leaf feed training.

The rules' arithmetic is checked directly; then a real generation (local Ray, the
instant test teacher) writes data/recipe.yaml, and the training split that the
training phases read (tokenized_dataset with the recipe's selection) has exactly
the per-leaf counts the recipe states.
"""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from sdg_helpers import sdg_config

from lab_ray.errors import ConfigError
from lab_ray.sdg.mixing import check_rule, copies, rule_for, rules_from_config, selection_for, target_count


@pytest.mark.parametrize("available, size, cap, want", [
    (40, None, 3.0, 40),     # no size: every sample once
    (40, 10, 3.0, 10),       # a count below what the leaf has: a subsample
    (40, 200, 3.0, 120),     # a count above: repeats, capped at 3x
    (40, 200, 0.0, 200),     # cap 0: no cap
    (40, 0.5, 3.0, 20),      # a fraction
    (40, 2.0, 1.5, 60),      # a fraction above 1, capped
    (100, 0.29, 3.0, 29),    # no float rounding down to 28
    (0, 50, 3.0, 0),         # nothing to take from an empty leaf
])
def test_target_count(available, size, cap, want):
    assert target_count(available, size, cap) == want


def test_longest_prefix_rules_a_leaf():
    rules = {"knowledge": {}, "knowledge/geography": {}, "": {}}
    assert rule_for("knowledge/geography/islands", rules) == "knowledge/geography"
    assert rule_for("knowledge/history/x", rules) == "knowledge"
    assert rule_for("compositional_skills/x", rules) == ""
    assert rule_for("knowledgeable/x", {"knowledge": {}}) is None  # a prefix is whole path parts


@pytest.mark.parametrize("size, cap", [("lots", 3.0), (-1, 3.0), (True, 3.0), (10, 0.5)])
def test_bad_rules_are_config_errors_naming_the_rule(size, cap):
    with pytest.raises(ConfigError, match=r"sdg\.mixing\.rules\['knowledge'\]"):
        check_rule("knowledge", size, cap)


def test_bad_rule_shapes_fail_when_the_run_is_planned():
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="unknown key"):
        rules_from_config(OmegaConf.create({"rules": {"knowledge": {"sample_size": 3}}}))
    with pytest.raises(ConfigError, match="give a mapping"):
        rules_from_config(OmegaConf.create({"rules": {"knowledge": 3}}))


def test_copies_are_whole_repeats_plus_a_seeded_remainder():
    sel = {"seed": 1, "leaves": {"a": (2, None), "b": (0, (2**62, "m"))}}
    assert copies("x", "a", sel) == 2 and copies("x", "other", sel) == 1 and copies("x", "a", None) == 1
    assert {copies(str(i), "b", sel) for i in range(200)} == {0, 1}


KNOWLEDGE = "knowledge/geography/islands/varrow_island"
HAIKU = "compositional_skills/writing/poetry/haiku"
FACTS = "compositional_skills/extraction/facts_to_list"
ARITH = "foundational_skills/reasoning/arithmetic_word_problems"


def test_the_training_split_has_exactly_the_recipe_counts(ray_cluster, tmp_path):
    from lab_ray.sdg.run import run_generation
    from lab_ray.train.tokenize import is_heldout, tokenized_dataset
    from lab_ray.embedded_model import resolve_model

    rules = [f"sdg.mixing.rules.{KNOWLEDGE}.sampling_size=25",            # upsample: rounds + a remainder,
             f"sdg.mixing.rules.{KNOWLEDGE}.max_upsample=0",                 # uncapped
             "sdg.mixing.rules.compositional_skills/writing.sampling_size=3",  # subsample the haiku leaf
             "sdg.mixing.rules.foundational_skills.sampling_size=3.0",       # x3 asked, capped at 1.5
             "sdg.mixing.rules.foundational_skills.max_upsample=1.5"]
    cfg = sdg_config(tmp_path, "mix", "sdg.samples_per_leaf=10", "train.heldout_fraction=0.2", *rules)
    spec = {"kind": "python", "factory": "lab_ray.testing.fake_teachers:InstantTeacher", "args": {}}
    result = run_generation(cfg, spec)
    data = tmp_path / "mix" / "data"
    recipe = yaml.safe_load((data / "recipe.yaml").read_text())
    mixing = recipe["mixing"]
    leaves = {**mixing["knowledge_train"]["leaves"], **mixing["skills_train"]["leaves"]}
    assert set(leaves) == {KNOWLEDGE, HAIKU, FACTS, ARITH}
    assert leaves[KNOWLEDGE]["rule"] == KNOWLEDGE and leaves[HAIKU]["rule"] == "compositional_skills/writing"
    assert leaves[FACTS]["rule"] is None
    for leaf, e in leaves.items():
        assert e["available"] + e["heldout"] == result.stats["leaves"][leaf]["kept"]
    avail = {leaf: e["available"] for leaf, e in leaves.items()}
    assert avail[KNOWLEDGE] > 0 and avail[HAIKU] > 3 and avail[ARITH] > 1, leaves
    expected = {KNOWLEDGE: 25, HAIKU: 3, FACTS: avail[FACTS], ARITH: int(avail[ARITH] * 1.5)}
    assert {leaf: e["taken"] for leaf, e in leaves.items()} == expected
    assert leaves[HAIKU]["cutoff"] and (leaves[KNOWLEDGE]["cutoff"] or 25 % avail[KNOWLEDGE] == 0)
    for name, block in mixing.items():
        assert block["samples"] == sum(e["taken"] for e in block["leaves"].values())
        assert block["short"] + block["long"] == block["samples"]

    # what training reads: the same tokenized_dataset the phases build, with the recipe's selection
    model = resolve_model(cfg.train.model)
    for name, block in mixing.items():
        files = [str(p) for p in (data / name).glob("*.jsonl")]
        ds = tokenized_dataset(files, model_dir=model, max_seq_len=4096, seed=int(cfg.train.seed),
                               heldout_fraction=0.2, selection=selection_for(block))
        rows = ds.select_columns(["id", "leaf"]).take_all()
        got = Counter(r["leaf"] for r in rows)
        assert dict(got) == {leaf: e["taken"] for leaf, e in block["leaves"].items() if e["taken"]}, name
        assert not any(is_heldout(r["id"], int(cfg.train.seed), 0.2) for r in rows)  # held-out rows stay out
        per_id = Counter(r["id"] for r in rows)
        for leaf, e in block["leaves"].items():
            ids = [i for i, r_leaf in {r["id"]: r["leaf"] for r in rows}.items() if r_leaf == leaf]
            reps = sorted({per_id[i] for i in ids})
            # a sample is used floor(taken/available) or one more times, never more
            assert not reps or reps[-1] - reps[0] <= 1 and reps[-1] == e["repeats"], (leaf, reps, e)
