"""Dedup within a leaf (exact + near, never across leaves) and token-aware chunking with the real tokenizer."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from sdg_helpers import REPO, sdg_config

from lab_ray.taxonomy.chunking import chunk_text
from lab_ray.sdg.dedup import dedup_leaf

LONG = ("The lighthouse on the northern cape was built from local granite in the year the harbour opened, "
        "and its keeper recorded the weather every morning in a leather notebook kept on the stairs")


def _rows(items, leaf="compositional_skills/writing/poetry/haiku", kind="freeform"):
    return pd.DataFrame([{"id": i, "leaf": leaf, "kind": kind, "status": status, "drop_stage": "",
                          "drop_reason": "", "drop_detail": "", "context": ctx, "question": q, "answer": a}
                         for i, q, a, ctx, status in items])


def _dropped(df):
    return {r["id"]: r["drop_detail"] for r in df.to_dict("records") if r["status"] == "dropped"}


def test_exact_duplicates_after_normalisation_keep_the_first_id_whatever_the_order():
    items = [("id-b", "Write a haiku about rain.", "Rain falls softly", "", "ok"),
             ("id-a", "write a HAIKU about rain!", "  rain falls, softly ", "", "ok"),
             ("id-c", "Write a haiku about snow.", "Snow covers the field", "", "ok")]
    for order in (items, items[::-1]):
        out = dedup_leaf(_rows(order), 0.85, 64)
        assert _dropped(out) == {"id-b": "exact duplicate"}
        assert set(out[out["status"] == "dropped"]["drop_reason"]) == {"duplicate"}
        assert set(out[out["status"] == "dropped"]["drop_stage"]) == {"dedup"}
        assert len(out) == 3  # rows are marked, never removed: the stats count them


def test_near_duplicates_are_dropped_and_different_texts_are_kept():
    text = f"{LONG}. {LONG.replace('northern', 'southern')} every day"
    items = [("id-1", "Describe the lighthouse.", text, "", "ok"),
             ("id-2", "Describe the lighthouse.", text.replace("every day", "every week"), "", "ok"),
             ("id-3", "Describe the harbour.", "The harbour is small and full of red fishing boats that leave "
                                               "before dawn and return with the tide in the late afternoon", "", "ok")]
    out = dedup_leaf(_rows(items), 0.85, 64)
    assert _dropped(out) == {"id-2": "near duplicate"}


def test_rows_already_dropped_are_not_dedup_references():
    items = [("id-1", "Write a haiku about rain.", "Rain falls softly", "", "dropped"),
             ("id-2", "Write a haiku about rain.", "Rain falls softly", "", "ok")]
    df = _rows(items)
    df.loc[0, ["drop_stage", "drop_reason"]] = ["judge_pair", "judged_out"]
    out = dedup_leaf(df, 0.85, 64).set_index("id")
    assert out.loc["id-2", "status"] == "ok"
    assert out.loc["id-1", "drop_reason"] == "judged_out"  # an earlier verdict is kept


def test_grounded_rows_with_the_same_question_on_different_contexts_are_not_duplicates():
    items = [("id-1", "List the ingredients.", "- water\n- tea", "Boil water, add tea.", "ok"),
             ("id-2", "List the ingredients.", "- water\n- tea", "Tea: pour water on leaves of green tea.", "ok")]
    out = dedup_leaf(_rows(items, leaf="compositional_skills/extraction/facts_to_list", kind="grounded"), 0.85, 64)
    assert _dropped(out) == {}


def test_dedup_is_within_a_leaf_not_across_leaves_in_a_run(ray_cluster, tmp_path):
    """finalize on hand-written shards: the same sample in two leaves is kept in both."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lab_ray.sdg.finalize import finalize
    from lab_ray.sdg.stages import with_row_columns

    cfg = sdg_config(tmp_path, "dd")
    out = tmp_path / "dd" / "sdg"
    (out / "shards").mkdir(parents=True)
    a, b = "compositional_skills/writing/poetry/haiku", "foundational_skills/reasoning/arithmetic_word_problems"
    rows = []
    for leaf, branch in ((a, "compositional_skills"), (b, "foundational_skills")):
        for j, answer in enumerate(["Same answer in both leaves, word for word.", "Same answer in both leaves, "
                                    "word for word!", LONG, LONG.replace("granite", "stone"), f"Unique to {leaf}."]):
            rows.append({"id": f"{leaf[:4]}-{j}", "leaf": leaf, "branch": branch, "kind": "freeform",
                         "question": "Tell me something.", "answer": answer, "context": "", "chunk_index": -1})
    df = with_row_columns(pd.DataFrame(rows))
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), out / "shards" / "part-0.parquet")
    (out / "plan.json").write_text(json.dumps({"tasks": len(rows), "leaves": {a: 5, b: 5}}))
    stats = finalize(cfg, out)
    for leaf in (a, b):
        s = stats["leaves"][leaf]
        assert (s["rows"], s["kept"], s["dropped"]) == (5, 3, {"duplicate": 2}), (leaf, s)
        assert s["stages"][-1] == {"stage": "dedup", "in": 5, "kept": 3, "dropped": {"duplicate": 2},
                                      "prompt_tokens": 0, "completion_tokens": 0}  # dedup asks no teacher
    from sdg_helpers import read_jsonl_dir

    kept = {r["id"] for p in ("knowledge_train", "skills_train") for r in read_jsonl_dir(tmp_path / "dd" / "data" / p)}
    assert kept == {f"{x[:4]}-{j}" for x in (a, b) for j in (0, 2, 4)}


