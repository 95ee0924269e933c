"""Fixtures: real git repos and offline repo-map config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from taxonomy_builders import git


@pytest.fixture
def docs_repo(tmp_path) -> tuple[Path, str]:
    """A real git repo holding doc.md; returns (path, commit)."""
    repo = tmp_path / "docs-repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "doc.md").write_text("# Doc\n\nFirst version of the document.\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "more.md").write_text("More text.\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "docs")
    commit = git(repo, "rev-parse", "HEAD").strip()
    return repo, commit


@pytest.fixture
def repo_map_config(tmp_path):
    """Write a --config file mapping repo URLs to local dirs."""
    def make(mapping: dict[str, Path], **documents) -> Path:
        import yaml

        cfg = {"taxonomy": {"documents": {"repo_map": {k: str(v) for k, v in mapping.items()},
                                          "cache_dir": str(tmp_path / "doc-cache"), **documents}}}
        path = tmp_path / "map.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return make
