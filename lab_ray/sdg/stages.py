"""The SDG stages as Ray Data map_batches callables (one actor pool each).

Every stage receives a pandas batch, sends one teacher request per live row
concurrently through the shared TeacherClient, and writes its result columns.
Rows are never removed mid-pipeline: a row that fails gets status="dropped"
with the stage and the reason (judged_out, unparsable, teacher_error), so the
stats can show in = kept + dropped for every stage, and later stages skip it.
"""

from __future__ import annotations

import importlib
import json
import math

import pandas as pd

from lab_ray.sdg.parsing import clean_single, parse_tagged
from lab_ray.sdg.prompts import _compile, load_prompt

SKILL_STAGES = ["gen_context", "gen_instruction", "judge_instruction", "gen_response", "judge_pair"]
KNOWLEDGE_STAGES = ["gen_qa", "judge_faithfulness", "judge_relevance", "judge_question"]
ALL_STAGES = SKILL_STAGES + KNOWLEDGE_STAGES + ["dedup"]


def make_teacher(spec: dict):
    """spec: {"kind": "http", ...client kwargs} or {"kind": "python", "factory": "mod:fn", "args": {...}}."""
    if spec.get("kind") == "python":  # test/benchmark teachers only; never the default path
        module, fn = spec["factory"].split(":")
        return getattr(importlib.import_module(module), fn)(**spec.get("args", {}))
    from lab_ray.teacher.client import TeacherClient

    kw = {k: v for k, v in spec.items() if k != "kind"}
    return TeacherClient(**kw)


class _Memo:
    """Prompt rendering and example parsing without per-row repeats (a stage hot path).

    A prompt's system text and its in-context example turns depend on a few
    leaf-level variables and on the row's example rotation only, so each
    template's output is memoised on the values of exactly the variables the
    template reads (jinja2.meta); the row's own final turn is rendered every
    time. `render` mirrors `Prompt.render`; `Stage.messages` checks it against
    `Prompt.render` on the first row of every batch and falls back to the
    latter for good on any difference.
    """

    LIMIT = 4096  # entries per cache; cleared when full

    def __init__(self, prompt):
        import jinja2.meta

        from lab_ray.sdg.prompts import _ENV

        self.prompt = prompt
        self.vars = {t: tuple(sorted(jinja2.meta.find_undeclared_variables(_ENV.parse(t))))
                     for t in (prompt.system, prompt.turn_user, prompt.turn_assistant)}
        self.cache: dict = {}
        self.parsed: dict[str, list] = {}
        self.prefixes: dict = {}

    def examples(self, text: str) -> list[dict]:
        out = self.parsed.get(text)
        if out is None:
            if len(self.parsed) >= self.LIMIT:
                self.parsed.clear()
            out = self.parsed[text] = json.loads(text)
        return out

    def prefix_vars(self, examples: list[dict]) -> tuple:
        """The row variables the system text and the example turns read (an example's own keys win)."""
        p = self.prompt
        names = set(self.vars[p.system])
        for ex in examples:
            names |= set(self.vars[p.turn_user]) - set(ex)
            names |= set(self.vars[p.turn_assistant]) - {"example"}
        return tuple(sorted(names))

    def prefix(self, row: dict, examples_text: str | None, examples: list[dict]) -> list[dict]:
        """System message + example turns, memoised on (examples text, the row values they read)."""
        names = self.prefix_vars(examples)
        key = (examples_text, tuple(row.get(v, _Memo) for v in names))
        try:
            out = self.prefixes.get(key)
        except TypeError:
            return self._prefix(row, examples)
        if out is None:
            out = self._prefix(row, examples)
            if len(self.prefixes) >= self.LIMIT:
                self.prefixes.clear()
            self.prefixes[key] = out
        return out

    def _prefix(self, row: dict, examples: list[dict]) -> list[dict]:
        p = self.prompt
        messages = [{"role": "system", "content": self._cached(p.system, row)}]
        for ex in examples:
            messages.append({"role": "user", "content": self._cached(p.turn_user, {**row, **ex})})
            messages.append({"role": "assistant", "content": self._cached(p.turn_assistant, {**row, "example": ex})})
        return messages

    @staticmethod
    def _freeze(v):
        if isinstance(v, dict):
            return tuple(sorted((k, _Memo._freeze(x)) for k, x in v.items()))
        if isinstance(v, list):
            return tuple(_Memo._freeze(x) for x in v)
        return v

    def _cached(self, template: str, variables: dict) -> str:
        key = (template, tuple(self._freeze(variables.get(v, _Memo)) for v in self.vars[template]))
        try:
            out = self.cache.get(key)
        except TypeError:  # an unhashable value: no memo
            return _compile(template).render(**variables).strip()
        if out is None:
            out = _compile(template).render(**variables).strip()
            if len(self.cache) >= self.LIMIT:
                self.cache.clear()
            self.cache[key] = out
        return out

    def render(self, row: dict, examples: list[dict], examples_text: str | None = None) -> list[dict[str, str]]:
        import jinja2

        from lab_ray.errors import ConfigError

        p = self.prompt
        try:
            messages = list(self.prefix(row, examples_text, examples))
            messages.append({"role": "user", "content": _compile(p.turn_user).render(**row).strip()})
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt {p.name}: {e} (a variable the template uses is missing)")
        return [m for m in messages if m["content"] or m["role"] != "system"]


