"""Teacher tokens per accepted sample, acceptance per stage and unique instructions:
one request per candidate (before fan-out) vs fan-out stages, side by side in one run.

Each side is the whole `lab-ray generate` command (teacher deployment, calibration,
generation, finalize) with the embedded CPU teacher, on the same taxonomy and quota;
the sides differ only in `sdg.fanout`. Targets are run in turn, the two sides of a
target back to back (interleaved, so a load change hits both).

Per leaf it prints: candidates, accepted, teacher prompt / completion tokens per
accepted sample, acceptance per stage (kept / in), accepted per minute of the whole
command, and the accepted instructions' uniqueness: exact-unique questions (normalised
text) and near-duplicate questions (MinHash LSH, Jaccard >= 0.7 on word 3-shingles,
datasketch) - dedup already drops near-duplicate *samples*; this counts questions alone.

    .venv/bin/python bench/sdg_token_efficiency.py                       # sample taxonomy + synonyms
    .venv/bin/python bench/sdg_token_efficiency.py --targets synonyms --fanout gen_instruction=8
    .venv/bin/python bench/sdg_token_efficiency.py --targets knowledge --fanout "" \
        --on "sdg.knowledge.views=[document,detailed_summary,extractive_summary,atomic_facts]"   # views
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB_RAY = Path(sys.executable).with_name("lab-ray")
FIXTURE = ROOT.parent / "shared" / "fixtures" / "instructlab-taxonomy"
TARGETS = {
    # name: (taxonomy, extra overrides); quotas as the issue's measurements
    "sample": (ROOT / "taxonomy", []),
    "synonyms": (FIXTURE, ["sdg.leaves=[compositional_skills/linguistics/synonyms]", "sdg.samples_per_leaf=30"]),
    "knowledge": (ROOT / "taxonomy", ["sdg.leaves=[knowledge/geography/islands/varrow_island]"]),
}


def run_side(target: str, side: str, fanout: dict, root: Path, extra: list[str], only: list[str] = ()) -> dict:
    taxonomy, overrides = TARGETS[target]
    name = f"{target}-{side}"
    args = [str(LAB_RAY), "generate", f"run.root={root}", f"run.name={name}", f"taxonomy.path={taxonomy}",
            "sdg.progress=false", *overrides, *extra, *only, *(f"sdg.fanout.{k}={v}" for k, v in fanout.items())]
    log = root / f"{name}.log"
    t0 = time.monotonic()
    with open(log, "w") as f:
        code = subprocess.call(args, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "CI": "1"})
    wall = time.monotonic() - t0
    if code != 0:
        raise SystemExit(f"{name}: lab-ray generate exited {code}; see {log}")
    stats = json.loads((root / name / "data" / "stats.json").read_text())
    return {"wall_s": wall, "stats": stats, "samples": samples(root / name / "samples"),
            "gen_s": stats["total"].get("seconds")}


def samples(path: Path):
    import pandas as pd

    files = sorted(path.rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f, columns=["leaf", "question"]) for f in files], ignore_index=True) \
        if files else pd.DataFrame({"leaf": [], "question": []})


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", str(text).casefold())).strip()


def uniqueness(questions: list[str]) -> tuple[int, int]:
    """(exact-unique normalised questions, questions near-duplicating an earlier one)."""
    from datasketch import MinHash, MinHashLSH

    lsh, near, seen = MinHashLSH(threshold=0.7, num_perm=64), 0, set()
    for i, q in enumerate(questions):
        t = _norm(q)
        seen.add(t)
        words = t.split()
        m = MinHash(num_perm=64, seed=1)
        for s in {" ".join(words[j:j + 3]) for j in range(max(1, len(words) - 2))}:
            m.update(s.encode())
        if lsh.query(m):
            near += 1
        lsh.insert(str(i), m)
    return len(seen), near


def leaf_rows(side: dict) -> list[dict]:
    out = []
    minutes = side["wall_s"] / 60
    for leaf, s in side["stats"]["leaves"].items():
        kept = int(s["kept"])
        qs = side["samples"][side["samples"]["leaf"] == leaf]["question"].tolist()
        exact, near = uniqueness(qs)
        # per stage: kept/in, and the stage's teacher tokens (prompt+completion) per accepted sample
        stages = ", ".join(f"{st['stage']}{'x' + str(st['fanout']) if st.get('fanout') else ''} "
                           f"{st['kept']}/{st['in']}"
                           + (f" [{(st.get('prompt_tokens', 0) + st.get('completion_tokens', 0)) / max(1, kept):.0f} tok]"
                              if st.get("prompt_tokens") else "")
                           for st in s["stages"])
        out.append({"leaf": leaf, "candidates": int(s["rows"]), "kept": kept,
                    "prompt": int(s["prompt_tokens"]), "completion": int(s["completion_tokens"]),
                    "per_kept": (int(s["prompt_tokens"]) + int(s["completion_tokens"])) / kept if kept else float("inf"),
                    "acceptance": kept / int(s["rows"]) if s["rows"] else 0.0, "stages": stages,
                    "unique": exact, "near": near, "per_min": kept / minutes})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="sample,synonyms")
    ap.add_argument("--fanout", default="gen_context=2,gen_instruction=4,gen_qa=4",
                    help="the fan-out side's sdg.fanout (stage=n,...)")
    ap.add_argument("--root", default=None, help="run root (default: a temporary directory)")
    ap.add_argument("--override", action="append", default=[], help="extra key=value for both sides")
    ap.add_argument("--on", action="append", default=[],
                    help="extra key=value for the second side only (e.g. sdg.knowledge.views=[document,atomic_facts])")
    a = ap.parse_args()
    fanout = {k: int(v) for k, v in (p.split("=") for p in a.fanout.split(",") if p)}
    root = Path(a.root or tempfile.mkdtemp(prefix="lab-ray-token-eff-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"run root {root}; fan-out side: {fanout}; load average {os.getloadavg()[0]:.1f}", flush=True)
    for target in a.targets.split(","):
        sides = {}
        for side, fo in (("off", {}), ("fanout", fanout)):
            sides[side] = run_side(target, side, fo, root, a.override, a.on if side == "fanout" else [])
            r = sides[side]
            tot = r["stats"]["total"]
            kept = max(1, tot["kept"])
            print(f"\n[{target} / {side}] whole command {r['wall_s']:.0f} s (generation {r['gen_s']} s), "
                  f"load {os.getloadavg()[0]:.1f}: {tot['rows']} candidates, {tot['kept']} accepted, "
                  f"{tot['prompt_tokens']} prompt + {tot['completion_tokens']} completion tokens = "
                  f"{(tot['prompt_tokens'] + tot['completion_tokens']) / kept:.0f} per accepted "
                  f"({tot.get('cached_prompt_tokens', 0)} prompt tokens from the prefix cache: "
                  f"{(tot['prompt_tokens'] - tot.get('cached_prompt_tokens', 0) + tot['completion_tokens']) / kept:.0f}"
                  f" computed per accepted), "
                  f"{tot['kept'] / (r['wall_s'] / 60):.2f} accepted/min", flush=True)
            for row in leaf_rows(r):
                print(f"  {row['leaf']}: {row['kept']}/{row['candidates']} accepted ({row['acceptance']:.0%}), "
                      f"{row['per_kept']:.0f} tokens/accepted ({row['prompt']} p + {row['completion']} c), "
                      f"unique questions {row['unique']}/{row['kept']}, near-dup {row['near']}, "
                      f"{row['per_min']:.2f}/min\n    stages: {row['stages']}", flush=True)
        off, on = (sides[s]["stats"]["total"] for s in ("off", "fanout"))
        per = lambda t: (t["prompt_tokens"] + t["completion_tokens"]) / max(1, t["kept"])  # noqa: E731
        # computed: what the teacher ran (prompt tokens its prefix cache served cost no compute)
        computed = lambda t: (t["prompt_tokens"] - t.get("cached_prompt_tokens", 0) + t["completion_tokens"]) / max(1, t["kept"])  # noqa: E731
        print(f"\n[{target}] tokens per accepted: fanout/off = {per(on) / per(off):.3f} billed, "
              f"{computed(on) / computed(off):.3f} computed (target <= 0.333); "
              f"acceptance off {off['kept'] / off['rows']:.2f}, fanout {on['kept'] / on['rows']:.2f}; "
              f"accepted/min fanout/off = {(on['kept'] / sides['fanout']['wall_s']) / max(1e-9, off['kept'] / sides['off']['wall_s']):.2f}",
              flush=True)


if __name__ == "__main__":
    main()
