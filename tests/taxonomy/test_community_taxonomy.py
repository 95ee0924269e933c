"""Compatibility: the real InstructLab community taxonomy loads unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fixture_paths import COMMUNITY_TAXONOMY, KNOWLEDGE_DOCS, requires_fixtures

from lab_ray.config import load_config
from lab_ray.taxonomy.leaf import Branch
from lab_ray.taxonomy.loader import load_taxonomy

pytestmark = requires_fixtures()

SUMMIT = "https://github.com/juliadenham/Summit_knowledge"


@pytest.fixture
def offline_config(repo_map_config) -> Path:
    return repo_map_config({SUMMIT: KNOWLEDGE_DOCS})


def test_every_leaf_loads_into_the_right_type(offline_config):
    cfg = load_config([], str(offline_config))
    tax = load_taxonomy(COMMUNITY_TAXONOMY, cfg.taxonomy)
    assert not tax.problems, tax.problems
    files = sorted(COMMUNITY_TAXONOMY.rglob("qna.yaml"))
    assert len(tax.leaves) == len(files) > 10
    for qna in files:
        path = qna.parent.relative_to(COMMUNITY_TAXONOMY).as_posix()
        data = yaml.safe_load(qna.read_text())
        leaf = tax.leaf(path)
        assert leaf.branch == Branch(path.split("/")[0])
        if leaf.is_knowledge:
            assert leaf.kind == "knowledge" and leaf.document is not None
            n_qa = sum(len(s["questions_and_answers"]) for s in data["seed_examples"])
            assert len(leaf.examples) == n_qa
        else:
            has_ctx = any("context" in s for s in data["seed_examples"])
            assert leaf.kind == ("grounded" if has_ctx else "freeform")
            assert [e.question for e in leaf.examples] == [s["question"].strip() for s in data["seed_examples"]]


def test_knowledge_leaves_resolve_documents_offline(offline_config):
    cfg = load_config([], str(offline_config))
    tax = load_taxonomy(COMMUNITY_TAXONOMY, cfg.taxonomy)
    docs = {leaf: [d.relpath for d in ds] for leaf, ds in tax.documents.items()}
    assert docs == {
        "knowledge/arts/music/fandom/swifties": ["swifties.md"],
        "knowledge/science/animals/birds/black_capped_chickadee": ["chickadee.md"],
    }
    chickadee = tax.documents["knowledge/science/animals/birds/black_capped_chickadee"][0]
    assert "chickadee" in chickadee.read_text().lower()


def test_cli_validate_exits_zero_with_offline_mapping(cli, offline_config):
    code, out, err = cli("taxonomy", "validate", COMMUNITY_TAXONOMY, "--config", offline_config)
    assert code == 0, err
    assert "16 leaves valid" in out and "2 knowledge document(s) resolved" in out


def test_cli_validate_without_mapping_and_no_network_is_a_clear_error(cli, tmp_path):
    code, out, err = cli("taxonomy", "validate", COMMUNITY_TAXONOMY, "taxonomy.documents.allow_clone=false",
                         f"taxonomy.documents.cache_dir={tmp_path}")
    assert code == 1 and "repo_map" in err and "Traceback" not in err
