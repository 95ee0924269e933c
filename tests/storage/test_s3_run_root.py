"""A run whose root is an object store: every artifact goes through the storage layer.

moto's server mode is a real S3 API on 127.0.0.1; pyarrow's S3 filesystem reaches
it through the standard AWS variables (AWS_ENDPOINT_URL, keys, region), set for
the driver and so for every Ray worker this module's local Ray starts. Generation
runs with the instant test teacher (the point here is where the bytes go, not
what the teacher says).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixture_paths import REPO

BUCKET = "lab-ray-test"
LEAVES = ["compositional_skills/writing/poetry/haiku", "knowledge/geography/islands/varrow_island"]


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="module")
def ray_local(s3):
    """A local Ray started after the S3 variables are set: its workers inherit them (a Ray
    another module of this session started earlier has workers without them: restart it)."""
    import ray

    from lab_ray.config import load_config
    from lab_ray.ray_cluster import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(load_config(["ray.num_cpus=4"]).ray)
    yield
    ray.shutdown()


def keys(s3, prefix: str) -> list[str]:
    out, token = [], None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _cfg(tmp_path, name: str, *extra: str):
    from lab_ray.config import load_config

    return load_config([f"run.root=s3://{BUCKET}/runs", f"run.name={name}", "sdg.progress=false",
                        f"taxonomy.path={REPO / 'taxonomy'}", f"sdg.leaves=[{','.join(LEAVES)}]",
                        "sdg.samples_per_leaf=6", "sdg.test_teacher=lab_ray.testing.fake_teachers:InstantTeacher",
                        f"sdg.test_teacher_args={{log_dir: {tmp_path / 'calls'}}}", *extra])


def _calls(tmp_path) -> int:
    return sum(len(f.read_text().splitlines()) for f in (tmp_path / "calls").glob("*.log"))


def test_generate_writes_every_artifact_to_the_bucket_and_resumes_from_it(s3, ray_local, tmp_path, monkeypatch):
    from lab_ray.report.builder import write_report
    from lab_ray.sdg.commands import generate
    from lab_ray.storage import run_dir

    monkeypatch.chdir(tmp_path)  # a URI root mistaken for a local path would appear here as ./s3:/...
    cfg = _cfg(tmp_path, "gen")
    result = generate(cfg)
    assert result.stats["total"]["rows"] == 12 and result.stats["total"]["kept"] > 0
    first_calls = _calls(tmp_path)
    assert first_calls > 0
    got = keys(s3, "runs/gen/")
    for expected in ("runs/gen/sdg/plan.json", "runs/gen/sdg/calibration.json", "runs/gen/sdg/timing.json",
                     "runs/gen/data/recipe.yaml", "runs/gen/data/stats.json"):
        assert expected in got, expected
    for prefix in ("runs/gen/sdg/shards/part-", "runs/gen/sdg/final/part-", "runs/gen/samples/part-",
                   "runs/gen/data/knowledge_train/part-", "runs/gen/data/skills_train/part-"):
        assert any(k.startswith(prefix) for k in got), prefix
    assert not any(".tmp" in k for k in got), [k for k in got if ".tmp" in k]
    assert not (tmp_path / "s3:").exists() and not Path("runs").exists()

    # the report reads the run from the bucket and is published there
    report = write_report(run_dir(cfg), cfg)
    assert str(report) == f"s3://{BUCKET}/runs/gen/report/report.md"
    assert {"runs/gen/report/report.md", "runs/gen/report/report.html",
            "runs/gen/report/dataset_card.md"} <= set(keys(s3, "runs/gen/report/"))
    assert "haiku" in s3.get_object(Bucket=BUCKET, Key="runs/gen/report/report.md")["Body"].read().decode()

    # a rerun finds its shards in the bucket: no teacher call, the same outputs
    again = generate(_cfg(tmp_path, "gen"))
    assert _calls(tmp_path) == first_calls
    assert again.resumed == 12 and again.stats["total"]["kept"] == result.stats["total"]["kept"]


def test_a_relative_run_root_is_refused_inside_a_ray_job(monkeypatch):
    from lab_ray.config import load_config
    from lab_ray.errors import ConfigError
    from lab_ray.storage import run_dir

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray's job supervisor sets for a job's driver
    with pytest.raises(ConfigError, match="run.root='runs' is a relative path inside a Ray Job"):
        run_dir(load_config(["run.root=runs"]))
    assert str(run_dir(load_config([f"run.root=s3://{BUCKET}/x", "run.name=r"]))) == f"s3://{BUCKET}/x/r"


@pytest.mark.skipif(not os.environ.get("LAB_RAY_LONG_TESTS"),
                    reason="15 min on CI (931 s, 2026-12-04); S3 training, resume from the bucket and nothing local "
                           "are covered by tests/storage/test_two_nodes.py's node-loss training test. "
                           "LAB_RAY_LONG_TESTS=1 runs it (three phases chained through checkpoint URIs)")
def test_training_reads_and_writes_only_the_bucket(s3, tmp_path):
    """`lab-ray train` with run.root on S3: data read from the bucket, Ray Train's checkpoints, the
    journal and the metrics written there; the next phase starts from the previous phase's
    checkpoint URI; nothing of the run on local disk but node-local scratch and caches."""
    import json
    import subprocess
    import sys
    import uuid

    sys.path.insert(0, str(REPO / "tests" / "train"))
    from datagen import write_run_data
    from proc_marks import kill_marked

    from lab_ray.storage import StoragePath
    from lab_ray.train.checkpoints import is_hf_dir, materialize

    local = write_run_data(tmp_path / "data", n_knowledge_short=24, n_knowledge_long=8, n_skills=24)
    StoragePath(f"s3://{BUCKET}/runs/tr/data").upload_dir(local)
    mark = uuid.uuid4().hex
    env = dict(os.environ, CI="1", LAB_RAY_TEST_MARK=mark, RAY_USAGE_STATS_ENABLED="0",
               LAB_RAY_CHECKPOINT_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "lab_ray.cli", "train", f"run.root=s3://{BUCKET}/runs", "run.name=tr",
           "train=cpu-tiny", "train.num_workers=2", "train.cpus_per_worker=0.5", "train.live=false",
           "train.knowledge_short.max_seq_len=256", "train.knowledge_long.max_seq_len=256",
           "train.skills.max_seq_len=256", "train.pack_window=64", "train.selection.max_heldout_rows=4",
           "train.knowledge_short.max_steps=1", "train.knowledge_long.max_steps=1", "train.skills.max_steps=1",
           "ray.num_cpus=2"]
    work = tmp_path / "cwd"
    work.mkdir()
    try:
        p = subprocess.run(cmd, cwd=work, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                           timeout=1500)
    finally:
        kill_marked(mark)
    (tmp_path / "train.log").write_text(p.stdout + p.stderr)
    assert p.returncode == 0, f"lab-ray train failed (log: {tmp_path / 'train.log'}): " + (p.stdout + p.stderr)[-2000:]
    assert list(work.iterdir()) == []  # no run directory on local disk
    journal = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/tr/train/journal.json")["Body"].read())
    phases = journal["phases"]
    assert [phases[k]["status"] for k in ("knowledge_short", "knowledge_long", "skills")] == ["done"] * 3
    # checkpoints are URIs in the bucket, and each phase started from the one before
    assert phases["knowledge_short"]["last_checkpoint"].startswith(f"s3://{BUCKET}/runs/tr/train/ray/")
    assert phases["knowledge_long"]["init"] == phases["knowledge_short"]["last_checkpoint"]
    final = journal["final_checkpoint"]
    assert final in phases["skills"]["checkpoints"]
    got = keys(s3, "runs/tr/train/")
    assert any(k.endswith("model.safetensors") for k in got)
    assert not any(k.endswith("trainer_state.pt") for k in got)  # done phases drop their resume state
    assert "runs/tr/train/metrics.jsonl" in got
    assert is_hf_dir(materialize(final))
