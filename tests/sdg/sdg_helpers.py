"""SDG test helpers: configs in tmp dirs, test teacher specs, and the checks every finished run must pass."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from fixture_paths import REPO

SAMPLE_TAXONOMY = REPO / "taxonomy"
SAMPLE_LEAVES = [
    "compositional_skills/extraction/facts_to_list",
    "compositional_skills/writing/poetry/haiku",
    "foundational_skills/reasoning/arithmetic_word_problems",
    "knowledge/geography/islands/varrow_island",
]
REASONS = {"judged_out", "unparsable", "teacher_error", "duplicate"}
FAKES = "lab_ray.testing.fake_teachers"


def instant_spec(**args) -> dict:
    return {"kind": "python", "factory": f"{FAKES}:InstantTeacher", "args": args}


def faulty_spec(**args) -> dict:
    return {"kind": "python", "factory": f"{FAKES}:FaultyTeacher", "args": args}


def sdg_config(root: Path, name: str, *overrides: str, config_file: str | None = None):
    from lab_ray.config import load_config

    return load_config([f"run.root={root}", f"run.name={name}", "sdg.progress=false", "ray.num_cpus=4",
                        f"taxonomy.path={SAMPLE_TAXONOMY}", *overrides], config_file)


# -- output checks ---------------------------------------------------------------
def read_parquet_dir(path: Path):
    import pandas as pd

    files = sorted(Path(path).rglob("*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def read_jsonl_dir(path: Path) -> list[dict]:
    rows = []
    for f in sorted(Path(path).glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))  # every line must parse
    return rows


def check_run(run_dir: Path, quotas: dict[str, int], timed: bool = True, fanout: dict | None = None) -> dict:
    """Everything a finished run must satisfy; returns the pieces for further asserts.

    quotas: leaf -> expected number of candidate rows for that leaf (without fan-out: tasks).
    fanout: the run's sdg.fanout (a row dropped before a fan-out stands for all its children).
    """
    from lab_ray.sdg.stages import fanout_width, stage_order
    from lab_ray.sdg.stats import fanout_depth
    from lab_ray.sdg.tasks import quota_rows

    sdg = run_dir / "sdg"
    assert not list((sdg / "shards").glob("*.tmp")), "a partial shard was left behind"
    shards = read_parquet_dir(sdg / "shards")
    # every task's rows exactly once: the rows stand for exactly the quota
    assert shards["id"].is_unique
    shards["depth"] = fanout_depth(shards["item_path"]) if "item_path" in shards else 0
    stands_for = [quota_rows(k, d, fanout or {}) for k, d in zip(shards["kind"], shards["depth"])]
    got = Counter()
    for leaf, n in zip(shards["leaf"], stands_for):
        got[leaf] += n
    assert dict(got) == quotas
    if not fanout:
        assert len(shards) == sum(quotas.values()) and dict(Counter(shards["leaf"])) == quotas

    final = read_parquet_dir(sdg / "final")
    assert len(final) == len(shards) and set(final["id"]) == set(shards["id"])
    assert set(final["status"]) <= {"ok", "dropped"}
    ok, dropped = final[final["status"] == "ok"], final[final["status"] == "dropped"]
    assert set(dropped["drop_reason"]) <= REASONS
    assert (ok["drop_reason"] == "").all() and (ok["drop_stage"] == "").all()
    for kind, part in dropped.groupby("kind"):
        assert set(part["drop_stage"]) <= set(stage_order(kind, fanout)), (kind, set(part["drop_stage"]))
    # only the dedup stage drops rows as duplicate after generation; dedup never drops anything else
    assert set(dropped[dropped["drop_stage"] == "dedup"]["drop_reason"]) <= {"duplicate"}
    for col in ("question", "answer"):
        assert all(isinstance(s, str) and s.strip() != "" for s in ok[col]), col

    samples = read_parquet_dir(run_dir / "samples")
    assert len(samples) == len(ok)
    if len(samples):
        assert sorted(samples["id"]) == sorted(ok["id"])
        assert (samples["status"] == "ok").all()

    data = run_dir / "data"
    phases = {p: read_jsonl_dir(data / p) for p in ("knowledge_train", "skills_train")}
    ids = [r["id"] for rows in phases.values() for r in rows]
    assert len(ids) == len(set(ids)) == len(ok) and set(ids) == set(ok["id"])
    by_id = ok.set_index("id")
    for phase, rows in phases.items():
        for r in rows:
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"], r
            assert all(isinstance(m["content"], str) and m["content"].strip() for m in r["messages"]), r
            meta = r["metadata"]
            src = by_id.loc[r["id"]]
            assert meta["leaf"] == src["leaf"] and meta["branch"] == src["branch"]
            assert r["messages"][1]["content"] == src["answer"]
            assert (meta["branch"] == "compositional_skills") == (phase == "skills_train")
            assert meta["length"] in ("short", "long")
            if meta["branch"] == "knowledge":
                assert meta["chunk"].strip() and meta["chunk"] == src["context"]

    import yaml

    recipe = yaml.safe_load((data / "recipe.yaml").read_text())
    for phase, rows in phases.items():
        rp = recipe["phases"][phase]
        assert rp["samples"] == len(rows) and rp["short"] + rp["long"] == len(rows)
        assert rp["short"] == sum(r["metadata"]["length"] == "short" for r in rows)

    stats = json.loads((data / "stats.json").read_text())
    assert set(stats["leaves"]) == set(quotas)
    for leaf, s in stats["leaves"].items():
        rows = final[final["leaf"] == leaf]
        leaf_drops = rows[rows["status"] == "dropped"]
        assert s["rows"] == len(rows)
        assert s["kept"] == int((rows["status"] == "ok").sum())
        assert s["dropped"] == dict(Counter(leaf_drops["drop_reason"]))
        assert s["kept"] + sum(s["dropped"].values()) == s["rows"]
        assert recipe["leaves"][leaf] == s["kept"]
        # the funnel: in = kept + dropped at every stage, each stage's in is the previous kept
        stages = s["stages"]
        assert [st["stage"] for st in stages] == stage_order(s["kind"], fanout)
        widths = [fanout_width(st["stage"], fanout) for st in stages]
        product = 1
        for w in widths:
            product *= w
        assert stages[0]["in"] == quotas[leaf] // product and stages[-1]["kept"] == s["kept"]
        for prev, st in zip(stages, stages[1:]):
            assert st["in"] == prev["kept"], (leaf, st)
        depth = 0
        for st, w in zip(stages, widths):
            expect = leaf_drops[leaf_drops["drop_stage"] == st["stage"]]
            assert st["dropped"] == dict(Counter(expect["drop_reason"])), (leaf, st)
            if w == 1:
                assert st["in"] == st["kept"] + sum(st["dropped"].values()), (leaf, st)
                continue
            whole = int((fanout_depth(expect["item_path"]) == depth).sum())  # parents dropped whole
            children = len(expect) - whole
            assert (st["in"] - whole) * w == st["kept"] + children and st["fanout"] == w, (leaf, st)
            depth += 1
    total = stats["total"]
    assert total["rows"] == len(final) and total["kept"] == len(ok)
    assert total["dropped"] == dict(Counter(dropped["drop_reason"]))
    if timed:  # a run that generated (not a hand-made shard set) records its wall time for the report
        assert total["seconds"] > 0
    return {"shards": shards, "final": final, "ok": ok, "dropped": dropped, "samples": samples,
            "phases": phases, "stats": stats, "recipe": recipe}