# -- chunking -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lab_ray.sdg.plan import teacher_tokenizer as _tokenizer

    return _tokenizer(sdg_config(tmp_path_factory.mktemp("tok"), "t"))


def _ntok(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _norm(s):
    return re.sub(r"\s+", " ", s).strip()


def _uncovered(doc, chunks):
    """Characters of the document (whitespace aside) that no chunk contains."""
    text = _norm(doc)
    covered = [False] * len(text)
    pos = 0
    for c in chunks:
        c = _norm(c)
        i = text.find(c, max(0, pos - 4 * len(c)))
        assert i >= 0, f"chunk is not a verbatim piece of the document: {c[:80]!r}"
        covered[i:i + len(c)] = [True] * len(c)
        pos = i
    return "".join(ch for ch, cov in zip(text, covered) if not cov and ch != " ")


VARROW = (REPO / "knowledge-docs" / "varrow-island.md").read_text()


@pytest.mark.parametrize("size, overlap", [(320, 48), (160, 32)])
def test_chunks_respect_the_token_budget_overlap_and_order(tokenizer, size, overlap):
    chunks = chunk_text(VARROW, tokenizer, size, overlap)
    assert _ntok(tokenizer, VARROW) > size and len(chunks) >= 3
    sizes = [_ntok(tokenizer, c) for c in chunks]
    assert max(sizes) <= size + 2, sizes  # re-tokenising a cut piece may differ by a token at the edges
    assert min(sizes[:-1]) >= size // 3, sizes  # snapping to sentence ends does not shred chunks
    norm = _norm(VARROW)
    starts = [norm.find(_norm(c)) for c in chunks]
    assert starts == sorted(starts) and all(s >= 0 for s in starts)
    assert _norm(chunks[0]).startswith(norm[:40]) and norm.endswith(_norm(chunks[-1])[-40:])


def test_short_document_is_one_chunk_and_empty_is_none(tokenizer):
    assert chunk_text("A short note.\n\n\n\nWith two paragraphs.", tokenizer, 320, 48) == \
        ["A short note.\n\nWith two paragraphs."]
    assert chunk_text("  \n\n ", tokenizer, 320, 48) == []


def _long_sentences(n=30):
    words = ["harbour", "granite", "keeper", "weather", "notebook", "morning", "island", "ferry", "season", "lamp"]
    return " ".join(f"Sentence {i} tells that the " + " ".join(words[(i + j) % 10] for j in range(60)) + "."
                    for i in range(n))


@pytest.mark.parametrize("doc, size, overlap", [(VARROW, 100, 20), (VARROW, 64, 8), (_long_sentences(), 320, 48)],
                         ids=["varrow-100", "varrow-64", "long-sentences-default"])
def test_chunks_cover_the_whole_document_with_overlap(tokenizer, doc, size, overlap):
    chunks = chunk_text(doc, tokenizer, size, overlap)
    assert len(chunks) >= 3
    missing = _uncovered(doc, chunks)
    assert missing == "", f"{len(missing)} characters of the document are in no chunk: {missing[:80]!r}"
    for a, b in zip(chunks, chunks[1:]):  # consecutive chunks overlap
        head = " ".join(_norm(b).split()[:2])  # within the smallest overlap tested (8 tokens)
        assert head in _norm(a), (a[-80:], b[:80])
