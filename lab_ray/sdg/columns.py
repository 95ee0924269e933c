"""The columns of a generation row, declared once.

A row starts as a task (what plan expansion writes, `TASK_COLUMNS`), carries
its fate (`STATE_COLUMNS`, written by every stage) and gains what each stage
declares as its outputs (`Stage.outputs`). The frame schema of a pipeline is
derived from those declarations (`row_schema`), never listed by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "str" | "int64" | "float64"
    default: Any
    doc: str = ""


def text_col(name: str, doc: str) -> Column:
    return Column(name, "str", "", doc)


def int_col(name: str, doc: str, default: int = 0) -> Column:
    return Column(name, "int64", default, doc)


def score_col(name: str, doc: str) -> Column:
    return Column(name, "float64", math.nan, doc)


TASK_COLUMNS: tuple[Column, ...] = (
    text_col("leaf", "taxonomy path of the leaf the task serves"),
    text_col("branch", "knowledge | foundational_skills | compositional_skills"),
    text_col("kind", "knowledge | grounded | freeform"),
    text_col("task_description", "the leaf's task description (or domain)"),
    text_col("domain", "the leaf's domain (knowledge)"),
    text_col("id", "stable sample id: the task's, or for a fan-out child derived from its parent's"),
    text_col("task_id", "the id of the task (first-stage request) the row comes from"),
    text_col("item_path", "fan-out indices of the row within its task, e.g. '2' or '0.3' ('' = the task row)"),
    int_col("request_index", "the task's index within its leaf's requests"),
    Column("examples", "str", "[]", "the in-context examples of this request, as JSON"),
    text_col("persona", "system text of the response stage"),
    text_col("context", "knowledge: the document chunk; grounded skills: the generated passage"),
    int_col("chunk_index", "knowledge: the chunk's index among the leaf's chunks (-1: none)", -1),
)

STATE_COLUMNS: tuple[Column, ...] = (
    Column("status", "str", "ok", "ok | dropped"),
    text_col("drop_stage", "the stage that dropped the row"),
    text_col("drop_reason", "judged_out | unparsable | teacher_error | duplicate | ..."),
    text_col("drop_detail", "what the stage saw (truncated)"),
    int_col("prompt_tokens", "teacher prompt tokens spent on the row, summed over stages"),
    int_col("completion_tokens", "teacher completion tokens spent on the row, summed over stages"),
    int_col("cached_prompt_tokens", "of prompt_tokens, those the teacher served from its prefix cache"),
)

# Shared output columns (several stages write them).
QUESTION = text_col("question", "the instruction / question")
ANSWER = text_col("answer", "the response / answer")
CONTEXT = next(c for c in TASK_COLUMNS if c.name == "context")
VIEW = text_col("view", "knowledge augmentation: the view of the chunk the Q/A came from ('' = none)")
DOCUMENT_VIEW = text_col("document_view", "knowledge augmentation: that view's text (the chunk itself for 'document')")


def stage_token_columns(stage: str) -> tuple[Column, Column]:
    """The teacher tokens one stage spent on a row (prompt, completion): the per-stage split of
    prompt_tokens / completion_tokens, so stats can say which stage the tokens went to."""
    return (int_col(f"{stage}_prompt_tokens", f"teacher prompt tokens {stage} spent on the row"),
            int_col(f"{stage}_completion_tokens", f"teacher completion tokens {stage} spent on the row"))


def token_columns(columns: Iterable[str]) -> list[str]:
    """The token-count columns among these: the row totals and every stage's split."""
    return [c for c in columns if c.endswith(("prompt_tokens", "completion_tokens"))]


def row_schema(stages: Iterable[type]) -> dict[str, Column]:
    """Task + state columns + every output the given stages declare (and each stage's own state
    columns: its token split, a judge's rationale), in that order. Two stages declaring one column must agree on its type."""
    schema = {c.name: c for c in (*TASK_COLUMNS, *STATE_COLUMNS)}
    for stage in stages:
        for col in (*stage.outputs, *stage.state_columns()):
            known = schema.setdefault(col.name, col)
            if known.dtype != col.dtype:
                raise TypeError(f"column {col.name}: {stage.__name__} declares {col.dtype}, another {known.dtype}")
    return schema


def add_missing(df: pd.DataFrame, schema: dict[str, Column]) -> pd.DataFrame:
    """Every column of the schema, so all batches share one frame schema."""
    for col in schema.values():
        if col.name not in df.columns:
            df[col.name] = col.default
    return df


def typed(df: pd.DataFrame, schema: dict[str, Column]) -> pd.DataFrame:
    """Fixed dtypes: a float column that is all-null in a block arrives as None
    objects, which Ray would store pickled and Parquet readers then refuse."""
    for col in schema.values():
        if col.name not in df.columns:
            continue
        if col.dtype == "float64":
            df[col.name] = pd.to_numeric(df[col.name], errors="coerce").astype("float64")
        elif col.dtype == "int64":
            df[col.name] = pd.to_numeric(df[col.name], errors="coerce").fillna(col.default).astype("int64")
    return df
