"""The sample taxonomy `make run` uses is valid and has one leaf of each kind."""

from __future__ import annotations

from fixture_paths import REPO

from lab_ray.config import load_config
from lab_ray.taxonomy.loader import load_taxonomy


def test_sample_taxonomy_validates_with_its_document(tmp_path):
    cfg = load_config([f"taxonomy.documents.cache_dir={tmp_path}"])
    tax = load_taxonomy(REPO / "taxonomy", cfg.taxonomy)
    assert not tax.problems, tax.problems
    kinds = {(leaf.branch.value, leaf.kind) for leaf in tax.leaves}
    assert kinds == {("knowledge", "knowledge"), ("compositional_skills", "grounded"),
                     ("compositional_skills", "freeform"), ("foundational_skills", "freeform")}
    knowledge = next(leaf for leaf in tax.leaves if leaf.is_knowledge)
    assert knowledge.licenses == ["CC-BY-4.0"]
    (doc,) = tax.documents[knowledge.path]
    text = doc.read_text()
    assert len(text.split()) > 1000
    # every seed context of the knowledge leaf is quoted from the document
    squash = " ".join(text.split())
    for example in knowledge.examples:
        assert " ".join(example.context.split()) in squash


def test_cli_validate_and_stats_on_the_sample(cli):
    code, out, err = cli("taxonomy", "validate", REPO / "taxonomy")
    assert code == 0, err
    assert "4 leaves valid" in out and "1 knowledge document(s) resolved" in out
