"""`lab-ray generate`: the SDG pipeline on Ray Data, resumable, streaming.

leaves -> (leaf, request range) descriptors -> flat_map into tasks -> skip
tasks already in complete shards -> one map_batches actor pool per stage
(skills: context, instruction, judge, response, judge; knowledge: Q/A and
three judges) -> atomic Parquet shards. Then a finalize pass: per-leaf dedup
(groupby + map_groups), messages JSONL per training phase, recipe and stats.
Everything flows through Ray Data; the driver only holds small summaries.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from lab_ray.config import run_dir
from lab_ray.errors import LabRayError
from lab_ray.sdg import stages as S
from lab_ray.sdg.dedup import SIGNATURE_COLUMNS, duplicates, mark_duplicates, signature_rows
from lab_ray.sdg.prompts import load_personas, load_prompt
from lab_ray.sdg.calibration import load_or_calibrate
from lab_ray.sdg.tasks import LeafSpec, expand, id_plan, in_plan, leaf_spec, planned_ids, ranges
from lab_ray.sdg.writer import ShardWriter, done_ids, shard_files, write_jsonl


@dataclass
class GenerateResult:
    run_dir: Path
    tasks: int
    resumed: int
    stats: dict = field(default_factory=dict)


def _select_leaves(cfg):
    from lab_ray.taxonomy.diff import changed_leaves
    from lab_ray.taxonomy.loader import load_taxonomy

    only = None
    if cfg.sdg.leaves:
        only = set(cfg.sdg.leaves)
    elif cfg.sdg.only_changed and cfg.taxonomy.base != "empty":
        only = {c.leaf for c in changed_leaves(cfg.taxonomy.path, cfg.taxonomy.base) if c.status != "deleted"}
    tax = load_taxonomy(cfg.taxonomy.path, cfg.taxonomy, only=only)
    tax.raise_for_errors()
    if not tax.leaves:
        raise LabRayError("no leaves to generate from (check taxonomy.path, sdg.leaves or taxonomy.base)")
    return tax


def _tokenizer(cfg):
    from transformers import AutoTokenizer

    from lab_ray.embedded_model import resolve_model

    path = cfg.teacher.model_path or cfg.teacher.model
    try:
        return AutoTokenizer.from_pretrained(resolve_model(path))
    except (OSError, ValueError):
        # A remote teacher's tokenizer is not local: chunk with the embedded one.
        return AutoTokenizer.from_pretrained(resolve_model("SmolLM2-135M-Instruct"))


# Room the knowledge prompt needs besides the chunk and the answer: system text,
# principles, the leaf's own example (its context is a few hundred tokens at most).
PROMPT_ALLOWANCE_TOKENS = 768


def check_chunks_fit(cfg) -> None:
    """A chunk plus prompt plus answer must fit the teacher's context, or every
    knowledge request would come back as a 400 and be dropped as a teacher error."""
    from lab_ray.errors import ConfigError

    k = cfg.sdg.knowledge
    context = k.teacher_context_tokens or _local_context_length(cfg)
    if not context:
        return  # a remote teacher whose context we cannot know: its 400s are counted per row
    need = k.chunk_tokens + k.max_tokens + PROMPT_ALLOWANCE_TOKENS
    if need > context:
        raise ConfigError(f"sdg.knowledge.chunk_tokens ({k.chunk_tokens}) + sdg.knowledge.max_tokens ({k.max_tokens}) "
                          f"+ ~{PROMPT_ALLOWANCE_TOKENS} prompt tokens = {need} exceed the teacher's context of "
                          f"{context} tokens: lower chunk_tokens or max_tokens")


def _local_context_length(cfg) -> int | None:
    from transformers import AutoConfig

    from lab_ray.embedded_model import resolve_model

    local = Path(resolve_model(cfg.teacher.model_path or cfg.teacher.model)).expanduser()
    if not local.is_dir():
        return None  # a served model name, not a local directory: never ask a hub
    try:
        mcfg = AutoConfig.from_pretrained(str(local))
    except (OSError, ValueError):
        return None
    return getattr(mcfg, "max_position_embeddings", None)


def build_plan(cfg) -> list[LeafSpec]:
    """One small spec per selected leaf (examples, chunks, persona, quota)."""
    tax = _select_leaves(cfg)
    personas = load_personas(cfg.sdg.prompts_dir)
    for name in ("skill_context", "skill_instruction", "instruction_judge", "skill_response", "pair_judge",
                 "knowledge_qa", "knowledge_faithfulness", "knowledge_relevance", "knowledge_question"):
        load_prompt(name, cfg.sdg.prompts_dir)  # fail early on a broken prompt file
    tokenizer = _tokenizer(cfg) if any(leaf.is_knowledge for leaf in tax.leaves) else None
    if tokenizer is not None:  # some leaf is a knowledge leaf
        check_chunks_fit(cfg)
    specs = []
    for leaf in tax.leaves:
        docs = [d.read_text(cfg.taxonomy.documents.max_document_bytes) for d in tax.documents.get(leaf.path, [])]
        specs.append(leaf_spec(leaf, cfg.sdg, personas, docs, tokenizer))
    return specs


class SkipDone:
    """Drops tasks whose row is already in a complete shard (resume)."""

    def __init__(self, done_ref):
        import ray

        self.done = ray.get(done_ref[0])

    def __call__(self, batch):
        return batch[~batch["id"].isin(self.done)]


def _teacher_spec(cfg, base_url: str, api_key: str | None) -> dict:
    c = cfg.teacher.client
    return {"kind": "http", "base_url": base_url, "model": cfg.teacher.model, "api_key": api_key,
            "max_concurrency": c.max_concurrency, "timeout_s": c.timeout_s, "max_retries": c.max_retries,
            "backoff_base_s": c.backoff_base_s, "backoff_max_s": c.backoff_max_s}


def run_generation(cfg, teacher_spec: dict) -> GenerateResult:
    """Generate into run_dir(cfg)/sdg; resumes from complete shards."""
    import ray

    out = run_dir(cfg) / "sdg"
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for tmp in shards.glob("*.tmp"):  # a partial shard from a killed run is never read
        tmp.unlink()
    specs = build_plan(cfg)
    total = sum(s.quota for s in specs)
    sdg = OmegaConf.to_container(cfg.sdg, resolve=True)
    spec_dicts = {s.leaf: s.to_dict() for s in specs}
    ids = id_plan(specs, int(cfg.sdg.examples_per_prompt))
    (out / "plan.json").write_text(json.dumps({"tasks": total, "leaves": {s.leaf: s.quota for s in specs},
                                               "ids": ids, "config": sdg}, indent=1))
    done = done_ids(shards)
    # Only ids of this plan count as done (a rerun may select other leaves or quotas).
    planned_done = sum(i in done for i in planned_ids(ids)) if done else 0
    todo = total - planned_done
    calibration = load_or_calibrate(out / "calibration.json", list(spec_dicts.values()), teacher_spec, sdg) \
        if todo > 0 else {}
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(cfg.sdg.progress) and not os.environ.get("CI")
    ctx.execution_options.verbose_progress = False
    t_gen = time.time()
    if todo > 0:
        specs_ref = ray.put(spec_dicts)
        k = int(cfg.sdg.examples_per_prompt)

        def expand_range(desc: dict) -> list[dict]:
            return list(expand(ray.get(specs_ref)[desc["leaf"]], desc["start"], desc["end"], k))

        descriptors = ranges(specs)
        ds = ray.data.from_items(descriptors, override_num_blocks=max(1, min(len(descriptors), 200)))
        # Tasks with fractional CPUs: cap how many run at once, or Ray starts one
        # worker process per slot (~20 on 2 CPUs) and the process tree's memory
        # grows with them while the expansion itself is cheap.
        ds = ds.flat_map(expand_range, num_cpus=0.1, concurrency=TASK_CONCURRENCY)
        if done:
            done_ref = [ray.put(done)]
            ds = ds.map_batches(SkipDone, fn_constructor_args=(done_ref,), batch_format="pandas",
                                compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.05)
        pool = ray.data.ActorPoolStrategy(size=max(1, int(cfg.sdg.actors_per_stage)))
        for stage_cls in _stages(specs):
            ds = ds.map_batches(stage_cls, fn_constructor_args=(teacher_spec, sdg, calibration),
                                batch_size=cfg.sdg.batch_size, batch_format="pandas", compute=pool,
                                num_cpus=0.05, max_concurrency=2, memory=int(cfg.sdg.actor_memory_mb) * 2**20)
        ds = ds.map_batches(ShardWriter, fn_constructor_args=(str(shards),), batch_format="pandas",
                            batch_size=max(cfg.sdg.batch_size, 64), compute=ray.data.ActorPoolStrategy(size=1),
                            num_cpus=0.05)
        for _ in ds.iter_batches(batch_size=None):
            pass
        _add_generation_seconds(out, time.time() - t_gen)
    stats = finalize(cfg, out)
    return GenerateResult(run_dir(cfg), total, planned_done, stats)


def _add_generation_seconds(out: Path, seconds: float) -> None:
    """Wall time of the generation passes, summed over resumes (the report's throughput)."""
    path = out / "timing.json"
    prev = json.loads(path.read_text()).get("generation_seconds", 0.0) if path.exists() else 0.0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"generation_seconds": prev + seconds}))
    os.replace(tmp, path)


