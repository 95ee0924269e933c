"""`run_generation`: plan -> calibrate the judges -> run the stages -> finalize.

The stages run on Ray Data: (leaf, request range) descriptors fan out into
task rows (flat_map), tasks already in complete shards are skipped (resume),
each stage is a map_batches over its own actor pool, and a writer actor
stores every finished batch as an atomic Parquet shard. Everything flows
through Ray Data; the driver only holds small summaries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from lab_ray.sdg.calibration import load_or_calibrate
from lab_ray.sdg.finalize import finalize
from lab_ray.sdg.limits import task_pool
from lab_ray.sdg.plan import Plan, make_plan
from lab_ray.sdg.progress import GenerationProgress
from lab_ray.sdg.stages import effective_fanout, stages_for
from lab_ray.sdg.tasks import expand, planned_ids, ranges, task_shares
from lab_ray.sdg.writer import ShardWriter, stored_rows
from lab_ray.storage import StoragePath, atomic_write_json, read_json, run_dir


@dataclass
class GenerateResult:
    run_dir: StoragePath
    tasks: int
    resumed: int
    stats: dict = field(default_factory=dict)


def run_generation(cfg, teacher_spec: dict) -> GenerateResult:
    """Generate into run_dir(cfg)/sdg; resumes from complete shards."""
    out = run_dir(cfg) / "sdg"
    shards = prepare_shard_dir(out / "shards")
    plan = make_plan(cfg, out)
    stored = Stored.of(shards, plan)
    resumed = count_done(plan, stored.done_tasks)
    if resumed < plan.requests:
        sdg = OmegaConf.to_container(cfg.sdg, resolve=True)
        calibration = load_or_calibrate(out / "calibration.json", list(plan.spec_dicts().values()), teacher_spec, sdg)
        started = time.time()
        generate_shards(cfg, plan, stored, teacher_spec, calibration, shards)
        add_generation_seconds(out, time.time() - started)
    stats = finalize(cfg, out)
    return GenerateResult(run_dir(cfg), plan.requests, resumed, stats)


def prepare_shard_dir(shards: StoragePath) -> StoragePath:
    shards.mkdir()
    for tmp in shards.glob("*.tmp"):  # a partial shard from a killed run is never read
        tmp.unlink()
    return shards


@dataclass
class Stored:
    """What complete shards already hold: tasks with every row stored, and the stored row ids
    of tasks a kill cut between two shards (redone on resume, their stored rows not rewritten)."""

    done_tasks: set[str] = field(default_factory=set)
    partial_rows: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, shards: StoragePath, plan: Plan) -> "Stored":
        shares: dict[str, float] = {}
        child_rows: dict[str, list[str]] = {}  # fan-out rows per task: only these can be partial
        for rows in stored_rows(shards):
            for tid, share in task_shares(rows, plan.ids).items():
                shares[tid] = shares.get(tid, 0.0) + share
            if "item_path" in rows:
                part = rows[rows["item_path"] != ""]
                for tid, rid in zip(part["task_id"].tolist(), part["id"].tolist()):
                    child_rows.setdefault(tid, []).append(rid)
        done = {t for t, s in shares.items() if s > 1 - 1e-6}
        partial = {rid for t, ids in child_rows.items() if t not in done for rid in ids}
        return cls(done, partial)

    def __bool__(self) -> bool:
        return bool(self.done_tasks or self.partial_rows)


def count_done(plan: Plan, done: set[str]) -> int:
    """Tasks of this plan already in complete shards (a rerun may select other leaves or quotas)."""
    return sum(i in done for i in planned_ids(plan.ids)) if done else 0


class SkipIds:
    """Drops rows whose id is in a set: tasks already done (before the stages), and rows of
    partly stored tasks that are already stored (before the writer)."""

    def __init__(self, ids_ref):
        import ray

        self.ids = ray.get(ids_ref[0])

    def __call__(self, batch):
        return batch[~batch["id"].isin(self.ids)]


def generate_shards(cfg, plan: Plan, stored: Stored, teacher_spec: dict, calibration: dict,
                    shards: StoragePath) -> None:
    """Tasks -> every stage the plan's leaves need -> Parquet shards (one streaming Ray Data pass)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # lab-ray's own progress instead (sdg/progress.py)
    ctx.execution_options.verbose_progress = False
    progress = GenerationProgress(cfg, plan, shards.parent, resume_from=shards if stored else None)
    specs_ref = ray.put(plan.spec_dicts())
    k = int(cfg.sdg.examples_per_prompt)

    def expand_range(desc: dict) -> list[dict]:
        return list(expand(ray.get(specs_ref)[desc["leaf"]], desc["start"], desc["end"], k))

    descriptors = ranges(plan.specs)
    ds = ray.data.from_items(descriptors, override_num_blocks=max(1, min(len(descriptors), 200)))
    ds = ds.flat_map(expand_range, num_cpus=0.1, compute=task_pool())
    if stored.done_tasks:
        ds = ds.map_batches(SkipIds, fn_constructor_args=([ray.put(stored.done_tasks)],), batch_format="pandas",
                            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.05)
    sdg = OmegaConf.to_container(cfg.sdg, resolve=True)
    # Two calls in flight per actor: one batch's requests wait on the teacher while the next is prepared.
    pool = ray.data.ActorPoolStrategy(size=max(1, int(cfg.sdg.actors_per_stage)), max_concurrent_calls_per_actor=2)
    for stage_cls in stages_for({s.kind for s in plan.specs}, effective_fanout(cfg.sdg)):
        ds = ds.map_batches(progress.counted(stage_cls), fn_constructor_args=(teacher_spec, sdg, calibration),
                            batch_size=cfg.sdg.batch_size, batch_format="pandas", compute=pool,
                            num_cpus=0.05, memory=int(cfg.sdg.actor_memory_mb) * 2**20)
    if stored.partial_rows:
        ds = ds.map_batches(SkipIds, fn_constructor_args=([ray.put(stored.partial_rows)],), batch_format="pandas",
                            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.05)
    ds = ds.map_batches(progress.counted_writer(ShardWriter), fn_constructor_args=(str(shards),), batch_format="pandas",
                        batch_size=max(cfg.sdg.batch_size, 64), compute=ray.data.ActorPoolStrategy(size=1),
                        num_cpus=0.05)
    with progress:
        for counts in ds.iter_batches(batch_size=None, batch_format="pandas"):
            progress.observe(counts)


def add_generation_seconds(out: StoragePath, seconds: float) -> None:
    """Wall time of the generation passes, summed over resumes (the report's throughput)."""
    path = out / "timing.json"
    prev = (read_json(path) or {}).get("generation_seconds", 0.0)
    atomic_write_json(path, {"generation_seconds": prev + seconds}, indent=None)
