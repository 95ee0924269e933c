"""`taxonomy diff` and `stats` on a real git repo built in the test."""

from __future__ import annotations

import pytest

from taxonomy_builders import git, skill_yaml, write

from lab_ray.taxonomy.diff import changed_leaves


@pytest.fixture
def repo(tmp_path):
    """A git repo whose taxonomy lives in a subfolder, with a base commit and changes after it."""
    root = tmp_path / "repo"
    tax = root / "taxonomy"
    write(tax, "compositional_skills/writing/modified", skill_yaml())
    write(tax, "compositional_skills/writing/unchanged", skill_yaml())
    write(tax, "foundational_skills/reasoning/deleted", skill_yaml())
    write(tax, "compositional_skills/writing/reverted", skill_yaml())
    write(root, "outside", skill_yaml())  # not under the taxonomy path
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    git(root, "tag", "base")
    # committed after base: one modified, one added, one changed then changed back
    write(tax, "compositional_skills/writing/modified", skill_yaml(task="Write a haiku, now better."))
    write(tax, "compositional_skills/extraction/added", skill_yaml(grounded=True))
    write(tax, "compositional_skills/writing/reverted", skill_yaml(task="Temporary."))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "work")
    write(tax, "compositional_skills/writing/reverted", skill_yaml())
    git(root, "commit", "-qam", "revert")
    # working tree: untracked new leaf, deleted leaf, staged modification
    write(tax, "knowledge/new_untracked", "not even valid yet\n")
    (tax / "foundational_skills/reasoning/deleted/qna.yaml").unlink()
    write(tax, "compositional_skills/writing/unchanged", skill_yaml(n=6))
    return root, tax


def test_diff_statuses(repo):
    _, tax = repo
    changes = {c.leaf: c.status for c in changed_leaves(tax, "base")}
    assert changes == {
        "compositional_skills/writing/modified": "modified",
        "compositional_skills/extraction/added": "added",
        "compositional_skills/writing/unchanged": "modified",  # edited in the working tree
        "foundational_skills/reasoning/deleted": "deleted",
        "knowledge/new_untracked": "untracked",
    }


def test_diff_against_head_sees_only_working_tree(repo):
    _, tax = repo
    changes = {c.leaf: c.status for c in changed_leaves(tax, "HEAD")}
    assert set(changes) == {"compositional_skills/writing/unchanged", "foundational_skills/reasoning/deleted",
                            "knowledge/new_untracked"}


def test_diff_empty_base_is_whole_tree(repo):
    _, tax = repo
    leaves = {c.leaf for c in changed_leaves(tax, "empty")}
    assert leaves == {"compositional_skills/writing/modified", "compositional_skills/writing/unchanged",
                      "compositional_skills/writing/reverted", "compositional_skills/extraction/added",
                      "knowledge/new_untracked"}


def test_diff_cli_lists_and_checks_changed_leaves(cli, repo):
    _, tax = repo
    code, out, err = cli("taxonomy", "diff", tax, "--base", "base")
    # the untracked knowledge leaf is invalid, so diff reports it and fails
    assert code == 1
    assert "untracked  knowledge/new_untracked" in out and "deleted    foundational_skills/reasoning/deleted" in out
    assert "knowledge/new_untracked/qna.yaml" in err


def test_diff_unknown_ref_is_clear(cli, repo):
    _, tax = repo
    code, out, err = cli("taxonomy", "diff", tax, "--base", "no-such-branch")
    assert code == 1 and "git ref 'no-such-branch' not found" in err and "Traceback" not in err


def test_diff_outside_git(cli, tmp_path):
    write(tmp_path, "compositional_skills/a", skill_yaml())
    code, out, err = cli("taxonomy", "diff", tmp_path, "--base", "main")
    assert code == 1 and "not inside a git repository" in err
    code, out, err = cli("taxonomy", "diff", tmp_path, "--base", "empty")
    assert code == 0 and "added  compositional_skills/a" in out


def test_stats_counts_per_branch_and_type(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    write(tmp_path, "compositional_skills/writing/a", skill_yaml())
    write(tmp_path, "compositional_skills/writing/b", skill_yaml(n=7))
    write(tmp_path, "compositional_skills/extraction/c", skill_yaml(grounded=True))
    write(tmp_path, "foundational_skills/reasoning/d", skill_yaml(n=6))
    code, out, err = cli("taxonomy", "stats", tmp_path)
    assert code == 0, err
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.splitlines() if line.count("│") >= 6}
    # columns: leaves, knowledge, grounded, freeform, examples
    assert rows["compositional_skills"] == ["3", "0", "1", "2", "17"]
    assert rows["foundational_skills"] == ["1", "0", "0", "1", "6"]
    assert rows["knowledge"] == ["0", "0", "0", "0", "0"]
    assert "total" in out and "b  freeform, 7 examples" in out


def test_not_a_taxonomy(cli, tmp_path):
    code, out, err = cli("taxonomy", "validate", tmp_path)
    assert code == 1 and "is not a taxonomy" in err
    code, out, err = cli("taxonomy", "validate", tmp_path / "nope")
    assert code == 1 and "does not exist" in err