def empty_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The columns every stage may write, so all batches share one schema."""
    defaults = {"status": "ok", "drop_stage": "", "drop_reason": "", "drop_detail": "", "question": "",
                "answer": "", "instruction_score": math.nan, "pair_score": math.nan,
                "faithfulness_score": math.nan, "relevance_score": math.nan, "question_score": math.nan,
                "prompt_tokens": 0, "completion_tokens": 0}
    for col, value in defaults.items():
        if col not in df.columns:
            df[col] = value
    return df


SCORE_COLUMNS = ("instruction_score", "pair_score", "faithfulness_score", "relevance_score", "question_score")


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes: a score column that is all-null in a block arrives as None
    objects, which Ray would store pickled and Parquet readers then refuse."""
    for col in SCORE_COLUMNS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("prompt_tokens", "completion_tokens", "request_index", "chunk_index"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64")
    return df


class TeacherStage:
    stage = ""
    prompt_name = ""

    def __init__(self, teacher_spec: dict, sdg: dict, calibration: dict | None = None):
        self.teacher = make_teacher(teacher_spec)
        self.sdg = sdg
        self.prompt = load_prompt(self.prompt_name, sdg.get("prompts_dir"))
        # leaf -> [raw score of known-bad references, raw score of known-good ones]
        self.calibration = (calibration or {}).get(self.stage, {})
        self.memo = _Memo(self.prompt)
        self.memo_ok = True  # False once the memoised render ever differed from Prompt.render
        self._check_next = True

    knowledge = False  # which branch the stage serves: knowledge rows or skill rows

    def applies(self, row: dict) -> bool:
        return (row["kind"] == "knowledge") == self.knowledge

    def request(self, row: dict) -> tuple[str, dict]:
        raise NotImplementedError

    def apply(self, row: dict, reply) -> None:
        raise NotImplementedError

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = empty_columns(batch)
        cols = list(batch.columns)
        # column lists -> row dicts (the same Python values as to_dict("records"), far cheaper)
        rows = [dict(zip(cols, values)) for values in zip(*(batch[c].tolist() for c in cols))]
        live = [r for r in rows if r["status"] == "ok" and self.applies(r)]
        self._check_next = True
        replies = self.teacher.run_many([self.request(r) for r in live]) if live else []
        for row, reply in zip(live, replies):
            row["prompt_tokens"] += reply.prompt_tokens
            row["completion_tokens"] += reply.completion_tokens
            if not reply.ok:
                reason = "unparsable" if reply.error == "unparsable" else "teacher_error"
                self.drop(row, reason, f"{reply.error}: {reply.detail or ''}"[:300])
                continue
            try:
                self.apply(row, reply)
            except (ValueError, KeyError, TypeError) as e:
                self.drop(row, "unparsable", f"{type(e).__name__}: {e}"[:300])
        out = pd.DataFrame({c: [r[c] for r in rows] for c in cols}, columns=batch.columns)
        return typed(out)

    def drop(self, row: dict, reason: str, detail: str = "") -> None:
        row.update(status="dropped", drop_stage=self.stage, drop_reason=reason, drop_detail=detail[:300])

    def messages(self, row: dict, with_examples: bool = True) -> list[dict]:
        memo = getattr(self, "memo", None)  # None: a judge built without __init__ (calibration.py)
        if memo is None:
            return self.prompt.render(row, json.loads(row["examples"]) if with_examples else [])
        examples = memo.examples(row["examples"]) if with_examples else []
        if not self.memo_ok:
            return self.prompt.render(row, examples)
        out = self.memo.render(row, examples, row["examples"] if with_examples else None)
        if self._check_next:  # first row of each batch: the memo must agree with Prompt.render
            self._check_next = False
            if out != self.prompt.render(row, examples):
                self.memo_ok = False
                return self.prompt.render(row, examples)
        return out

    def generate(self, row: dict, max_tokens: int) -> tuple[str, dict]:
        return "chat", {"messages": self.messages(row), "max_tokens": max_tokens,
                        "temperature": self.sdg["temperature"],
                        "seed": (int(row["id"][:8], 16) + int(self.sdg.get("seed", 0))) % 2**31,
                        **({"stop": list(self.prompt.stop)} if self.prompt.stop else {})}

    def choose(self, row: dict) -> tuple[str, dict]:
        return "choose", {"messages": self.messages(row, with_examples=False), "choices": list(self.prompt.choices)}

    def yes_probability(self, reply) -> float:
        probs = reply.choice_probs()
        if probs is None:  # an endpoint without choice scores: its verbatim answer counts fully
            return 1.0 if reply.text == self.prompt.positive else 0.0
        return float(probs.get(self.prompt.positive, 0.0))


class JudgeStage(TeacherStage):
    """A judge: one constrained choice per row, a raw score, a calibrated verdict.

    A small teacher's raw P(yes) is biased and squeezed (0.4-0.6 for good and
    bad rows alike), so a fixed threshold on it keeps noise or drops a whole
    leaf. Each judge is therefore calibrated per leaf on references it must
    get right (the leaf's own seeds as known-good, mismatched or off-task
    rows as known-bad; see calibration.py): the calibrated score is
    (raw - bad) / (good - bad), so 0.5 means halfway between the two. When the
    references do not separate, the raw score and raw threshold are used.
    """

    score_column = ""
    threshold_key = ""

    def request(self, row):
        return self.choose(row)

    def raw_score(self, reply) -> float:
        return self.yes_probability(reply)

    def calibrated(self, leaf: str, raw: float) -> float | None:
        ref = self.calibration.get(leaf)
        if not ref or ref[1] - ref[0] < self.sdg["judge"].get("min_separation", 0.05):
            return None
        return (raw - ref[0]) / (ref[1] - ref[0])

    def apply(self, row, reply):
        raw = self.raw_score(reply)
        cal = self.calibrated(row["leaf"], raw)
        score = raw if cal is None else cal
        row[self.score_column] = score
        if score < self.sdg["judge"][self.threshold_key]:
            self.drop(row, "judged_out", f"raw={raw:.3f}" + ("" if cal is None else f" calibrated={cal:.2f}"))


# -- skills -------------------------------------------------------------------
class GenerateContext(TeacherStage):
    stage, prompt_name = "gen_context", "skill_context"

    def applies(self, row):
        return row["kind"] == "grounded"

    def request(self, row):
        return self.generate(row, self.sdg["context_max_tokens"])

    def apply(self, row, reply):
        text = clean_single(reply.text)
        if text is None:
            return self.drop(row, "unparsable", reply.text[:200])
        row["context"] = text


class GenerateInstruction(TeacherStage):
    stage, prompt_name = "gen_instruction", "skill_instruction"

    def request(self, row):
        return self.generate(row, self.sdg["instruction_max_tokens"])

    def apply(self, row, reply):
        text = clean_single(reply.text, max_chars=600)
        examples = {e["question"].strip().casefold() for e in self.memo.examples(row["examples"])}
        if text is None:
            return self.drop(row, "unparsable", reply.text[:200])
        if text.casefold() in examples:  # a copy of a seed is not new data
            return self.drop(row, "duplicate", "copy of an in-context example")
        row["question"] = text


class JudgeInstruction(JudgeStage):
    stage, prompt_name = "judge_instruction", "instruction_judge"
    score_column, threshold_key = "instruction_score", "instruction_min"


class GenerateResponse(TeacherStage):
    stage, prompt_name = "gen_response", "skill_response"

    def request(self, row):
        return self.generate(row, self.sdg["response_max_tokens"])

    def apply(self, row, reply):
        text = (reply.text or "").strip()
        if len(text) < 2:
            return self.drop(row, "unparsable", "empty response")
        row["answer"] = text


class JudgePair(JudgeStage):
    """The pair on the 3-point scale: raw = expected grade under the judge's
    choice probabilities; the calibrated grade is 1 + 2 * calibrated score,
    so the default threshold 2 means halfway between bad and good references."""

    stage, prompt_name = "judge_pair", "pair_judge"
    score_column, threshold_key = "pair_score", "pair_min_score"

    def raw_score(self, reply) -> float:
        probs = reply.choice_probs() or {reply.text: 1.0}
        return float(sum(p * self.prompt.scores.get(c, 0) for c, p in probs.items()))

    def calibrated(self, leaf, raw):
        cal = super().calibrated(leaf, raw)
        return None if cal is None else 1.0 + 2.0 * min(max(cal, 0.0), 1.0)


# -- knowledge ----------------------------------------------------------------
class GenerateKnowledgeQA(TeacherStage):
    stage, prompt_name = "gen_qa", "knowledge_qa"
    knowledge = True

    def request(self, row):
        return self.generate(row, self.sdg["knowledge"]["max_tokens"])

    def apply(self, row, reply):
        items = parse_tagged(reply.text, self.prompt.output_tags)
        if not items:
            return self.drop(row, "unparsable", reply.text[:200])
        row["question"], row["answer"] = items[0]["question"], items[0]["answer"]


class _KnowledgeJudge(JudgeStage):
    knowledge = True


class JudgeFaithfulness(_KnowledgeJudge):
    stage, prompt_name = "judge_faithfulness", "knowledge_faithfulness"
    score_column, threshold_key = "faithfulness_score", "faithfulness_min"


class JudgeRelevance(_KnowledgeJudge):
    stage, prompt_name = "judge_relevance", "knowledge_relevance"
    score_column, threshold_key = "relevance_score", "relevance_min"


class JudgeQuestion(_KnowledgeJudge):
    stage, prompt_name = "judge_question", "knowledge_question"
    score_column, threshold_key = "question_score", "question_min"


SKILL_PIPELINE = [GenerateContext, GenerateInstruction, JudgeInstruction, GenerateResponse, JudgePair]
KNOWLEDGE_PIPELINE = [GenerateKnowledgeQA, JudgeFaithfulness, JudgeRelevance, JudgeQuestion]
JUDGES = [JudgeInstruction, JudgePair, JudgeFaithfulness, JudgeRelevance, JudgeQuestion]
