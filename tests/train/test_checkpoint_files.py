"""Checkpoint housekeeping on real files: what a done phase drops, what a killed worker leaves."""

from __future__ import annotations

from lab_ray.train import checkpoints


def _ckpt(d):
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w" * 100)
    (d / "config.json").write_text("{}")
    (d / checkpoints.STATE).write_bytes(b"s" * 200)
    (d / "deepspeed" / "state").mkdir(parents=True)
    (d / "deepspeed" / "state" / "zero_pp_rank_0_optim_states.pt").write_bytes(b"z" * 50)
    return d


def test_drop_resume_state_keeps_the_model_and_counts_what_it_freed(tmp_path):
    d = _ckpt(tmp_path / "checkpoint_1")
    assert checkpoints.drop_resume_state(str(d)) == 250
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    assert checkpoints.is_hf_dir(str(d))
    assert checkpoints.load_state(str(d)) is None
    assert checkpoints.drop_resume_state(str(d)) == 0  # idempotent: a resumed run may prune again


def test_clear_staging_removes_only_staging_dirs(tmp_path):
    (tmp_path / (checkpoints.STAGING_PREFIX + "abc")).mkdir()
    (tmp_path / (checkpoints.STAGING_PREFIX + "abc") / "model.safetensors").write_bytes(b"half")
    (tmp_path / "resume-0").mkdir()
    checkpoints.clear_staging(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["resume-0"]