def _stages(specs: list[LeafSpec]) -> list:
    """Only the stages some selected leaf needs (no idle actor pools)."""
    kinds = {s.kind for s in specs}
    stages = []
    if kinds & {"grounded", "freeform"}:
        stages += [c for c in S.SKILL_PIPELINE if c is not S.GenerateContext or "grounded" in kinds]
    if "knowledge" in kinds:
        stages += S.KNOWLEDGE_PIPELINE
    return stages


def finalize(cfg, out: Path) -> dict:
    """Dedup per leaf, write samples/ + messages JSONL + recipe + stats (idempotent)."""
    import ray

    files = shard_files(out / "shards")
    if not files:
        raise LabRayError(f"no generated shards under {out / 'shards'}")
    # The shards are read by our own tasks (one shard at a time), not by
    # read_parquet: its file listing and footer-reader actors are extra worker
    # processes, and the shards are few, complete files of one known schema.
    paths = ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, min(len(files), 200)))
    plan = json.loads((out / "plan.json").read_text())
    if cfg.sdg.dedup.enabled:
        # Dedup in two halves so that no full row is ever shuffled: (1) a
        # streaming pass computes each kept row's text digest and MinHash
        # signature (~300 bytes); only those are grouped by leaf, where the
        # exact/near verdicts are made (first by id wins); (2) a streaming pass
        # over the shards marks the duplicate ids. Memory then grows with the
        # signatures, not with the rows (a groupby of the rows holds the whole
        # dataset in the shuffle's aggregators).
        # One partition per leaf at most: fewer partitions than the default 200
        # saves most of the shuffle's overhead.
        n_leaves = len(plan["leaves"])
        dd = cfg.sdg.dedup
        sigs = paths.map_batches(_shard_signatures, fn_args=(dd.num_perm, plan.get("ids")), batch_format="pandas",
                                 batch_size=None, num_cpus=0.1, concurrency=TASK_CONCURRENCY)
        dups = sigs.groupby("leaf", num_partitions=max(1, min(n_leaves, 64))).map_groups(
            duplicates, fn_args=(dd.near_threshold, dd.num_perm), batch_format="pandas", num_cpus=0.1,
            concurrency=TASK_CONCURRENCY).take_all()
        dups_ref = [ray.put({d["id"]: d["drop_detail"] for d in dups})]
    else:
        dups_ref = [ray.put({})]
    # One streaming pass over the shards writes every output of a block: the
    # block with its duplicates marked (final/), its kept rows (samples/), their
    # messages JSONL by training phase (data/), and returns the block's small
    # counts (rows per phase; rows and tokens per leaf/status/reason) that the
    # stats and the recipe are summed from. No output is read back.
    final_tmp, final = out / "final.tmp", out / "final"
    samples_tmp, samples = run_dir(cfg) / "samples.tmp", run_dir(cfg) / "samples"
    data_tmp, data = run_dir(cfg) / "data.tmp", run_dir(cfg) / "data"
    for tmp in (final_tmp, samples_tmp, data_tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    counts = paths.map_batches(
        _write_outputs, fn_args=(dups_ref, str(final_tmp), str(samples_tmp), str(data_tmp),
                                 int(cfg.sdg.long_response_words), plan.get("ids")),
        batch_format="pandas", batch_size=None, num_cpus=0.1, concurrency=TASK_CONCURRENCY).take_all()
    phase_counts = [c for r in counts for c in json.loads(r["phases"])]
    partial = [c for r in counts for c in json.loads(r["stats"])]
    for d in (final_tmp, samples_tmp):
        d.mkdir(parents=True, exist_ok=True)  # an empty dataset writes no directory
    shutil.rmtree(final, ignore_errors=True)
    os.replace(final_tmp, final)
    shutil.rmtree(samples, ignore_errors=True)
    os.replace(samples_tmp, samples)
    for phase in ("knowledge_train", "skills_train"):
        (data_tmp / phase).mkdir(parents=True, exist_ok=True)
    stats = funnel(_sum_stats(partial))
    timing = out / "timing.json"
    if timing.exists():
        stats["total"]["seconds"] = round(json.loads(timing.read_text())["generation_seconds"], 3)
    recipe = {"taxonomy": str(cfg.taxonomy.path), "teacher": cfg.teacher.model, "phases": {}}
    for phase, leaves_branch in (("knowledge_train", "knowledge + foundational_skills"),
                                 ("skills_train", "compositional_skills")):
        rows = [c for c in phase_counts if c["phase"] == phase]
        n, short = sum(c["rows"] for c in rows), sum(c["short"] for c in rows)
        recipe["phases"][phase] = {"path": f"data/{phase}", "branches": leaves_branch, "samples": n,
                                   "short": short, "long": n - short}
    recipe["leaves"] = {leaf: s["kept"] for leaf, s in stats["leaves"].items()}
    (data_tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (data_tmp / "stats.json").write_text(json.dumps(stats, indent=1))
    shutil.rmtree(data, ignore_errors=True)
    os.replace(data_tmp, data)
    return stats


TASK_CONCURRENCY = 2  # at most this many tasks of one fractional-CPU operator at a time
STAT_KEYS = ("leaf", "kind", "status", "drop_stage", "drop_reason")


def _write_parquet(df, directory: str) -> None:
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False),
                   os.path.join(directory, f"part-{uuid.uuid4().hex}.parquet"))


