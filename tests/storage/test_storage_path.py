"""`run.root` as a `file://` URI (a shared mount named as a URI, as the README offers): a local
path to the storage layer (atomic renames, every reader of the mount sees the same files)."""

from __future__ import annotations

import json

from lab_ray.config import load_config
from lab_ray.storage import StoragePath, atomic_write_json, run_dir


def test_a_file_uri_run_root_reads_and_writes_the_mount(tmp_path):
    root = run_dir(load_config([f"run.root=file://{tmp_path}/runs", "run.name=r"]))
    assert str(root) == f"{tmp_path}/runs/r" and root.is_local
    atomic_write_json(root / "data" / "stats.json", {"rows": 3})
    (root / "notes.txt").write_text("hello")
    assert json.loads((tmp_path / "runs" / "r" / "data" / "stats.json").read_text()) == {"rows": 3}
    assert (root / "notes.txt").read_text() == "hello"
    assert sorted(p.name for p in root.iterdir()) == ["data", "notes.txt"]
    assert StoragePath(f"file://{tmp_path}/runs/r/data").is_dir()
