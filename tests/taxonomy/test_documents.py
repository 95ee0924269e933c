"""Knowledge documents resolve at exactly the leaf's commit, through the offline map."""

from __future__ import annotations

from taxonomy_builders import ATTRIBUTION, git, knowledge_yaml, write

from lab_ray.config import load_config
from lab_ray.taxonomy.loader import load_taxonomy


def test_git_repo_is_read_at_the_leafs_commit(tmp_path, docs_repo, repo_map_config):
    repo, commit = docs_repo
    # later history and uncommitted edits must not leak into the snapshot
    (repo / "doc.md").write_text("# Doc\n\nSecond version.\n")
    git(repo, "commit", "-qam", "v2")
    (repo / "doc.md").write_text("dirty working tree\n")
    tax_root = tmp_path / "tax"
    write(tax_root, "knowledge/topic", knowledge_yaml("https://example.org/docs.git", commit, ("*.md", "sub/**/*.md")))
    write(tax_root, "knowledge/topic", ATTRIBUTION.format(license="CC-BY-SA-4.0"), name="attribution.txt")
    cfg = load_config([], str(repo_map_config({"https://example.org/docs": repo})))
    tax = load_taxonomy(tax_root, cfg.taxonomy)
    assert not tax.errors, tax.errors
    docs = tax.documents["knowledge/topic"]
    assert [d.relpath for d in docs] == ["doc.md", "sub/more.md"]
    assert docs[0].read_text() == "# Doc\n\nFirst version of the document.\n"
    assert all(d.commit_verified for d in docs)
    assert tax.leaf("knowledge/topic").licenses == ["CC-BY-SA-4.0"]


def test_local_path_repo_without_mapping(tmp_path, docs_repo):
    repo, commit = docs_repo
    tax_root = tmp_path / "tax"
    write(tax_root, "knowledge/topic", knowledge_yaml(str(repo), commit))
    write(tax_root, "knowledge/topic", ATTRIBUTION.format(license="MIT"), name="attribution.txt")
    cfg = load_config([f"taxonomy.documents.cache_dir={tmp_path / 'cache'}"])
    tax = load_taxonomy(tax_root, cfg.taxonomy)
    assert not tax.errors, tax.errors
    assert [d.relpath for d in tax.documents["knowledge/topic"]] == ["doc.md"]
