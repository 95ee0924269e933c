"""`lab-ray generate` end to end with the real embedded CPU teacher (SmolLM2-135M), tiny quota.

One teacher deployment for the module: the CLI deploys it on a free port and
shuts it down when the run is over. Its outputs are weak; the point is that
the pipeline around a real model produces valid, fully accounted outputs.
"""

from __future__ import annotations

import math
import socket

import pytest

from sdg_helpers import SAMPLE_LEAVES, SAMPLE_TAXONOMY, check_run

pytestmark = pytest.mark.slow
QUOTA = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_cli_on_the_sample_taxonomy_with_the_real_teacher(ray_cluster, cli, tmp_path):
    code, out, err = cli(
        "generate", f"run.root={tmp_path}", "run.name=real", f"taxonomy.path={SAMPLE_TAXONOMY}",
        f"teacher.port={_free_port()}", "ray.num_cpus=4", "sdg.progress=false",
        f"sdg.samples_per_leaf={QUOTA}", "sdg.instruction_max_tokens=24", "sdg.context_max_tokens=40",
        "sdg.response_max_tokens=40", "sdg.knowledge.max_tokens=64", "sdg.batch_size=8",
        # the pair judge writes its reasons before the verdict (the option on the real teacher)
        "sdg.judge.rationale=[judge_pair]", "sdg.judge.rationale_max_tokens=24")
    assert code == 0, err[-3000:]
    got = check_run(tmp_path / "real", {leaf: QUOTA for leaf in SAMPLE_LEAVES})
    stats = got["stats"]
    assert f"kept {stats['total']['kept']} of {QUOTA * len(SAMPLE_LEAVES)}" in out.replace("\n", " ")
    assert "resumed 0 of 8 tasks" in out

    # the real teacher did the work: tokens are accounted per leaf
    for leaf, s in stats["leaves"].items():
        assert s["prompt_tokens"] > 0, leaf
    assert stats["total"]["completion_tokens"] > 0
    # teacher failures would be a bug here (a healthy local teacher); weak output is not
    assert "teacher_error" not in stats["total"]["dropped"], got["dropped"][["drop_stage", "drop_detail"]]

    # a judge records its score (constrained choice: a probability, never unparsable), also on drop
    final = got["final"]
    for stage, col in (("judge_instruction", "instruction_score"), ("judge_pair", "pair_score"),
                       ("judge_faithfulness", "faithfulness_score"), ("judge_relevance", "relevance_score"),
                       ("judge_question", "question_score")):
        judged_out = final[final["drop_stage"] == stage]
        assert set(judged_out["drop_reason"]) <= {"judged_out"}, stage
        assert not judged_out[col].isna().any(), stage
    ok = got["ok"]
    for r in ok.to_dict("records"):
        if r["kind"] == "knowledge":
            assert all(not math.isnan(r[c]) for c in ("faithfulness_score", "relevance_score", "question_score"))
            assert r["context"] and r["chunk_index"] >= 0
        else:
            assert not math.isnan(r["instruction_score"]) and not math.isnan(r["pair_score"])
            assert r["pair_score"] >= 2 - 1e-9  # kept pairs are at or above the default threshold
    # the judge with a rationale wrote reasons for every row it judged, the others none
    pair_judged = final[final["pair_score"].notna()]
    assert len(pair_judged) and (pair_judged["judge_pair_rationale"].str.len() > 0).all()
    assert (final["judge_instruction_rationale"] == "").all()
    # the reasons were generated text, charged to the judge
    assert (pair_judged["judge_pair_completion_tokens"] >= 1).all()
