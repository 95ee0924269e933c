"""Resume: SIGKILL the `lab-ray train` driver mid-phase, rerun, it continues from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from datagen import write_run_data

pytestmark = pytest.mark.slow


def _records(path):
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_sigkill_mid_phase_then_rerun_continues(tmp_path, train_proc):
    root = tmp_path / "runs"
    write_run_data(root / "r" / "data", n_knowledge_short=24, n_knowledge_long=24, n_skills=8)
    extra = ["train.knowledge_short.max_steps=1", "train.knowledge_long.max_steps=4",
             "train.knowledge_long.checkpoint_every=1", "train.knowledge_long.replay_ratio=0.3",
             "train.skills.enabled=false", "train.keep_checkpoints=2"]
    metrics = root / "r" / "train" / "metrics.jsonl"
    first = train_proc(root, "r", extra)
    # Wait until knowledge_long has a checkpoint (knowledge_short is then finished), then kill the driver.
    deadline = time.time() + 600
    while time.time() < deadline and first.proc.poll() is None:
        if any(r.get("phase") == "knowledge_long" and r.get("checkpoint") for r in _records(metrics)):
            break
        time.sleep(0.5)
    assert first.proc.poll() is None, "the first run ended before it could be killed:\n" + first.output()[-2000:]
    os.kill(first.proc.pid, signal.SIGKILL)  # the driver, as a crash would
    first.wait(30)
    first.cleanup()
    before = _records(metrics)
    done_long = [r["step"] for r in before if r.get("phase") == "knowledge_long" and r.get("checkpoint")]
    assert done_long and max(done_long) < 4
    journal = json.loads((root / "r" / "train" / "journal.json").read_text())
    assert journal["phases"]["knowledge_short"]["status"] == "done"
    assert journal["phases"]["knowledge_long"]["status"] == "running"

    second = train_proc(root, "r", extra)
    assert second.wait(1500) == 0, second.output()[-3000:]
    after = _records(metrics)[len(before):]
    # A finished phase is never repeated.
    assert not [r for r in after if r.get("phase") == "knowledge_short" and r.get("event") in ("step", "checkpoint")]
    # The interrupted phase resumes after its last reported checkpoint and finishes.
    new_steps = [r["step"] for r in after if r.get("phase") == "knowledge_long" and r["event"] == "step"]
    # (+2: the kill may land after Ray Train persisted a checkpoint but before its metrics line.)
    assert new_steps and 1 < new_steps[0] <= max(done_long) + 2, (new_steps, done_long)
    assert new_steps == list(range(new_steps[0], 5))
    assert new_steps[-1] == 4
    journal = json.loads((root / "r" / "train" / "journal.json").read_text())
    assert journal["phases"]["knowledge_long"]["status"] == "done"
    assert journal["phases"]["skills"]["status"] == "skipped"
    assert journal["final_checkpoint"] == journal["selection"]["knowledge"]["selected"]
