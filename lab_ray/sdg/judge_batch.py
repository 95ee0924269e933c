"""Several rows judged in one request (sdg.judge.rows_per_request).

Most of a judge's prompt is the same for many rows: its instructions, the leaf's task
description, for knowledge the whole chunk. Asking about k rows at once pays that once per k.
The reply is one line per row, "1: yes\\n2: no", constrained to the joint verdicts (every
combination of the judge's choices: 2^k for yes/no, 3^k for the pair judge's grades). Each
row's probabilities over the judge's choices come from, in order of preference:

- every allowed string's score (the CPU teacher scores them all): the exact marginal,
  P(row i = c) = the sum of P(joint) over the joint verdicts with c at line i;
- the top logprobs at each row's verdict token (vLLM scores only what it generates):
  P(verdict i | the verdicts before it, as generated);
- the verbatim verdicts: probability 1 on the one given.
"""

from __future__ import annotations

import itertools
import math

from lab_ray.errors import ConfigError
from lab_ray.teacher.client import choice_logprobs_from_top

# Joint verdicts in one constrained choice, at most (the CPU teacher scores each one).
MAX_JOINT_VERDICTS = 256
MAX_ROWS_PER_REQUEST = 8
# calibration.json: {CALIBRATION_KEY: {judge stage: {leaf: rows per request}}}
CALIBRATION_KEY = "rows_per_request"
# A leaf's rows are judged k per request only if its references' good-bad separation judged
# that way is at least this fraction of their separation judged one by one (and positive).
# A small teacher's joint verdicts follow the line's position more than the row: SmolLM2-135M
# ranked the bad references above the good ones (bench/RESULTS.md).
KEEP_SEPARATION = 0.75


def chosen_rows(judge, single: list[float] | None, joint: list[float] | None, k: int) -> int:
    """k when the [bad, good] levels judged k per request separate the references (the judge's
    own test, JudgeStage.separates) and at least KEEP_SEPARATION as well as one by one, else 1."""
    if not single or not joint or not judge.separates(joint):
        return 1
    return k if joint[1] - joint[0] >= KEEP_SEPARATION * (single[1] - single[0]) else 1


def check_rows_per_request(sdg) -> int:
    """sdg.judge.rows_per_request, checked: a whole number from 1 to MAX_ROWS_PER_REQUEST."""
    k = (sdg.get("judge") or {}).get("rows_per_request", 1)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_ROWS_PER_REQUEST:
        raise ConfigError(f"sdg.judge.rows_per_request={k!r}: rows judged per request is a whole number, "
                          f"1 to {MAX_ROWS_PER_REQUEST}")
    return k


def rows_for(choices: int, wanted: int) -> int:
    """The rows per request a judge with this many choices uses: at most `wanted`, and few enough
    that its joint verdicts stay within MAX_JOINT_VERDICTS (a 3-grade judge: 5)."""
    k = max(1, wanted)
    while k > 1 and choices ** k > MAX_JOINT_VERDICTS:
        k -= 1
    return k


def joint_choices(choices: list[str], m: int) -> list[str]:
    """The allowed replies for m rows: one line per row, "<number>: <choice>"."""
    return ["\n".join(f"{i + 1}: {c}" for i, c in enumerate(combo)) for combo in itertools.product(choices, repeat=m)]


def max_reply_tokens(m: int) -> int:
    """A generous token budget for a joint reply (a line is ~4 tokens: number, colon, choice, newline)."""
    return 8 * m + 8


def marginals(joint_logprobs: dict[str, float], choices: list[str], m: int) -> list[dict[str, float]] | None:
    """Per row, P(choice), from log P of every joint verdict; None unless every one is scored."""
    joint = joint_choices(choices, m)
    if not joint_logprobs or any(j not in joint_logprobs or not math.isfinite(joint_logprobs[j]) for j in joint):
        return None
    top = max(joint_logprobs[j] for j in joint)
    weights = [math.exp(joint_logprobs[j] - top) for j in joint]
    total = sum(weights)
    out = [dict.fromkeys(choices, 0.0) for _ in range(m)]
    for w, combo in zip(weights, itertools.product(choices, repeat=m)):
        for i, c in enumerate(combo):
            out[i][c] += w / total
    return out


def from_token_logprobs(logprobs, choices: list[str], m: int) -> list[dict[str, float]] | None:
    """Per row, P(choice) from the top logprobs at the token that starts its verdict (the first
    non-blank token after "<number>:"); None when a row's verdict token or a choice is missing."""
    try:
        content = logprobs["content"]
    except (TypeError, KeyError):
        return None
    out, text, row = [], "", 1
    for tok in content or []:
        token = tok.get("token", "") if isinstance(tok, dict) else ""
        if row <= m and token.strip() and text.rstrip().endswith(f"{row}:"):
            scores = choice_logprobs_from_top({"content": [tok]}, choices)
            if scores is None:
                return None
            top = max(scores.values())
            exp = {c: math.exp(v - top) for c, v in scores.items()}
            out.append({c: v / sum(exp.values()) for c, v in exp.items()})
            row += 1
        text += token
    return out if len(out) == m else None


def verbatim(text: str, choices: list[str], m: int) -> list[dict[str, float]] | None:
    """Per row, probability 1 on the verdict its line gives; None unless the reply is one of the
    joint verdicts."""
    lines = (text or "").strip().split("\n")
    if len(lines) != m:
        return None
    out = []
    for i, line in enumerate(lines):
        number, _, verdict = line.partition(":")
        if number.strip() != str(i + 1) or verdict.strip() not in choices:
            return None
        out.append({c: float(c == verdict.strip()) for c in choices})
    return out


def row_probs(reply, choices: list[str], m: int) -> list[dict[str, float]] | None:
    """Each of the m rows' probabilities over `choices` from a joint reply (see the module)."""
    return (marginals(reply.choice_logprobs or {}, choices, m)
            or from_token_logprobs(reply.logprobs[0] if reply.logprobs else None, choices, m)
            or verbatim(reply.text, choices, m))
