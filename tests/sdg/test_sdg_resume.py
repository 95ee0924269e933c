"""Resume: SIGKILL a real generate process part-way, rerun, and get exactly the uninterrupted result."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sdg_helpers import SAMPLE_LEAVES, check_run, faulty_spec, read_jsonl_dir, read_parquet_dir, sdg_config

from lab_ray.storage import StoragePath
from lab_ray.testing.fake_teachers import read_fates

LAB_RAY = Path(sys.executable).with_name("lab-ray")
QUOTA = 40  # per leaf; shards hold up to 64 rows, so a run writes several
OVERRIDES = [f"sdg.samples_per_leaf={QUOTA}", "sdg.batch_size=8", "sdg.seed=7"]


def _spec(tmp_path: Path, name: str, latency_s: float = 0.0) -> dict:
    # A deterministic teacher with faults: dropped rows must resume exactly like kept ones.
    return faulty_spec(fraction=0.3, latency_s=latency_s, log_dir=str(tmp_path / f"log-{name}"))


def _driver(tmp_path: Path, spec: dict, name: str, extra: tuple = ()) -> subprocess.Popen:
    """`lab-ray generate` with the test teacher (sdg.test_teacher), as its own process group."""
    env = {**os.environ, "CI": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    teacher = [f"sdg.test_teacher={spec['factory']}"] + [f"sdg.test_teacher_args.{k}={v}" for k, v in spec["args"].items()]
    args = [str(LAB_RAY), "generate", f"run.root={tmp_path / 'runs'}", f"run.name={name}", "sdg.progress=false",
            "ray.num_cpus=4", f"taxonomy.path={Path(__file__).parents[2] / 'taxonomy'}", *OVERRIDES, *extra, *teacher]
    log = open(tmp_path / f"{name}-{time.monotonic_ns()}.log", "w")
    # Own session: the driver, the Ray cluster it starts and its workers share one process group.
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, text=True, env=env)


def _plan(tmp_path: Path, extra: tuple):
    """The plan of the resumed run, as the driver builds it (its ids decide what is done)."""
    from lab_ray.sdg.plan import Plan, build_plan
    from lab_ray.sdg.tasks import id_plan

    cfg = sdg_config(tmp_path / "runs", "resumed", *OVERRIDES, *extra)
    specs = build_plan(cfg)
    return Plan(specs, id_plan(specs, int(cfg.sdg.examples_per_prompt)))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait(proc: subprocess.Popen, log_glob: Path, timeout: float) -> dict:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    text = "\n".join(p.read_text() for p in sorted(log_glob.parent.glob(log_glob.name)))
    assert code == 0, text[-3000:]
    m = re.findall(r"resumed (\d+) of (\d+) tasks", " ".join(text.split()))
    assert m, text[-3000:]
    return {"resumed": int(m[-1][0]), "tasks": int(m[-1][1])}


# Fan-out (issue 15): grounded rows fan out twice, freeform once, knowledge once; a task's rows
# can then be split over shards by the kill, and the resume must still give the same ids.
FANOUT = {"gen_context": 2, "gen_instruction": 3, "gen_qa": 4}


@pytest.mark.parametrize("fanout", [{}, FANOUT], ids=["one-per-request", "fanout"])
def test_sigkill_part_way_then_resume_equals_an_uninterrupted_run(ray_cluster, tmp_path, fanout):
    from lab_ray.sdg.run import Stored

    extra = tuple(f"sdg.fanout.{k}={v}" for k, v in fanout.items())
    # the quota in candidate rows, rounded up to whole requests (the plan says how)
    plan = _plan(tmp_path, extra)
    specs = plan.specs
    quotas = {s.leaf: s.quota for s in specs}
    total = sum(s.requests for s in specs)
    assert fanout or total == QUOTA * len(SAMPLE_LEAVES)
    shards = tmp_path / "runs" / "resumed" / "sdg" / "shards"

    # 1. Start `lab-ray generate`, slowed down by a per-batch teacher latency, and SIGKILL the
    #    driver once a shard is complete (and before the last one).
    proc = _driver(tmp_path, _spec(tmp_path, "killed", latency_s=0.6), "resumed", extra)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list(shards.glob("part-*.parquet")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed part-way"
        assert list(shards.glob("part-*.parquet")), "no shard was written in time"
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the driver, nothing else
        proc.wait(timeout=30)
    finally:
        # Ray's own reaper takes the local cluster down with the driver; whatever is left of
        # the process group this test started is killed so it cannot write into the rerun.
        for _ in range(100):
            if not _group_alive(proc.pid):
                break
            time.sleep(0.2)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    done_before = set()
    for f in shards.glob("part-*.parquet"):
        done_before.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    assert 0 < len(done_before) < sum(quotas.values()), "the kill must land part-way"
    tasks_before = len(Stored.of(StoragePath(shards), plan).done_tasks)  # resume counts whole tasks
    # A shard being written when the kill landed is a .tmp that must never be read: plant
    # one with truncated Parquet bytes (and rows that would duplicate real ones) to be sure.
    some_shard = sorted(shards.glob("part-*.parquet"))[0]
    (shards / "part-ffffffffffffffffffffffffffffffff.parquet.tmp").write_bytes(some_shard.read_bytes()[:-100])

    # 2. The same command again resumes: the work done is not redone.
    resumed = _wait(_driver(tmp_path, _spec(tmp_path, "rerun"), "resumed", extra), tmp_path / "resumed-*.log", 900)
    assert resumed["tasks"] == total and resumed["resumed"] == tasks_before
    run_resumed = tmp_path / "runs" / "resumed"
    got = check_run(run_resumed, quotas, fanout=fanout)  # every task exactly once, all counts add up
    # every request of the rerun is for a task that was not done: far fewer than a full run makes
    rerun_requests = len(read_fates(tmp_path / "log-rerun"))
    assert rerun_requests > 0

    # 3. An uninterrupted run with the same seed and teacher, in this process.
    from lab_ray.sdg.run import run_generation

    cfg = sdg_config(tmp_path / "runs", "straight", *OVERRIDES, *extra)
    straight = run_generation(cfg, _spec(tmp_path, "straight"))
    assert straight.resumed == 0 and straight.tasks == total
    ref = check_run(tmp_path / "runs" / "straight", quotas, fanout=fanout)
    # the same ids, kept or dropped, as the uninterrupted run
    assert set(got["final"]["id"]) == set(ref["final"]["id"])
    full_requests = len(read_fates(tmp_path / "log-straight"))
    assert rerun_requests < full_requests

    # Equal: the same accepted ids, the same verdict on every dropped row, the same training files.
    assert set(got["ok"]["id"]) == set(ref["ok"]["id"]) and len(got["ok"]) > 0
    verdict = lambda df: dict(zip(df["id"], zip(df["status"], df["drop_stage"], df["drop_reason"])))  # noqa: E731
    assert verdict(got["final"]) == verdict(ref["final"])
    for phase in ("knowledge_train", "skills_train"):
        a = {r["id"]: r["messages"] for r in read_jsonl_dir(run_resumed / "data" / phase)}
        b = {r["id"]: r["messages"] for r in read_jsonl_dir(tmp_path / "runs" / "straight" / "data" / phase)}
        assert a == b
    assert got["stats"]["leaves"] == ref["stats"]["leaves"]
    assert not list(shards.glob("*.tmp"))
    # nothing lost, nothing duplicated: the resumed shards hold each id once (check_run) and the
    # ids from before the kill are still there, untouched
    assert done_before <= set(read_parquet_dir(shards)["id"])


def test_rerun_of_a_finished_run_does_no_teacher_work(ray_cluster, tmp_path):
    from lab_ray.sdg.run import run_generation

    cfg = sdg_config(tmp_path, "again", "sdg.samples_per_leaf=5",
                     "sdg.leaves=[foundational_skills/reasoning/arithmetic_word_problems]")
    first = run_generation(cfg, _spec(tmp_path, "first"))
    again = run_generation(cfg, _spec(tmp_path, "again"))
    assert (first.tasks, first.resumed, again.tasks, again.resumed) == (5, 0, 5, 5)
    assert not (tmp_path / "log-again").exists() or read_fates(tmp_path / "log-again") == []
    assert again.stats["leaves"] == first.stats["leaves"]
    check_run(tmp_path / "again", {"foundational_skills/reasoning/arithmetic_word_problems": 5})


def test_rerun_with_a_smaller_quota_outputs_only_that_plan(ray_cluster, tmp_path):
    """The shards of the bigger plan stay (a later bigger rerun is free); the outputs are the new plan's."""
    from lab_ray.sdg.run import run_generation

    leaf = "foundational_skills/reasoning/arithmetic_word_problems"
    spec = faulty_spec(fraction=0.0, log_dir=str(tmp_path / "log-shrink"))  # no faults: rows to keep
    big = run_generation(sdg_config(tmp_path, "shrink", "sdg.samples_per_leaf=10", f"sdg.leaves=[{leaf}]"), spec)
    assert (big.tasks, big.resumed, big.stats["leaves"][leaf]["rows"]) == (10, 0, 10)
    first5 = set(read_parquet_dir(tmp_path / "shrink" / "sdg" / "shards").query("request_index < 5")["id"])
    small = run_generation(sdg_config(tmp_path, "shrink", "sdg.samples_per_leaf=5", f"sdg.leaves=[{leaf}]"), spec)
    assert (small.tasks, small.resumed, small.stats["leaves"][leaf]["rows"]) == (5, 5, 5)
    assert set(read_parquet_dir(tmp_path / "shrink" / "sdg" / "final")["id"]) == first5
    kept = read_parquet_dir(tmp_path / "shrink" / "samples")
    stats = small.stats["leaves"][leaf]
    assert len(kept) == stats["kept"] > 0 and set(kept["id"]) <= first5, stats
    jsonl = read_jsonl_dir(tmp_path / "shrink" / "data" / "knowledge_train")
    assert {r["id"] for r in jsonl} == set(kept["id"])
    assert len(read_parquet_dir(tmp_path / "shrink" / "sdg" / "shards")) == 10  # nothing thrown away