def _planned_rows(path: str, plan: dict | None, columns: list[str] | None = None):
    """One shard's rows that are tasks of this plan (see tasks.in_plan); every row
    when plan.json has no ids (written by hand or by an older lab-ray)."""
    import pyarrow.parquet as pq

    if plan is None:
        return pq.read_table(path, columns=columns).to_pandas()
    if columns is not None:
        names = set(pq.read_schema(path).names)
        columns = [c for c in dict.fromkeys([*columns, "request_index"]) if c in names]
    df = pq.read_table(path, columns=columns).to_pandas()
    keep = in_plan(df, plan)
    return df if all(keep) else df[keep].reset_index(drop=True)


def _shard_signatures(paths, num_perm: int, plan: dict | None):
    import pyarrow as pa

    return pa.concat_tables([signature_rows(_planned_rows(p, plan, SIGNATURE_COLUMNS), num_perm)
                             for p in paths["path"]])


def _write_outputs(paths, dups_ref, final_dir: str, samples_dir: str, data_dir: str, long_words: int,
                   plan: dict | None):
    """Shards -> final/samples/JSONL files and their counts (a finalize task)."""
    import pandas as pd
    import ray

    dups = ray.get(dups_ref[0])
    out = [_write_shard_outputs(_planned_rows(p, plan), dups, final_dir, samples_dir, data_dir, long_words)
           for p in paths["path"]]
    return pd.concat(out, ignore_index=True)


