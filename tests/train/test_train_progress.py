"""Training progress as a log reader sees it (non-TTY): a line per step with loss, lr, tokens/s,
ETA and the checkpoint written; selection says what it scores; `lab-ray status` on the result."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from fixture_paths import REPO
from datagen import write_run_data

pytestmark = pytest.mark.slow

STEP = re.compile(r"^train (\w+) step (\d+)/(\d+) \| loss (\S+) \| lr (\S+) \| (\d+) tokens/s \| (\S+) s/step "
                  r"\| ETA (\S+)(?: \| checkpoint (\S+))?$")


def test_step_lines_with_loss_and_tokens_per_s(tmp_path, train_proc):
    root = tmp_path / "runs"
    write_run_data(root / "p" / "data", n_knowledge_short=24, n_knowledge_long=0, n_skills=0)
    p = train_proc(root, "p", ["train.knowledge_short.max_steps=3", "train.knowledge_short.checkpoint_every=2",
                               "train.knowledge_long.enabled=false", "train.skills.enabled=false"])
    code = p.wait(1500)
    out = p.output()
    assert code == 0, out[-3000:]
    steps = [m for m in (STEP.match(x) for x in out.splitlines()) if m]
    assert [(m.group(1), int(m.group(2)), int(m.group(3))) for m in steps] == \
        [("knowledge_short", i, 3) for i in (1, 2, 3)], out[-3000:]
    for m in steps:
        assert math.isfinite(float(m.group(4))) and float(m.group(4)) > 0
        assert float(m.group(5)) > 0 and int(m.group(6)) > 0
        assert re.fullmatch(r"\d+:\d\d:\d\d", m.group(8))
    assert steps[-1].group(8) == "0:00:00"
    # the checkpoint written at step 2 is named on that step's line
    assert steps[1].group(9) and "checkpoint_" in steps[1].group(9) and not steps[0].group(9)
    assert "train knowledge_short: 3 steps on 2 workers" in out
    assert re.search(r"train: select knowledge: scoring \d+ checkpoints with \S+heldout_loss", out), out[-3000:]
    assert re.search(r"train: select knowledge after \d+ s: \S+ heldout_loss \S+ <- selected", out), out[-3000:]

    # lab-ray status on the finished training (another process, as from another shell)
    res = subprocess.run([sys.executable, "-m", "lab_ray.cli", "status", str(root / "p"), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    ks = st["training"]["phases"]["knowledge_short"]
    assert ks["status"] == "done" and ks["step"] == 3 and ks["total_steps"] == 3
    assert ks["loss"] == pytest.approx(float(steps[-1].group(4)), rel=1e-3)
    assert st["training"]["final_checkpoint"] and st["steps"]["train"] == "done"
    assert st["steps"]["generate"] == "-" and st["state"] == "done" and st["last_error"] is None