pytestmark = pytest.mark.slow


def test_resume_only_counts_work_of_the_current_plan(ray_cluster, tmp_path):
    import pandas as pd
    import pyarrow as pa

    from lab_ray.errors import LabRayError
    from lab_ray.sdg.run import run_generation
    from lab_ray.sdg.stages import with_row_columns

    old, new = "compositional_skills/writing/poetry/haiku", "foundational_skills/reasoning/arithmetic_word_problems"
    shards = tmp_path / "plan" / "sdg" / "shards"
    shards.mkdir(parents=True)
    # what a previous run of the same run name with sdg.leaves=[haiku] left behind
    df = with_row_columns(pd.DataFrame([{"id": f"old-{i}", "leaf": old, "branch": "compositional_skills",
                                      "kind": "freeform", "context": "", "chunk_index": -1, "question": "Q?",
                                      "answer": f"A {i}."} for i in range(3)]))
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), shards / "part-old.parquet")
    cfg = sdg_config(tmp_path, "plan", "sdg.samples_per_leaf=3", f"sdg.leaves=[{new}]")
    try:
        result = run_generation(cfg, _spec(tmp_path, "plan"))
    except LabRayError:
        return  # refusing a run directory made for another plan is a fine answer too
    assert result.resumed == 0
    assert result.stats["leaves"].get(new, {}).get("rows") == 3, result.stats["leaves"]
    assert old not in result.stats["leaves"]  # the earlier plan's rows are not this run's output
    assert not any(i.startswith("old-") for i in read_parquet_dir(tmp_path / "plan" / "samples").get("id", []))
