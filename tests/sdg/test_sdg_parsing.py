"""Parsing a weak teacher's output: tolerant of odd formats, never raising, never inventing items."""

from __future__ import annotations

import time

import pytest

from lab_ray.testing.fake_teachers import PLAIN_GARBAGE, TAGGED_GARBAGE
from lab_ray.sdg.parsing import clean_single, parse_tagged

TAGS = ("Question", "Answer")


def qa(text):
    return [(i["question"], i["answer"]) for i in parse_tagged(text, TAGS)]


def test_canonical_item():
    assert qa("[Question] Where is Varrow Island?\n[Answer] In the cold north.\n[End]") == \
        [("Where is Varrow Island?", "In the cold north.")]


@pytest.mark.parametrize("text", [
    "[question] Q1?\n[answer] A1.\n[end]",
    "[QUESTION] Q1?\n[ANSWER] A1.\n[END]",
    "[ Question ]Q1?[ Answer ]A1.[ End ]",
    "**Question:** Q1?\n**Answer:** A1.",
    "Question: Q1?\nAnswer: A1.\n",
    "  question : Q1?\n  ANSWER: A1.",
])
def test_odd_case_spacing_and_markdown_forms(text):
    assert qa(text) == [("Q1?", "A1.")]


def test_missing_end_tag_keeps_the_item():
    assert qa("[Question] Q1?\n[Answer] A1.") == [("Q1?", "A1.")]


def test_several_items_in_order_and_a_broken_one_in_the_middle_is_skipped():
    text = ("[Question] Q1?\n[Answer] A1.\n[End]\n"
            "[Question] Q2 without an answer\n[End]\n"
            "[Question] Q3?\n[Answer] A3.\n"  # no [End]: the next [Question] closes it
            "[Question] Q4?\n[Answer] A4.\n[End]")
    assert qa(text) == [("Q1?", "A1."), ("Q3?", "A3."), ("Q4?", "A4.")]


def test_chatter_around_items_is_not_part_of_them():
    text = ("Sure! Here is a question and answer based on the document:\n\n"
            "[Question] Q1?\n[Answer] A1.\n[End]\n\nI hope this helps! Let me know if you need more.")
    assert qa(text) == [("Q1?", "A1.")]


@pytest.mark.parametrize("text", [
    "", None, "   \n ", "No tags at all, just a sentence about the island.",
    "[Question] Only a question?", "[Answer] Only an answer. [End]",
    "[Question]\n[Answer]\n[End]", "[Question] Q? [Answer]   [End]",
    "[Answer] A first. [Question] Q after? [End]",  # out of order
    "[Question [Answer] broken brackets [End",
    *TAGGED_GARBAGE,
])
def test_unparsable_outputs_give_no_items(text):
    assert parse_tagged(text, TAGS) == []


def test_unicode_is_kept_verbatim():
    assert qa("[Question] ¿Qué es 東京? [Answer] 首都です 🎌 — «ça va» [End]") == [("¿Qué es 東京?", "首都です 🎌 — «ça va»")]


def test_huge_outputs_parse_in_linear_time():
    many = "[Question] What is it?\n[Answer] It is that.\n[End]\n" * 20000
    t = time.perf_counter()
    assert len(parse_tagged(many, TAGS)) == 20000
    for garbage in ("[Question] q " * 50000, "[" * 200000, "**" * 200000, "Question" * 50000,
                    "[Question]" + "a [Answe" * 50000, "x" * 2_000_000):
        assert parse_tagged(garbage, TAGS) == []
    assert time.perf_counter() - t < 10, "parsing degenerate text must not backtrack catastrophically"


def test_no_tags_requested_is_no_items():
    assert parse_tagged("[Question] Q? [Answer] A. [End]", ()) == []


# -- one free-text item (an instruction, a context) --------------------------------
@pytest.mark.parametrize("text, expected", [
    ("Write a haiku about the rain.", "Write a haiku about the rain."),
    ("  Write a haiku about the rain.  \n", "Write a haiku about the rain."),
    ('"Write a haiku about the rain."', "Write a haiku about the rain."),
    ("Sure, here is a new task:\nWrite a haiku about the rain.", "Write a haiku about the rain."),
    ("Here's one:\nWrite a haiku about the rain.", "Write a haiku about the rain."),
    ("[Question] Write a haiku about the rain.", "Write a haiku about the rain."),
    ("[task] Write a haiku about the rain.", "Write a haiku about the rain."),
    ("Écris un haïku sur la pluie.", "Écris un haïku sur la pluie."),
])
def test_clean_single_keeps_the_item(text, expected):
    assert clean_single(text) == expected


@pytest.mark.parametrize("text", ["", None, "  ", "?!", "...", "12345", "- * -", *PLAIN_GARBAGE])
def test_clean_single_refuses_garbage(text):
    assert clean_single(text) is None


def test_clean_single_refuses_runaway_output():
    assert clean_single("word " * 1000, max_chars=600) is None
    assert clean_single("word " * 100, max_chars=600) is not None


@pytest.mark.parametrize("text", ["Напишите хайку о дожде.", "雨についての俳句を書いてください。",
                                  "اكتب قصيدة هايكو عن المطر."])
def test_clean_single_keeps_non_latin_scripts(text):
    assert clean_single(text) == text
