"""SDG engine at scale: the full skills pipeline driven by the instant test teacher.

Only the engine is measured: task fan-out, the stage actor pools (context,
instruction, judge, response, judge), the atomic Parquet shards and the
finalize pass (per-leaf dedup, samples Parquet, messages JSONL, stats), with
`lab_ray.testing.fake_teachers:InstantTeacher` answering every request at once.

For each N in --samples a fresh child process runs `lab-ray generate`'s own
code path (`lab_ray.sdg.commands.generate`) on its own local Ray, on a
temporary taxonomy of --leaves compositional skill leaves (half grounded,
half freeform, seeded from the sample taxonomy's skill leaves), with an
equal per-leaf quota summing to N. This process samples every 0.5 s the RSS
of the whole tree: the child (driver) and all its descendants, plus any
process of the child's Ray session (by session directory in its command
line), and reports the peak of the sum.

    .venv/bin/python bench/sdg_scale.py --samples 100000 1000000
    .venv/bin/python bench/sdg_scale.py --samples 1000000 --storage local s3

With `--storage local s3` each N runs twice, back to back: run.root on local disk, then
run.root=s3://lab-ray-bench/<N> on moto's S3 server (server mode, on 127.0.0.1, in this
parent process: the store's memory is not counted in the run's peak). The child and its
Ray workers reach it through the standard AWS variables only, as a user's run would.

The last line holds the figures of every N side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SOURCES = {  # sample taxonomy skill leaves: grounded (examples carry context) and freeform
    "grounded": "compositional_skills/extraction/facts_to_list",
    "freeform": "compositional_skills/writing/poetry/haiku",
}
GiB = 1024 ** 3


def write_taxonomy(root: Path, leaves: int) -> list[str]:
    """`leaves` skill leaves under root/compositional_skills, alternating grounded / freeform."""
    paths = []
    for i in range(leaves):
        kind = "grounded" if i % 2 == 0 else "freeform"
        src = REPO / "taxonomy" / SOURCES[kind]
        rel = f"compositional_skills/scale/{kind}/leaf_{i:04d}"
        dst = root / rel
        dst.mkdir(parents=True)
        for f in src.iterdir():
            shutil.copy(f, dst / f.name)
        paths.append(rel)
    return paths


# -- child: one generate run --------------------------------------------------------
def child(args) -> None:
    from lab_ray.config import load_config
    from lab_ray.sdg import run as pipeline
    from lab_ray.sdg.commands import generate

    work = Path(args.dir)
    per_leaf = args.child // args.leaves
    overrides = [f"run.root={args.run_root or work / 'runs'}", "run.name=scale", f"taxonomy.path={work / 'taxonomy'}",
                 f"sdg.samples_per_leaf={per_leaf}", "sdg.test_teacher=lab_ray.testing.fake_teachers:InstantTeacher",
                 "sdg.progress=false", f"ray.num_cpus={args.num_cpus}", "profiles.sdg=lab",
                 f"sdg.batch_size={args.batch_size}", f"sdg.actors_per_stage={args.actors}", *args.override]
    cfg = load_config(overrides)
    marks = {}
    finalize = pipeline.finalize

    def timed_finalize(*a, **k):  # split the wall time: generation vs finalize
        marks["finalize_start"] = time.perf_counter()
        return finalize(*a, **k)

    pipeline.finalize = timed_finalize
    import ray

    from lab_ray.ray_cluster import init_ray

    for attempt in range(3):  # a local Ray start can miss its window on a loaded machine
        try:
            init_ray(cfg.ray)
            break
        except Exception as e:  # noqa: BLE001
            if attempt == 2:
                raise
            print(f"ray start failed ({e}); retrying", flush=True)
            ray.shutdown()
            time.sleep(5)
    (work / "session").write_text(ray.get_runtime_context().gcs_address + "\n" +
                                  str(Path(ray._private.worker._global_node.get_session_dir_path()).name))
    t0 = time.perf_counter()
    result = generate(cfg)
    t1 = time.perf_counter()
    fs = marks.get("finalize_start", t1)
    total = result.stats["total"]
    print("RESULT " + json.dumps({"samples": result.tasks, "kept": total["kept"], "rows": total["rows"],
                                  "dropped": total["dropped"], "wall_s": t1 - t0, "generate_s": fs - t0,
                                  "finalize_s": t1 - fs}), flush=True)


# -- parent: run + memory sampling ------------------------------------------------------
class TreeSampler(threading.Thread):
    def __init__(self, pid: int, session_file: Path, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.session_file, self.interval = pid, session_file, interval
        self.peak, self.peak_procs, self.samples, self.stop_flag = 0, 0, 0, threading.Event()
        self.peak_pss = 0
        self.peak_by_name: dict[str, float] = {}
        self.cpu: dict[int, float] = {}  # pid -> last seen user+system CPU seconds

    def tree(self):
        import psutil

        procs = {}
        try:
            root = psutil.Process(self.pid)
            procs[root.pid] = root
            for p in root.children(recursive=True):
                procs[p.pid] = p
        except psutil.NoSuchProcess:
            return []
        session = self.session_file.read_text().split("\n")[-1] if self.session_file.exists() else None
        if session:
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if p.pid not in procs and any(session in c for c in (p.info["cmdline"] or [])):
                        procs[p.pid] = p
                        for c in p.children(recursive=True):
                            procs[c.pid] = c
                except psutil.Error:
                    pass
        return list(procs.values())

    def run(self):
        import psutil

        while not self.stop_flag.is_set():
            rss, pss, n, by_name = 0, 0, 0, {}
            for p in self.tree():
                try:
                    # PSS: a page shared by k processes (libraries, Ray's object store in
                    # /dev/shm mapped by every reader) counts 1/k per process, so the sum is
                    # the tree's real footprint; summed RSS counts shared pages k times.
                    mem = p.memory_full_info()  # psutil reads /proc/<pid>/smaps_rollup
                    r, pss = mem.rss, pss + mem.pss
                    t = p.cpu_times()
                    name = p.name()
                except psutil.Error:
                    continue
                rss += r
                n += 1
                self.cpu[p.pid] = t.user + t.system
                key = name.split("(")[0][:40]
                by_name[key] = by_name.get(key, 0) + r
            self.peak_pss = max(self.peak_pss, pss)
            if rss > self.peak:
                self.peak, self.peak_procs = rss, n
                self.peak_by_name = {k: round(v / GiB, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])}
            self.samples += 1
            self.stop_flag.wait(self.interval)


BUCKET = "lab-ray-bench"


def start_s3():
    """moto's S3 server on loopback: the multi-node test harness's own (tests/multinode)."""
    sys.path.insert(0, str(REPO / "tests"))
    from multinode.cluster_harness import start_s3_server

    return start_s3_server(BUCKET)


def s3_usage(s3, prefix: str) -> tuple[int, int]:
    """(objects, bytes) under prefix."""
    n = size = 0
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            n, size = n + 1, size + o["Size"]
    return n, size


def s3_clear(s3, prefix: str) -> None:
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


def run_one(n: int, args, s3=None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"sdg-scale-{n}-", dir=args.tmp))
    prefix = f"n{n}"
    try:
        write_taxonomy(work / "taxonomy", args.leaves)
        cmd = [sys.executable, __file__, "--child", str(n), "--dir", str(work), "--leaves", str(args.leaves),
               "--batch-size", str(args.batch_size), "--actors", str(args.actors),
               "--num-cpus", str(args.num_cpus)] + [x for o in args.override for x in ("--override", o)]
        env = dict(os.environ)
        if s3 is not None:
            cmd += ["--run-root", f"s3://{BUCKET}/{prefix}"]
            env.update(s3.env)
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        sampler = TreeSampler(proc.pid, work / "session")
        sampler.start()
        out = proc.stdout.read()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop_flag.set()
        sampler.join()
        load1 = os.getloadavg()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if rc != 0 or not lines:
            raise SystemExit(f"N={n}: child failed (rc={rc})\n{out[-3000:]}")
        r = json.loads(lines[-1][7:])
        r.update(process_wall_s=wall, peak_rss_gib=sampler.peak / GiB, peak_pss_gib=sampler.peak_pss / GiB,
                 peak_procs=sampler.peak_procs,
                 rss_samples=sampler.samples, tree_cpu_s=round(sum(sampler.cpu.values()), 1),
                 peak_rss_by_process=sampler.peak_by_name, samples_per_s=r["rows"] / r["wall_s"],
                 load_before=round(load0[0], 1), load_after=round(load1[0], 1),
                 storage="s3" if s3 is not None else "local")
        if s3 is not None:
            r["objects"], size = s3_usage(s3, prefix)
            r["stored_gib"] = round(size / GiB, 3)
        return r
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            if s3 is not None:
                s3_clear(s3, prefix)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--leaves", type=int, default=100, help="skill leaves in the temporary taxonomy")
    ap.add_argument("--batch-size", type=int, default=4096, help="rows per stage batch (sdg.batch_size)")
    ap.add_argument("--actors", type=int, default=1, help="actors per stage (sdg.actors_per_stage)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (ray.num_cpus)")
    ap.add_argument("--override", action="append", default=[], help="extra key=value config override")
    ap.add_argument("--tmp", default=None, help="parent directory of the temporary run dirs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run dirs")
    ap.add_argument("--storage", nargs="+", choices=["local", "s3"], default=["local"],
                    help="run.root on local disk and/or on moto's S3 server (loopback), back to back per N")
    ap.add_argument("--run-root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return child(args)

    s3 = start_s3() if "s3" in args.storage else None
    results = {}
    try:
        for n in args.samples:
            for storage in args.storage:
                r = run_one(n, args, s3 if storage == "s3" else None)
                results[(n, storage)] = r
                print(f"N={n} {storage}: {json.dumps(r)}", flush=True)
    finally:
        if s3 is not None:
            s3.stop()
    parts = [f"N={n} {st}: {r['wall_s']:.0f} s ({r['generate_s']:.0f} gen + {r['finalize_s']:.0f} finalize), "
             f"{r['samples_per_s']:.0f} samples/s, peak PSS {r['peak_pss_gib']:.2f} GiB (summed RSS "
             f"{r['peak_rss_gib']:.2f}), kept {r['kept']}, "
             f"load {r['load_before']}->{r['load_after']}" for (n, st), r in results.items()]
    for st in args.storage:
        ns = sorted(n for n, s in results if s == st)
        if len(ns) > 1:
            hi, lo = results[(ns[-1], st)], results[(ns[0], st)]
            parts.append(f"{st} PSS {ns[-1]}/{ns[0]} = {hi['peak_pss_gib'] / lo['peak_pss_gib']:.2f}x "
                         f"(RSS {hi['peak_rss_gib'] / lo['peak_rss_gib']:.2f}x)")
    for n in args.samples:
        if (n, "local") in results and (n, "s3") in results:
            a, b = results[(n, "local")], results[(n, "s3")]
            parts.append(f"N={n} s3/local wall = {b['wall_s'] / a['wall_s']:.2f}x, "
                         f"PSS = {b['peak_pss_gib'] / a['peak_pss_gib']:.2f}x")
    print(f"sdg_scale ({args.leaves} leaves, batch {args.batch_size}, {os.cpu_count()} CPUs): " + " | ".join(parts))


if __name__ == "__main__":
    main()
