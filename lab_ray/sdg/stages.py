"""The SDG stages as Ray Data map_batches callables (one actor pool each).

Every stage receives a pandas batch, sends one teacher request per live row
concurrently through the shared teacher client, and writes its output
columns. Rows are never removed mid-pipeline: a row that fails gets
status="dropped" with the stage and the reason (judged_out, unparsable,
teacher_error), so the stats can show in = kept + dropped for every stage,
and later stages skip it.

Each stage declares what it reads and writes, as distilabel's steps do:
`inputs` (column names) and `outputs` (columns), plus the row kinds it
serves. The frame schema, the score columns and the stage order per kind are
derived from these declarations (`columns.row_schema`, `SCORE_COLUMNS`,
`stage_order`); tests/sdg/test_sdg_stage_columns.py holds every stage's
templates and `apply` to its declaration.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pandas as pd

from lab_ray.errors import ConfigError
from lab_ray.prompts import MemoRenderer, load_prompt, template_variables
from lab_ray.sdg import judge_batch
from lab_ray.sdg.dedup import normalized
from lab_ray.sdg.columns import (ANSWER, CONTEXT, DOCUMENT_VIEW, QUESTION, VIEW, Column, add_missing, score_col,
                                 row_schema, stage_token_columns, text_col, token_columns, typed)
from lab_ray.sdg.parsing import clean_single, parse_tagged
from lab_ray.sdg.tasks import child_id
from lab_ray.teacher.client import make_teacher

SKILL_KINDS = ("grounded", "freeform")
# Read by every stage besides its declared inputs: which rows it serves (kind,
# status) and the request seed (id).
ROW_KEYS = ("id", "kind", "status")


class TeacherStage:
    """A stage that asks the teacher once per live row.

    Input columns: `inputs` (besides ROW_KEYS, which every stage reads).
    Output columns: `outputs`, plus the state columns (status, drop_*, tokens).
    """

    stage: ClassVar[str] = ""
    prompt_name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ()  # the row kinds the stage serves
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[Column, ...]] = ()

    def __init__(self, teacher_spec: dict | None, sdg: dict, calibration: dict | None = None):
        """teacher_spec None: a stage that only builds requests and scores replies
        (calibration sends them through its own client)."""
        self.teacher = make_teacher(teacher_spec) if teacher_spec is not None else None
        self.sdg = sdg
        self.prompt = load_prompt(self.prompt_name, sdg.get("prompts_dir"))
        # leaf -> [raw score of known-bad references, raw score of known-good ones]
        self.calibration = (calibration or {}).get(self.stage, {})
        self.schema = ROW_SCHEMA  # every column of the whole flow: all shards share one schema
        self.memo = MemoRenderer(self.prompt)
        self.memo_ok = True  # False once the memoised render ever differed from Prompt.render
        self._check_next = True

    @classmethod
    def state_columns(cls) -> tuple[Column, ...]:
        """Columns the stage keeps besides its outputs: the teacher tokens it spent on the row."""
        return stage_token_columns(cls.stage)

    def applies(self, row: dict) -> bool:
        return row["kind"] in self.kinds

    def request(self, row: dict) -> tuple[str, dict]:
        raise NotImplementedError

    def apply(self, row: dict, reply) -> None:
        raise NotImplementedError

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch, rows = self.rows_of(batch)
        live = [r for r in rows if r["status"] == "ok" and self.applies(r)]
        self._check_next = True
        replies = self.teacher.run_many([self.request(r) for r in live]) if live else []
        for row, reply in zip(live, replies):
            if self.charge(row, reply):
                self.settle(row, reply)
        return self.frame(batch, rows)

    # -- shared by every stage kind (one row per row, fan-out, views) -----------
    def rows_of(self, batch: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
        """The batch with the stage's columns, and its rows as dicts (column lists -> row dicts:
        the same Python values as to_dict("records"), far cheaper)."""
        batch = add_missing(batch, self.schema)
        cols = list(batch.columns)
        return batch, [dict(zip(cols, values)) for values in zip(*(batch[c].tolist() for c in cols))]

    def frame(self, batch: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
        return typed(pd.DataFrame({c: [r[c] for r in rows] for c in batch.columns}, columns=batch.columns),
                     self.schema)

    def charge(self, row: dict, reply) -> bool:
        """Adds the reply's tokens to the row (its totals and this stage's split); a failed request
        drops it. True: apply the reply."""
        row["prompt_tokens"] += reply.prompt_tokens
        row["completion_tokens"] += reply.completion_tokens
        row["cached_prompt_tokens"] += reply.cached_tokens
        row[f"{self.stage}_prompt_tokens"] += reply.prompt_tokens
        row[f"{self.stage}_completion_tokens"] += reply.completion_tokens
        if not reply.ok:
            reason = "unparsable" if reply.error == "unparsable" else "teacher_error"
            self.drop(row, reason, f"{reply.error}: {reply.detail or ''}"[:300])
        return reply.ok

    def settle(self, row: dict, reply, *args) -> None:
        """`apply`, a reply it cannot parse dropping the row as unparsable."""
        try:
            self.apply(row, reply, *args)
        except (ValueError, KeyError, TypeError) as e:
            self.drop(row, "unparsable", f"{type(e).__name__}: {e}"[:300])

    def drop(self, row: dict, reason: str, detail: str = "") -> None:
        row.update(status="dropped", drop_stage=self.stage, drop_reason=reason, drop_detail=detail[:300])

    def messages(self, row: dict, examples: int | None = None) -> list[dict]:
        """The prompt for a row, with its first `examples` in-context examples as earlier turns
        (None: all of the row's)."""
        shown = self.memo.examples(row["examples"]) if examples != 0 else []
        if examples is not None:
            shown = shown[:examples]
        if not self.memo_ok:
            return self.prompt.render(row, shown)
        out = self.memo.render(row, shown, f"{examples}|{row['examples']}" if shown else None)
        if self._check_next:  # first row of each batch: the memo must agree with Prompt.render
            self._check_next = False
            if out != self.prompt.render(row, shown):
                self.memo_ok = False
                return self.prompt.render(row, shown)
        return out

    def generate(self, row: dict, max_tokens: int, examples: int | None = None) -> tuple[str, dict]:
        return "chat", {"messages": self.messages(row, examples), "max_tokens": max_tokens,
                        "temperature": self.sdg["temperature"],
                        "seed": (int(row["id"][:8], 16) + int(self.sdg.get("seed", 0))) % 2**31,
                        **({"stop": list(self.prompt.stop)} if self.prompt.stop else {})}

    def choose(self, row: dict) -> tuple[str, dict]:
        return "choose", {"messages": self.messages(row, examples=0), "choices": list(self.prompt.choices)}


class JudgeStage(TeacherStage):
    """A judge: one constrained choice per row, a raw score, a calibrated verdict.

    A small teacher's raw P(yes) is biased and squeezed (0.4-0.6 for good and
    bad rows alike), so a fixed threshold on it keeps noise or drops a whole
    leaf. Each judge is therefore calibrated per leaf on references it must
    get right (the leaf's own seeds as known-good, mismatched or off-task
    rows as known-bad; see calibration.py): the calibrated score is
    (raw - bad) / (good - bad), so 0.5 means halfway between the two. When the
    references do not separate, the raw score and raw threshold are used.

    With sdg.judge.rows_per_request = k > 1, rows that share the prompt's fixed part are asked
    about k at a time, one joint verdict per request (judge_batch.py), on the leaves where
    calibration found the judge tells its references apart that way (calibration.py); a judge
    whose prompt has no `turn_user_batch`, or that writes a rationale, asks one row per request.

    Input columns: `inputs` + leaf (the calibration is per leaf).
    Output columns: the judge's one score column (`outputs[0]`).
    """

    threshold_key: ClassVar[str] = ""

    def __init__(self, teacher_spec, sdg, calibration=None):
        super().__init__(teacher_spec, sdg, calibration)
        self.rationale = self.stage in check_rationale(sdg)
        self.rationale_texts = load_rationale_texts(sdg.get("prompts_dir")) if self.rationale else {}
        wanted = judge_batch.check_rows_per_request(sdg)
        batchable = bool(self.prompt.turn_user_batch) and not self.rationale
        self.rows_per_request = judge_batch.rows_for(len(self.prompt.choices), wanted) if batchable else 1
        # the values rows must share to be asked about together: what the system text and the
        # batch question read besides the rows themselves (and the leaf: calibration is per leaf)
        self.shared_keys = tuple(sorted({"leaf"} | ((template_variables(self.prompt.system)
                                                     | template_variables(self.prompt.turn_user_batch)) - {"items"})))
        # leaf -> the rows per request calibration chose for it (absent: rows_per_request)
        self.leaf_rows = (calibration or {}).get(judge_batch.CALIBRATION_KEY, {}).get(self.stage, {})
        # sdg.judge.unseparated=skip: leaves whose references the judge could not tell apart are
        # not judged at all (their verdicts would be noise on a raw threshold)
        self.skipped = ({leaf for leaf, ref in self.calibration.items() if not self.separates(ref)}
                        if check_unseparated(sdg) == "skip" else set())

    def applies(self, row: dict) -> bool:
        return super().applies(row) and row["leaf"] not in self.skipped

    def rows_for_leaf(self, leaf: str) -> int:
        return min(self.rows_per_request, int(self.leaf_rows.get(leaf, self.rows_per_request)))

    @classmethod
    def score_column(cls) -> str:
        return cls.outputs[0].name

    @classmethod
    def rationale_column(cls) -> str:
        return f"{cls.stage}_rationale"

    @classmethod
    def state_columns(cls):
        return (*super().state_columns(),
                text_col(cls.rationale_column(), f"{cls.stage}: the reasons the judge gave before its verdict "
                                                 "(sdg.judge.rationale; '' = none asked)"))

    def request(self, row):
        kind, body = self.choose(row)
        if self.rationale:  # the verdict comes after the judge's own reasons
            choices = ", ".join(self.prompt.choices)
            body["messages"] = [*body["messages"], {"role": "assistant", "content": row[self.rationale_column()]},
                                {"role": "user", "content": self.rationale_texts["verdict"].format(choices=choices)}]
        return kind, body

    def ask_reasons(self, row) -> tuple[str, dict]:
        """The judge's question with the request for reasons appended (greedy: a judgement)."""
        messages = self.messages(row, examples=0)
        last = dict(messages[-1], content=f"{messages[-1]['content']}\n\n{self.rationale_texts['ask']}")
        return "chat", {"messages": [*messages[:-1], last], "temperature": 0.0,
                        "max_tokens": int(self.sdg["judge"]["rationale_max_tokens"])}

    def with_reasons(self, rows: list[dict], teacher, charge: bool = True) -> list[dict]:
        """Asks each row's reasons and records them; the rows whose request succeeded (a failed one
        drops its row when `charge`: calibration only skips the reference)."""
        replies = teacher.run_many([self.ask_reasons(r) for r in rows]) if rows else []
        out = []
        for row, reply in zip(rows, replies):
            if (self.charge(row, reply) if charge else reply.ok):
                row[self.rationale_column()] = reply.text.strip()[:2000]
                out.append(row)
        return out

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if not self.rationale and self.rows_per_request == 1:
            return super().__call__(batch)
        batch, rows = self.rows_of(batch)
        live = [r for r in rows if r["status"] == "ok" and self.applies(r)]
        self._check_next = True
        if self.rationale:
            live = self.with_reasons(live, self.teacher)
        for row, (reply, raw) in zip(live, self.verdicts(live, self.teacher)):
            if self.charge(row, reply):
                self.judge(row, raw)
        return self.frame(batch, rows)

    def verdicts(self, rows: list[dict], teacher, k: int | None = None) -> list[tuple[object, float | None]]:
        """(the reply charged to the row, its raw score or None) per row, in order: one request
        per row, or per group of up to k rows (default: the row's leaf's rows_for_leaf; each row
        of a group is charged an even share of its request)."""
        per_leaf = {leaf: k or self.rows_for_leaf(leaf) for leaf in {r["leaf"] for r in rows}}
        one = [r for r in rows if per_leaf[r["leaf"]] == 1]
        groups = self.groups([r for r in rows if per_leaf[r["leaf"]] > 1], k)
        replies = teacher.run_many([self.request(r) for r in one] + [self.batch_request(g) for g in groups]) \
            if rows else []
        out: dict[int, tuple] = {id(r): (reply, self.raw_score(reply) if reply.ok else None)
                                 for r, reply in zip(one, replies)}
        replies = replies[len(one):]
        choices = list(self.prompt.choices)
        for group, reply in zip(groups, replies):
            probs = judge_batch.row_probs(reply, choices, len(group)) if reply.ok else None
            shares = {field: _split(getattr(reply, field), len(group))
                      for field in ("prompt_tokens", "completion_tokens", "cached_tokens")}
            for i, row in enumerate(group):
                share = dataclasses.replace(reply, **{field: v[i] for field, v in shares.items()})
                if reply.ok and probs is None:
                    share = dataclasses.replace(share, ok=False, error="unparsable",
                                                detail=f"not one line per row: {reply.text[:200]}")
                out[id(row)] = (share, self.score_of(probs[i]) if probs else None)
        return [out[id(r)] for r in rows]

    def groups(self, rows: list[dict], k: int | None = None) -> list[list[dict]]:
        """Rows in groups of at most k (default: their leaf's rows_for_leaf) that share
        `shared_keys`, in order."""
        open_: dict[tuple, list[dict]] = {}
        done = []
        for row in rows:
            key = tuple(row[c] for c in self.shared_keys)
            group = open_.setdefault(key, [])
            group.append(row)
            if len(group) == (k or self.rows_for_leaf(row["leaf"])):
                done.append(open_.pop(key))
        return done + list(open_.values())

    def batch_request(self, group: list[dict]) -> tuple[str, dict]:
        """One constrained choice for the group: every row's verdict, one line each."""
        shared = {c: group[0][c] for c in self.shared_keys}
        return "choose", {"messages": self.prompt.render_batch(shared, group),
                          "choices": judge_batch.joint_choices(list(self.prompt.choices), len(group)),
                          "max_tokens": judge_batch.max_reply_tokens(len(group))}

    def score_of(self, probs: dict[str, float]) -> float:
        """The raw score from the probabilities of the judge's choices: P(positive)."""
        return float(probs.get(self.prompt.positive, 0.0))

    def raw_score(self, reply) -> float:
        # an endpoint without choice scores: its verbatim answer counts fully
        return self.score_of(reply.choice_probs() or {reply.text: 1.0})

    def score_range(self) -> float:
        """The span of the raw score: a graded judge's highest minus lowest grade (its prompt's
        `scores`), else 1 (P(yes))."""
        grades = [float(v) for v in self.prompt.scores.values()]
        return max(grades) - min(grades) if grades else 1.0

    def separates(self, ref: list[float] | None) -> bool:
        """Whether [bad level, good level] tell the references apart: min_separation is a fraction
        of the score's span (0.05 of P(yes); 0.1 of a 1-3 grade)."""
        return bool(ref) and ref[1] - ref[0] >= self.sdg["judge"].get("min_separation", 0.05) * self.score_range()

    def calibrated(self, leaf: str, raw: float) -> float | None:
        ref = self.calibration.get(leaf)
        if not self.separates(ref):
            return None
        return (raw - ref[0]) / (ref[1] - ref[0])

    def apply(self, row, reply):
        self.judge(row, self.raw_score(reply))

    def judge(self, row: dict, raw: float) -> None:
        """The verdict on a raw score: calibrated per leaf, then the threshold."""
        cal = self.calibrated(row["leaf"], raw)
        score = raw if cal is None else cal
        row[self.score_column()] = score
        if score < self.sdg["judge"][self.threshold_key]:
            self.drop(row, "judged_out", f"raw={raw:.3f}" + ("" if cal is None else f" calibrated={cal:.2f}"))


class FanOutStage(TeacherStage):
    """A generation stage that asks once for `width` completions (`n` on the request) and
    turns each live row into `width` rows, one per completion: the prompt is paid once.

    A child's id is `tasks.child_id(parent id, stage, index)`, its `item_path` the parent's
    plus its index, and it carries an even split of the parent's teacher tokens (so sums stay
    exact). A failed request drops the parent row alone; a malformed or repeated completion
    drops only its own child. Every live parent gets exactly `width` children (missing
    completions are dropped children), so a task's rows are known on resume.
    """

    @classmethod
    def width_for(cls, fanout: dict | None) -> int:
        return int((fanout or {}).get(cls.stage, 1))

    @property
    def width(self) -> int:
        return self.width_for(effective_fanout(self.sdg))

    def generate(self, row: dict, max_tokens: int) -> tuple[str, dict]:
        kind, body = super().generate(row, max_tokens)
        if self.width > 1:
            body["n"] = self.width
        return kind, body

    def distinct_key(self, row: dict) -> str | None:
        """What makes two sibling rows the same sample (None: no sibling check)."""
        return None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self.width <= 1:
            return super().__call__(batch)
        batch, rows = self.rows_of(batch)
        live = [i for i, r in enumerate(rows) if r["status"] == "ok" and self.applies(r)]
        self._check_next = True
        replies = self.teacher.run_many([self.request(rows[i]) for i in live]) if live else []
        children = {i: self.fan_out(rows[i], reply) for i, reply in zip(live, replies) if self.charge(rows[i], reply)}
        return self.frame(batch, [c for i, r in enumerate(rows) for c in children.get(i, [r])])

    def child(self, parent: dict, j: int, w: int, shares: dict[str, list[int]]) -> dict:
        """The j-th of w children of a parent row: derived id, item path, its share of each of the
        parent's token counts (`token_shares`)."""
        return dict(parent, id=child_id(parent["id"], self.stage, j),
                    item_path=f"{parent['item_path']}.{j}" if parent["item_path"] else str(j),
                    **{c: split[j] for c, split in shares.items()})

    def token_shares(self, parent: dict, w: int) -> dict[str, list[int]]:
        """Every token count of the row in w integer parts that sum to it (sums stay exact)."""
        return {c: _split(parent[c], w) for c in TOKEN_COLUMNS if parent[c]}

    def fan_out(self, parent: dict, reply) -> list[dict]:
        w = self.width
        shares = self.token_shares(parent, w)
        seen: set[str] = set()
        kids = []
        for j in range(w):
            child = self.child(parent, j, w, shares)
            kids.append(child)
            if j >= len(reply.texts):
                self.drop(child, "teacher_error", f"the teacher returned {len(reply.texts)} of {w} completions")
                continue
            self.settle(child, dataclasses.replace(reply, texts=[reply.texts[j]], logprobs=reply.logprobs[j:j + 1]))
            if child["status"] == "ok" and (key := self.distinct_key(child)) is not None:
                if key in seen:
                    self.drop(child, "duplicate", "repeats a sibling completion of the same request")
                seen.add(key)
        return kids


def _split(total: int, n: int) -> list[int]:
    """`total` in n integer parts that sum to it (the first ones one larger)."""
    q, r = divmod(int(total), n)
    return [q + (j < r) for j in range(n)]


UNSEPARATED = ("raw", "skip")


def check_unseparated(sdg) -> str:
    """sdg.judge.unseparated, checked: raw | skip."""
    value = str((sdg.get("judge") or {}).get("unseparated", "raw"))
    if value not in UNSEPARATED:
        raise ConfigError(f"sdg.judge.unseparated={value!r}: one of {', '.join(UNSEPARATED)}")
    return value


def check_rationale(sdg) -> list[str]:
    """sdg.judge.rationale, checked: judge stage names."""
    names = [str(n) for n in ((sdg.get("judge") or {}).get("rationale") or [])]
    judges = [s.stage for s in PIPELINE if issubclass(s, JudgeStage)]
    for n in names:
        if n not in judges:
            raise ConfigError(f"sdg.judge.rationale: {n!r} is not a judge stage (judges: {', '.join(judges)})")
    return names


def load_rationale_texts(directory: str | None) -> dict[str, str]:
    """conf/prompts/judge_rationale.yaml: `ask` (appended to the judge's question) and `verdict`
    (asked after the reasons; `{choices}` = the judge's choices)."""
    import yaml

    from lab_ray.prompts import prompts_dir

    path = prompts_dir(directory) / "judge_rationale.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"prompt file {path} not found (sdg.judge.rationale needs it; sdg.prompts_dir)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"prompt file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data[k].strip()
                                             for k in ("ask", "verdict")):
        raise ConfigError(f"prompt file {path}: needs the texts `ask` and `verdict`")
    try:
        data["verdict"].format(choices="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"prompt file {path}: `verdict` may use only {{choices}} ({e})") from None
    return {"ask": data["ask"].strip(), "verdict": data["verdict"].strip()}


def check_fanout(fanout: dict | None) -> None:
    """sdg.fanout names fan-out stages and positive widths; anything else is a config error."""
    names = [s.stage for s in PIPELINE if issubclass(s, FanOutStage) and not getattr(s, "optional", False)]
    for stage, width in (fanout or {}).items():
        if stage == AugmentDocument.stage:
            raise ConfigError(f"sdg.fanout.{stage}: the knowledge views decide this width; set sdg.knowledge.views")
        if stage not in names:
            raise ConfigError(f"sdg.fanout.{stage}: not a fan-out stage (fan-out stages: {', '.join(names)})")
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 64:
            raise ConfigError(f"sdg.fanout.{stage}={width!r}: a width is a whole number of completions, 1 to 64")


# -- skills -------------------------------------------------------------------
class GenerateContext(FanOutStage):
    """Grounded skills: a new passage for the task, like the seeds' contexts.

    Input columns: task_description, examples.  Output columns: context.
    """

    stage, prompt_name, kinds = "gen_context", "skill_context", ("grounded",)
    inputs = ("task_description", "examples")
    outputs = (CONTEXT,)

    def request(self, row):
        return self.generate(row, self.sdg["context_max_tokens"])

    def apply(self, row, reply):
        text = clean_single(reply.text)
        if text is None:
            return self.drop(row, "unparsable", reply.text[:200])
        row["context"] = text

    def distinct_key(self, row):
        return normalized(row["context"])


class GenerateInstruction(FanOutStage):
    """A new instruction of the leaf's kind, from its rotated seed examples.

    Input columns: task_description, context, examples.  Output columns: question.
    """

    stage, prompt_name, kinds = "gen_instruction", "skill_instruction", SKILL_KINDS
    inputs = ("task_description", "context", "examples")
    outputs = (QUESTION,)

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

    def distinct_key(self, row):
        return normalized(row["question"])


class JudgeInstruction(JudgeStage):
    """On-topic, harmless, doable with text alone?

    Input columns: leaf, task_description, context, question.  Output columns: instruction_score.
    """

    stage, prompt_name, kinds = "judge_instruction", "instruction_judge", SKILL_KINDS
    inputs = ("leaf", "task_description", "context", "question")
    outputs = (score_col("instruction_score", "judge_instruction: P(good task), calibrated per leaf"),)
    threshold_key = "instruction_min"


class GenerateResponse(TeacherStage):
    """The response, with the leaf's persona as system text, after the first
    sdg.response_examples of the row's examples as earlier turns (they show the leaf's answer
    form; each costs its tokens on every response request).

    Input columns: persona, context, question, examples.  Output columns: answer.
    """

    stage, prompt_name, kinds = "gen_response", "skill_response", SKILL_KINDS
    inputs = ("persona", "context", "question", "examples")
    outputs = (ANSWER,)

    def request(self, row):
        shown = self.sdg.get("response_examples")  # None: all of the row's examples
        return self.generate(row, self.sdg["response_max_tokens"], None if shown is None else int(shown))

    def apply(self, row, reply):
        text = (reply.text or "").strip()
        if len(text) < 2:
            return self.drop(row, "unparsable", "empty response")
        row["answer"] = text


class JudgePair(JudgeStage):
    """The pair on the 3-point scale: raw = expected grade under the judge's
    choice probabilities; the calibrated grade is 1 + 2 * calibrated score,
    so the default threshold 2 means halfway between bad and good references.

    Input columns: leaf, context, question, answer.  Output columns: pair_score.
    """

    stage, prompt_name, kinds = "judge_pair", "pair_judge", SKILL_KINDS
    inputs = ("leaf", "context", "question", "answer")
    outputs = (score_col("pair_score", "judge_pair: grade 1-3 (poor, fair, good), calibrated per leaf"),)
    threshold_key = "pair_min_score"

    def score_of(self, probs: dict[str, float]) -> float:
        """The expected grade."""
        return float(sum(p * self.prompt.scores.get(c, 0) for c, p in probs.items()))

    def calibrated(self, leaf, raw):
        cal = super().calibrated(leaf, raw)
        return None if cal is None else 1.0 + 2.0 * min(max(cal, 0.0), 1.0)


# -- knowledge ----------------------------------------------------------------
# Document views of knowledge augmentation (InstructLab 0.8's knowledge pipeline): "document"
# is the chunk itself; the others are generated from it, one prompt each
# (conf/prompts/knowledge_view_<name>.yaml).
VIEWS = ("document", "detailed_summary", "extractive_summary", "atomic_facts")


class AugmentDocument(FanOutStage):
    """Knowledge augmentation: one row per configured view of the chunk (sdg.knowledge.views),
    each carrying the view's text; Q/A is then generated from the view, and judged against the
    original chunk. One request per generated view (the "document" view costs nothing); a
    failed view drops only its own row. Off (no stage at all) when no views are configured.

    Input columns: domain, context.  Output columns: view, document_view.
    """

    stage, prompt_name, kinds = "gen_view", "knowledge_view_detailed_summary", ("knowledge",)
    inputs = ("domain", "context")
    outputs = (VIEW, DOCUMENT_VIEW)
    optional = True  # only in the flow when sdg.knowledge.views is set

    def __init__(self, teacher_spec, sdg, calibration=None):
        super().__init__(teacher_spec, sdg, calibration)
        self.views = views_of(sdg)
        self.view_prompts = {v: load_prompt(f"knowledge_view_{v}", sdg.get("prompts_dir"))
                             for v in self.views if v != "document"}

    def request(self, row, view: str = "detailed_summary"):
        prompt = self.view_prompts.get(view) or self.prompt
        return "chat", {"messages": prompt.render(row), "max_tokens": self.sdg["knowledge"]["max_tokens"],
                        "temperature": self.sdg["temperature"],
                        "seed": (int(row["id"][:8], 16) + int(self.sdg.get("seed", 0))) % 2**31}

    def apply(self, row, reply, view: str = "detailed_summary"):
        row["view"] = view
        text = clean_single(reply.text, max_chars=20000)
        if text is None:
            return self.drop(row, "unparsable", reply.text[:200])
        row["document_view"] = text

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if not self.views:
            return typed(add_missing(batch, self.schema), self.schema)
        batch, rows = self.rows_of(batch)
        live = [i for i, r in enumerate(rows) if r["status"] == "ok" and self.applies(r)]
        asked = [(i, j) for i in live for j, v in enumerate(self.views) if v != "document"]
        replies = self.teacher.run_many([self.request(rows[i], self.views[j]) for i, j in asked]) if asked else []
        got = dict(zip(asked, replies))
        children = {i: self.views_of_row(rows[i], {j: got[(i, j)] for j in range(len(self.views)) if (i, j) in got})
                    for i in live}
        return self.frame(batch, [c for i, r in enumerate(rows) for c in children.get(i, [r])])

    def views_of_row(self, parent: dict, replies: dict) -> list[dict]:
        """The parent's children, one per view; replies: view index -> the teacher's reply."""
        w = len(self.views)
        shares = self.token_shares(parent, w)
        kids = []
        for j, view in enumerate(self.views):
            # one view is no fan-out: the row keeps its id and place
            child = dict(self.child(parent, j, w, shares) if w > 1 else parent, view=view)
            kids.append(child)
            if view == "document":
                child["document_view"] = parent["context"]
            elif self.charge(child, replies[j]):
                self.settle(child, replies[j], view)
        return kids


class GenerateKnowledgeQA(FanOutStage):
    """A question and its answer grounded in the row's document chunk, or in the row's view of
    it when knowledge augmentation made one (the judges still read the chunk).

    Input columns: domain, context, document_view, examples.  Output columns: question, answer.
    """

    stage, prompt_name, kinds = "gen_qa", "knowledge_qa", ("knowledge",)
    inputs = ("domain", "context", "document_view", "examples")
    outputs = (QUESTION, ANSWER)

    def request(self, row):
        view = row["document_view"]
        return self.generate(dict(row, context=view) if view else row, self.sdg["knowledge"]["max_tokens"])

    def apply(self, row, reply):
        items = parse_tagged(reply.text, self.prompt.output_tags)
        if not items:
            return self.drop(row, "unparsable", reply.text[:200])
        row["question"], row["answer"] = items[0]["question"], items[0]["answer"]

    def distinct_key(self, row):
        return normalized(row["question"])


class JudgeFaithfulness(JudgeStage):
    """Is the answer supported by the chunk?

    Input columns: leaf, context, question, answer.  Output columns: faithfulness_score.
    """

    stage, prompt_name, kinds = "judge_faithfulness", "knowledge_faithfulness", ("knowledge",)
    inputs = ("leaf", "context", "question", "answer")
    outputs = (score_col("faithfulness_score", "judge_faithfulness: P(answer supported by the chunk)"),)
    threshold_key = "faithfulness_min"


class JudgeRelevance(JudgeStage):
    """Does the answer address the question?

    Input columns: leaf, question, answer.  Output columns: relevance_score.
    """

    stage, prompt_name, kinds = "judge_relevance", "knowledge_relevance", ("knowledge",)
    inputs = ("leaf", "question", "answer")
    outputs = (score_col("relevance_score", "judge_relevance: P(answer relevant to the question)"),)
    threshold_key = "relevance_min"


class JudgeQuestion(JudgeStage):
    """Is the question a good quiz question about the chunk?

    Input columns: leaf, context, question.  Output columns: question_score.
    """

    stage, prompt_name, kinds = "judge_question", "knowledge_question", ("knowledge",)
    inputs = ("leaf", "context", "question")
    outputs = (score_col("question_score", "judge_question: P(good question about the chunk)"),)
    threshold_key = "question_min"


# The flow, in order. Everything below is derived from these declarations.
PIPELINE: tuple[type[TeacherStage], ...] = (
    GenerateContext, GenerateInstruction, JudgeInstruction, GenerateResponse, JudgePair,
    AugmentDocument, GenerateKnowledgeQA, JudgeFaithfulness, JudgeRelevance, JudgeQuestion,
)
JUDGES = tuple(s for s in PIPELINE if issubclass(s, JudgeStage))
SCORE_COLUMNS = tuple(j.score_column() for j in JUDGES)
ROW_SCHEMA = row_schema(PIPELINE)
TOKEN_COLUMNS = tuple(token_columns(ROW_SCHEMA))  # the totals and every stage's split, found once
PROMPT_NAMES = tuple(dict.fromkeys([*(s.prompt_name for s in PIPELINE), *(f"knowledge_view_{v}" for v in VIEWS[1:])]))


def with_row_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Every column of the flow's row schema (defaults where missing), typed: what a shard holds."""
    return typed(add_missing(df, ROW_SCHEMA), ROW_SCHEMA)


def _in_flow(stage: type[TeacherStage], fanout: dict | None) -> bool:
    """An optional stage (knowledge augmentation) is in the flow only when configured: its
    width is in the effective fan-out (effective_fanout)."""
    return not getattr(stage, "optional", False) or stage.stage in (fanout or {})


def stages_for(kinds: set[str], fanout: dict | None = None) -> list[type[TeacherStage]]:
    """The stages some row of these kinds passes through, in flow order (no idle actor pools);
    `fanout` is the run's effective_fanout (it says which optional stages are on)."""
    return [s for s in PIPELINE if kinds & set(s.kinds) and _in_flow(s, fanout)]


def views_of(sdg) -> list[str]:
    """sdg.knowledge.views, checked: known names, each once."""
    views = [str(v) for v in ((sdg.get("knowledge") or {}).get("views") or [])]
    for v in views:
        if v not in VIEWS:
            raise ConfigError(f"sdg.knowledge.views: unknown view {v!r} (views: {', '.join(VIEWS)})")
    if len(set(views)) != len(views):
        raise ConfigError(f"sdg.knowledge.views={views}: each view once")
    return views


def effective_fanout(sdg) -> dict:
    """The widths rows fan out by: sdg.fanout, plus the knowledge views (gen_view = their
    count) when augmentation is on. Everything that counts rows per task reads this."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(sdg):
        sdg = OmegaConf.to_container(sdg, resolve=True)
    fan = dict(sdg.get("fanout") or {})
    views = views_of(sdg)
    if views:
        fan[AugmentDocument.stage] = len(views)
    return fan


def fanout_width(stage: str, fanout: dict | None) -> int:
    """The fan-out width of a stage by name (1: not a fan-out stage, or none configured)."""
    cls = next((s for s in PIPELINE if s.stage == stage), None)
    return cls.width_for(fanout) if cls is not None and issubclass(cls, FanOutStage) else 1


def stage_kinds(stage: str) -> tuple[str, ...]:
    cls = next((s for s in PIPELINE if s.stage == stage), None)
    return cls.kinds if cls is not None else ()


def stage_order(kind: str, fanout: dict | None = None) -> list[str]:
    """The stages a row of this kind passes, in order, then dedup (the funnel of the stats)."""
    return [s.stage for s in PIPELINE if kind in s.kinds and _in_flow(s, fanout)] + ["dedup"]
