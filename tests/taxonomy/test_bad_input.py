"""Every kind of bad qna.yaml fails cleanly: file (and line) named, non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taxonomy_builders import ATTRIBUTION, git, knowledge_yaml, skill_yaml, write

LEAF = "compositional_skills/writing/haiku"


def _validate(cli, root: Path, *extra):
    code, out, err = cli("taxonomy", "validate", root, *extra)
    assert "Traceback" not in out + err
    return code, err


def _line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


CASES = {
    # name: (qna.yaml text or bytes, expected message fragment, line needle or None)
    "yaml_syntax": (skill_yaml().replace("  - question: Write a haiku about subject number 2.",
                                         "  - question: [unclosed"), "YAML syntax error", None),
    "wrong_type": (skill_yaml().replace("created_by: tester", "created_by: [1, 2]"), "is not of type 'string'",
                   "created_by:"),
    "missing_field": (skill_yaml().replace("task_description: Write a haiku about a subject.\n", ""),
                      "'task_description' is a required property", None),
    "too_few_examples": (skill_yaml(n=3), "at least 5 items", "seed_examples:"),
    "unknown_key": (skill_yaml() + "colour: blue\n", "'colour' was unexpected", None),
    "duplicate_question": (skill_yaml().replace("subject number 3.", "subject number 1."), "duplicate question",
                           None),
    "empty_file": ("", "file is empty", None),
    "non_utf8": (b"version: 3\ncreated_by: caf\xe9\n", "not valid UTF-8", None),
    "mixed_grounded": (skill_yaml().replace("    answer: A short poem about subject 0.\n",
                                            "    answer: A short poem about subject 0.\n    context: Some text.\n"),
                       "mix grounded", None),
    "not_a_mapping": ("- just\n- a list\n", "top level must be a mapping", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_qna_fails_with_file_and_message(cli, tmp_path, case):
    text, fragment, needle = CASES[case]
    qna = write(tmp_path, LEAF, text)
    code, err = _validate(cli, tmp_path)
    assert code != 0
    assert f"{LEAF}/qna.yaml" in err
    assert fragment in err, err
    if needle is not None:
        body = text if isinstance(text, str) else text.decode("latin-1")
        expected = _line_of(body, needle)
        assert f"qna.yaml:{expected}:" in err, err
    # the valid neighbour of a bad file is not reported
    assert err.count("error:") >= 1


def test_duplicate_question_names_both_lines(cli, tmp_path):
    text = skill_yaml().replace("subject number 3.", "subject number 1.")
    write(tmp_path, LEAF, text)
    _, err = _validate(cli, tmp_path)
    lines = [i for i, line in enumerate(text.splitlines(), 1) if "subject number 1." in line]
    assert f"qna.yaml:{lines[1]}:" in err and f"also at line {lines[0]}" in err


def test_yaml_syntax_error_names_the_line(cli, tmp_path):
    text = skill_yaml().replace("  - question: Write a haiku about subject number 2.", "  - question: [unclosed")
    write(tmp_path, LEAF, text)
    _, err = _validate(cli, tmp_path)
    line = _line_of(text, "[unclosed")
    # PyYAML reports where it noticed the problem: at or just after the bad line
    reported = int(err.split("qna.yaml:")[1].split(":")[0])
    assert line <= reported <= line + 2


def test_non_utf8_names_the_line(cli, tmp_path):
    write(tmp_path, LEAF, b"version: 3\ncreated_by: caf\xe9\n")
    _, err = _validate(cli, tmp_path)
    assert "qna.yaml:2:" in err


def test_fifty_megabyte_file_is_refused_before_parsing(cli, tmp_path):
    path = tmp_path / LEAF / "qna.yaml"
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        f.write(skill_yaml())
        f.write("# " + "x" * 1000 + "\n" * 1)
        f.truncate(50 * 1024 * 1024)
    code, err = _validate(cli, tmp_path)
    assert code != 0 and "52.4 MB" in err and "max_file_bytes" in err


def test_all_problems_listed_in_one_run(cli, tmp_path):
    write(tmp_path, "compositional_skills/a", skill_yaml(n=3))
    write(tmp_path, "compositional_skills/b", skill_yaml() + "colour: blue\n")
    write(tmp_path, "foundational_skills/c", "")
    write(tmp_path, "compositional_skills/ok", skill_yaml())
    code, err = _validate(cli, tmp_path)
    assert code == 1
    for leaf in ("compositional_skills/a/", "compositional_skills/b/", "foundational_skills/c/"):
        assert leaf in err
    assert "compositional_skills/ok/" not in err
    assert "3 error(s)" in err


def test_misnamed_taxonomy_file(cli, tmp_path):
    write(tmp_path, "compositional_skills/ok", skill_yaml())
    write(tmp_path, "compositional_skills/typo", skill_yaml(), name="qna.yml")
    write(tmp_path, "compositional_skills/other", "unrelated: config\n", name="settings.yaml")
    code, err = _validate(cli, tmp_path)
    assert code == 1
    assert "compositional_skills/typo/qna.yml:1:" in err and "rename it" in err
    assert "settings.yaml" not in err


def test_lint_error_from_yamllint_has_line(cli, tmp_path):
    text = skill_yaml().replace("created_by: tester\n", "created_by: tester\ncreated_by: again\n")
    write(tmp_path, LEAF, text)
    code, err = _validate(cli, tmp_path)
    assert code == 1
    assert f"qna.yaml:{_line_of(text, 'created_by: again')}:" in err and "duplication of key" in err


def test_missing_yamllint_is_one_warning_and_schema_lines_survive(cli, tmp_path, monkeypatch):
    """No yamllint on PATH: lint is skipped with a warning; no traceback, lines still found."""
    import contextlib

    import lab_ray.taxonomy.schema_check as sc

    monkeypatch.setattr(sc, "_venv_tools_on_path", contextlib.nullcontext)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    text = skill_yaml().replace("created_by: tester", "created_by: [1]")
    write(tmp_path, LEAF, text)
    code, err = _validate(cli, tmp_path)
    assert code == 1
    assert "yamllint is not installed" in err
    assert f"qna.yaml:{_line_of(text, 'created_by:')}:" in err


# -- knowledge: documents and licences --------------------------------------

def _knowledge(tmp_path, repo_url, commit, patterns=("doc.md",), license="CC-BY-4.0"):
    tax = tmp_path / "tax"
    write(tax, "knowledge/topic", knowledge_yaml(repo_url, commit, patterns))
    write(tax, "knowledge/topic", ATTRIBUTION.format(license=license), name="attribution.txt")
    return tax


@pytest.mark.parametrize("pattern", ["../outside.md", "/etc/passwd", "sub/../../x.md"])
def test_pattern_escaping_repo_is_refused(cli, tmp_path, docs_repo, repo_map_config, pattern):
    repo, commit = docs_repo
    (tmp_path / "outside.md").write_text("secret")
    tax = _knowledge(tmp_path, "https://example.org/docs", commit, patterns=(pattern,))
    cfg = repo_map_config({"https://example.org/docs": repo})
    code, err = _validate(cli, tax, "--config", cfg)
    assert code == 1
    assert "knowledge/topic/qna.yaml:" in err and pattern in err
    assert ("'..'" in err) or ("absolute" in err)


def test_symlink_leaving_plain_repo_is_refused(cli, tmp_path, repo_map_config):
    plain = tmp_path / "plain-docs"
    plain.mkdir()
    (tmp_path / "secret.md").write_text("secret")
    os.symlink(tmp_path / "secret.md", plain / "doc.md")
    tax = _knowledge(tmp_path, "https://example.org/docs", "abc123")
    code, err = _validate(cli, tax, "--config", repo_map_config({"https://example.org/docs": plain}))
    assert code == 1 and "outside the repo" in err


def test_symlink_leaving_git_repo_is_not_followed(cli, tmp_path, repo_map_config):
    repo = tmp_path / "git-docs"
    repo.mkdir()
    git(repo, "init", "-q")
    (tmp_path / "secret.md").write_text("secret")
    os.symlink(tmp_path / "secret.md", repo / "doc.md")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "link")
    commit = git(repo, "rev-parse", "HEAD").strip()
    tax = _knowledge(tmp_path, "https://example.org/docs", commit)
    code, err = _validate(cli, tax, "--config", repo_map_config({"https://example.org/docs": repo}))
    assert code == 1 and "matches no file" in err


def test_missing_commit(cli, tmp_path, docs_repo, repo_map_config):
    repo, _ = docs_repo
    missing = "0123456789abcdef0123456789abcdef01234567"
    tax = _knowledge(tmp_path, "https://example.org/docs", missing)
    code, err = _validate(cli, tax, "--config", repo_map_config({"https://example.org/docs": repo}))
    text = (tax / "knowledge/topic/qna.yaml").read_text()
    assert code == 1
    assert f"commit {missing} is not in repo" in err
    assert f"qna.yaml:{_line_of(text, 'commit:')}:" in err


def test_license_outside_allowlist(cli, tmp_path, docs_repo, repo_map_config):
    repo, commit = docs_repo
    tax = _knowledge(tmp_path, "https://example.org/docs", commit, license="CC BY-NC-SA 4.0")
    cfg = repo_map_config({"https://example.org/docs": repo})
    code, err = _validate(cli, tax, "--config", cfg)
    assert code == 1 and "'CC BY-NC-SA 4.0'" in err and "not in the allowlist" in err
    # opting the leaf out is the user's explicit choice
    cfg = repo_map_config({"https://example.org/docs": repo}, license_opt_out=["knowledge/topic"])
    code, err = _validate(cli, tax, "--config", cfg)
    assert code == 0, err


def test_missing_license(cli, tmp_path, docs_repo, repo_map_config):
    repo, commit = docs_repo
    tax = _knowledge(tmp_path, "https://example.org/docs", commit)
    (tax / "knowledge/topic/attribution.txt").unlink()
    code, err = _validate(cli, tax, "--config", repo_map_config({"https://example.org/docs": repo}))
    assert code == 1 and "has no licence" in err


def test_bad_input_exit_code_in_a_real_process(tmp_path):
    write(tmp_path, LEAF, skill_yaml(n=2))
    exe = Path(sys.executable).parent / "lab-ray"
    proc = subprocess.run([str(exe), "taxonomy", "validate", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "at least 5 items" in proc.stderr


@pytest.mark.parametrize("version", [1, 2, 3])
def test_every_skill_schema_version_the_package_accepts(cli, tmp_path, version):
    text = skill_yaml().replace("version: 3\n", "" if version == 1 else f"version: {version}\n")
    write(tmp_path, LEAF, text)
    code, err = _validate(cli, tmp_path)
    assert code == 0, err


def test_deprecated_knowledge_version_is_the_packages_error(cli, tmp_path):
    text = ("version: 2\ncreated_by: t\ndomain: d\ntask_description: x\ndocument:\n  repo: r\n  commit: c\n"
            "  patterns: ['a.md']\nseed_examples:\n" + "".join(
                f"  - question: q{i}?\n    answer: a{i}\n    context: c{i}\n" for i in range(5)))
    write(tmp_path, "knowledge/old", text)
    code, err = _validate(cli, tmp_path)
    assert code == 1 and "knowledge/old/qna.yaml" in err and "deprecated" in err.lower()