def _write_shard_outputs(batch, dups, final_dir: str, samples_dir: str, data_dir: str, long_words: int):
    """One shard: mark duplicates, write final/samples/JSONL, return the shard's counts."""
    import pandas as pd

    batch = mark_duplicates(batch, dups)
    phases, stats = [], []
    if len(batch):
        _write_parquet(batch, final_dir)
        kept = batch[batch["status"] == "ok"]
        if len(kept):
            _write_parquet(kept, samples_dir)
            phases = write_jsonl(kept, data_dir, long_words).to_dict("records")
        stats = _partial_stats(batch[list(STAT_KEYS) + ["prompt_tokens", "completion_tokens"]]).to_dict("records")
    return pd.DataFrame({"phases": [json.dumps(phases, default=int)], "stats": [json.dumps(stats, default=int)]})


def _partial_stats(batch):
    import pandas as pd

    if not len(batch):
        return pd.DataFrame({k: [] for k in (*STAT_KEYS, "count()", "sum(prompt_tokens)", "sum(completion_tokens)")})
    g = batch.groupby(list(STAT_KEYS), dropna=False, sort=False)
    out = g.agg(**{"count()": ("status", "size"), "sum(prompt_tokens)": ("prompt_tokens", "sum"),
                   "sum(completion_tokens)": ("completion_tokens", "sum")}).reset_index()
    return out


