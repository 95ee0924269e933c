"""Generation progress as a log reader sees it: lines that grow to the final totals, an ETA,
and no deprecation warning from lab-ray's own calls into Ray."""

from __future__ import annotations

import json
import logging
import re
import warnings

import pandas as pd
import pytest

from sdg_helpers import SAMPLE_LEAVES, instant_spec, sdg_config

pytestmark = pytest.mark.slow

LINE = re.compile(r"^sdg( done)? (\d+:\d\d:\d\d) \| rows (\d+)/(\d+) .*kept (\d+) \| .*ETA (\S+)$")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_progress_lines_grow_to_the_final_totals_without_deprecations(ray_cluster, tmp_path, capsys):
    from lab_ray.sdg.progress import read_progress
    from lab_ray.sdg.run import run_generation

    quota = 40
    cfg = sdg_config(tmp_path, "watched", f"sdg.samples_per_leaf={quota}", "sdg.batch_size=4",
                     "sdg.progress=true", "sdg.progress_interval_s=0.3")
    records = _Records()
    logging.getLogger("ray").addHandler(records)
    try:
        with warnings.catch_warnings():
            # any warning attributed to a lab_ray module (Ray's deprecations point at their caller) fails the test
            warnings.filterwarnings("error", module=r"lab_ray(\.|$)")
            result = run_generation(cfg, instant_spec(latency_s=0.05, reject_fraction=0.2))
    finally:
        logging.getLogger("ray").removeHandler(records)
    out = capsys.readouterr().out
    (tmp_path / "out.txt").write_text(out)
    lines = [m for m in (LINE.match(x) for x in out.splitlines()) if m]
    assert len(lines) >= 3, out[-3000:]
    total = quota * len(SAMPLE_LEAVES)
    assert {int(m.group(4)) for m in lines} == {total}
    done = [int(m.group(3)) for m in lines]
    assert done == sorted(done) and done[0] < total, done  # counts grow ...
    final = lines[-1]
    assert final.group(1) == " done" and int(final.group(3)) == total  # ... and reach the totals
    kept = result.stats["total"]["kept"]
    dedup_dropped = sum(st["dropped"].get("duplicate", 0) for s in result.stats["leaves"].values()
                        for st in s["stages"] if st["stage"] == "dedup")
    assert int(final.group(5)) == kept + dedup_dropped  # kept before dedup
    assert final.group(6) == "0:00:00"
    # an ETA in time units while the run was going
    assert any(re.fullmatch(r"\d+:\d\d:\d\d", m.group(6)) for m in lines[:-1]), \
        "\n".join(m.group(0) for m in lines)
    # the per-stage counts of the final snapshot equal the stats' funnel
    snap = read_progress(tmp_path / "watched" / "sdg")
    assert snap["state"] == "done" and snap["done"] == total and snap["eta_s"] == 0
    for leaf, s in result.stats["leaves"].items():
        assert snap["leaves"][leaf]["done"] == quota
    funnel: dict[str, list[int]] = {}
    for s in result.stats["leaves"].values():
        for st in s["stages"]:
            f = funnel.setdefault(st["stage"], [0, 0])
            f[0] += st["in"]
            f[1] += st["kept"]
    for stage, s in snap["stages"].items():
        assert [s["in"], s["kept"]] == funnel[stage], (stage, s, funnel[stage])
        assert s["in_flight"] == 0
    assert snap["teacher_errors"] == 0 and snap["completion_tokens"] > 0
    assert "Total Progress" not in out  # Ray Data's own bars are off
    deprecations = [m for m in records.messages if "deprecat" in m.lower()]
    assert not deprecations, deprecations


def test_stage_counts_are_whole_column_sums():
    from lab_ray.sdg.progress import batch_delta

    before = pd.DataFrame({"status": ["ok", "ok", "ok", "dropped"], "completion_tokens": [1, 1, 1, 1]})
    out = pd.DataFrame({"kind": ["freeform"] * 4, "status": ["ok", "dropped", "dropped", "dropped"],
                        "drop_stage": ["", "judge_pair", "judge_pair", "gen_instruction"],
                        "drop_reason": ["", "judged_out", "teacher_error", "unparsable"],
                        "prompt_tokens": [5, 5, 0, 0], "completion_tokens": [3, 2, 1, 1]})
    d = batch_delta("judge_pair", before, out, n_live=3)
    assert d == {"in": 3, "kept": 1, "dropped": {"judged_out": 1, "teacher_error": 1},
                 "prompt_tokens": 10, "completion_tokens": 3}
