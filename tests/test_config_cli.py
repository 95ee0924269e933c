"""Typed configuration and the CLI's error contract."""

from __future__ import annotations

import pytest
import yaml

from lab_ray.config import load_config
from lab_ray.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(["run.name=exp1", "taxonomy.max_file_bytes=123"])
    assert cfg.run.name == "exp1" and cfg.taxonomy.max_file_bytes == 123
    assert cfg.teacher.backend == "cpu" and cfg.profiles.teacher == "cpu"


@pytest.mark.parametrize("override, fragment", [
    ("taxonomy.bogus=1", "taxonomy.bogus"),
    ("taxonomy.max_file_bytes=lots", "taxonomy.max_file_bytes"),
    ("tax.path=x", "tax"),
    ("no_equals_sign", "key=value"),
])
def test_bad_override_names_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert fragment in str(e.value)


def test_config_file_merges_and_is_checked(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"run": {"name": "from-file"}, "taxonomy": {"base": "origin/main"}}))
    cfg = load_config(["run.name=cli-wins"], str(good))
    assert cfg.run.name == "cli-wins" and cfg.taxonomy.base == "origin/main"
    bad = tmp_path / "bad.yaml"
    bad.write_text("taxonomy:\n  bsae: main\n")
    with pytest.raises(ConfigError) as e:
        load_config([], str(bad))
    assert "bad.yaml" in str(e.value) and "bsae" in str(e.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [\n")
    with pytest.raises(ConfigError) as e:
        load_config([], str(broken))
    assert "broken.yaml:2" in str(e.value)


def test_relative_repo_map_in_a_config_file_is_relative_to_it(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "c.yaml").write_text("taxonomy:\n  documents:\n    repo_map:\n      https://x/y: ../docs\n")
    cfg = load_config([], str(sub / "c.yaml"))
    assert cfg.taxonomy.documents.repo_map["https://x/y"] == str(tmp_path / "docs")


def test_a_repo_map_directory_inside_the_working_directory_stays_relative_to_it(tmp_path, monkeypatch):
    """A Ray Job unpacks its working directory on each node at another absolute path: a task on
    another node must resolve the mapped directory against its own copy, as it does taxonomy.path."""
    from lab_ray.taxonomy.documents import DocumentResolver

    for copy in ("head", "worker"):
        (tmp_path / copy / "conf").mkdir(parents=True)
        (tmp_path / copy / "docs").mkdir()
        (tmp_path / copy / "conf" / "c.yaml").write_text(
            "taxonomy:\n  documents:\n    repo_map:\n      https://x/y: ../docs\n")
    monkeypatch.chdir(tmp_path / "head")
    cfg = load_config([], "conf/c.yaml")
    assert cfg.taxonomy.documents.repo_map["https://x/y"] == "docs"
    monkeypatch.chdir(tmp_path / "worker")  # the same config, used on the other node
    assert DocumentResolver(cfg.taxonomy.documents)._local_source("https://x/y") == tmp_path / "worker" / "docs"


def test_profile_selection():
    with pytest.raises(ConfigError) as e:
        load_config(["teacher=does-not-exist"])
    assert "teacher profile 'does-not-exist' not found" in str(e.value) and "cpu" in str(e.value)


def test_config_show_prints_resolved_yaml(cli):
    code, out, err = cli("config", "show", "run.name=shown")
    assert code == 0
    assert yaml.safe_load(out)["run"]["name"] == "shown"


def test_cli_errors_are_one_line_and_nonzero(cli):
    code, out, err = cli("config", "show", "taxonomy.nope=1")
    assert code == 2 and err.count("\n") == 1 and "taxonomy.nope" in err and "Traceback" not in err
    code, out, err = cli("config", "show", "--config", "/no/such/file.yaml")
    assert code == 2 and "/no/such/file.yaml does not exist" in err


def test_debug_shows_the_traceback(cli):
    with pytest.raises(ConfigError):
        cli("config", "show", "taxonomy.nope=1", "--debug")


def test_unknown_command_is_argparse_usage(cli):
    with pytest.raises(SystemExit) as e:
        cli("no-such-command")
    assert e.value.code == 2


def test_config_reference_is_generated_and_docs_config_md_is_current(cli, monkeypatch):
    """docs/config.md is `lab-ray config reference` verbatim; regenerate it after changing the config."""
    from pathlib import Path

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # ray.address defaults to $RAY_ADDRESS

    code, out, err = cli("config", "reference")
    assert code == 0, err
    assert "| `sdg.samples_per_leaf` | int |" in out and "| `train.selection.tiebreak` | str |" in out
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == out, "docs/config.md is stale: run `lab-ray config reference > docs/config.md`"