def _sum_stats(partial: list[dict]) -> list[dict]:
    """The per-block counts summed per group: what groupby(STAT_KEYS).aggregate(Count, Sum, Sum) returns."""
    totals: dict[tuple, list[int]] = {}
    for r in partial:
        t = totals.setdefault(tuple(r[k] for k in STAT_KEYS), [0, 0, 0])
        t[0] += int(r["count()"])
        t[1] += int(r["sum(prompt_tokens)"] or 0)
        t[2] += int(r["sum(completion_tokens)"] or 0)
    return [{**dict(zip(STAT_KEYS, k)), "count()": v[0], "sum(prompt_tokens)": v[1], "sum(completion_tokens)": v[2]}
            for k, v in sorted(totals.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]


def stage_order(kind: str) -> list[str]:
    if kind == "knowledge":
        return S.KNOWLEDGE_STAGES + ["dedup"]
    if kind == "grounded":
        return S.SKILL_STAGES + ["dedup"]
    return S.SKILL_STAGES[1:] + ["dedup"]


def funnel(groups: list[dict]) -> dict:
    """Per leaf and stage: rows in, kept, dropped by reason; tokens per leaf."""
    leaves: dict[str, dict] = {}
    for g in groups:
        leaf = leaves.setdefault(g["leaf"], {"kind": g["kind"], "rows": 0, "kept": 0, "dropped": {},
                                             "prompt_tokens": 0, "completion_tokens": 0, "_by_stage": {}})
        n = int(g["count()"])
        leaf["rows"] += n
        leaf["prompt_tokens"] += int(g["sum(prompt_tokens)"] or 0)
        leaf["completion_tokens"] += int(g["sum(completion_tokens)"] or 0)
        if g["status"] == "ok":
            leaf["kept"] += n
        else:
            leaf["dropped"][g["drop_reason"]] = leaf["dropped"].get(g["drop_reason"], 0) + n
            by = leaf["_by_stage"].setdefault(g["drop_stage"], {})
            by[g["drop_reason"]] = by.get(g["drop_reason"], 0) + n
    for leaf in leaves.values():
        remaining, stages = leaf["rows"], []
        for stage in stage_order(leaf["kind"]):
            dropped = leaf["_by_stage"].get(stage, {})
            d = sum(dropped.values())
            stages.append({"stage": stage, "in": remaining, "kept": remaining - d, "dropped": dropped})
            remaining -= d
        leaf["stages"] = stages
        del leaf["_by_stage"]
    total = {k: sum(v[k] for v in leaves.values()) for k in ("rows", "kept", "prompt_tokens", "completion_tokens")}
    reasons: dict[str, int] = {}
    for v in leaves.values():
        for r, n in v["dropped"].items():
            reasons[r] = reasons.get(r, 0) + n
    total["dropped"] = reasons
    return {"leaves": dict(sorted(leaves.items())), "total": total, "written_at": time.time()}
