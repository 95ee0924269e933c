"""Multiple-choice questions for the MMLU-branch knowledge evaluation.

- `parse_mcq`: a weak teacher's output read tolerantly: `[Question]`,
  `Question:`, `**Question:**` or `Q:`; options as `[A] x`, `A) x`, `A. x`,
  `(A) x`, `A: x`, one per line or all on one line; the answer as a letter
  (`[Answer] B`, `Answer: (b)`, `The correct answer is B`) or as the text of
  one option. Several items per completion are all read.
- `validate_mcq`: exactly four non-empty, distinct options (after case,
  space and punctuation folding), none repeating the question, and an answer
  that names exactly one of them. Anything else comes back as a reason string,
  never an exception.
- `cloze_mcqs`: the fallback set built from the leaf's own seed Q/A: each seed
  question with its answer among other seed answers of the same leaf.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass, field

LETTERS = "ABCD"

_Q_TAG = r"(?:\[\s*question\s*\]|\*\*\s*question\s*:?\s*\*\*|(?m:^\s*question\s*\d*\s*:)|(?m:^\s*q\s*\d*\s*[:.]))"
_ANS_TAG = r"(?:\[\s*(?:correct\s+)?answer\s*\]|\*\*\s*(?:correct\s+)?answer\s*:?\s*\*\*|(?<![\w\[])(?:correct\s+)?answer\s*(?:is)?\s*[:\-]|the\s+(?:correct|right)\s+(?:answer|option)\s+is)"
_END_TAG = r"\[\s*end\s*\]"
# an option marker at a line start, or inline after whitespace: [A] (A) A) A. A:
# (letters up to F are read so that a fifth option is seen, and rejected)
_OPT_LINE = re.compile(r"(?im)^[ \t]*(?:[-*][ \t]*)?(?:\[\s*([A-F])\s*\]|\(\s*([A-F])\s*\)|([A-F])\s*[\).:])[ \t]*(.*)$")
_OPT_INLINE = re.compile(r"(?i)(?:^|\s)(?:\[\s*([A-F])\s*\]|\(\s*([A-F])\s*\)|([A-F])\))\s+")


@dataclass
class MCQ:
    id: str
    leaf: str
    question: str
    options: list[str]
    answer: int  # index into options
    source: str = "teacher"  # teacher | cloze
    chunk: int = -1
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MCQ:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def norm(text: str) -> str:
    text = re.sub(r"\s+", " ", text or "").strip().lower()
    return text.strip(" .,;:!?\"'`*")


def _split_items(text: str) -> list[str]:
    starts = [m.start() for m in re.finditer(_Q_TAG, text, flags=re.IGNORECASE)]
    if not starts:
        return [text]  # no question tag: the whole text may still be "question\nA) ..."
    return [text[s:e] for s, e in zip(starts, starts[1:] + [len(text)])]


def _options(body: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first option, [(letter, text), ...]) of one item body."""
    found = [(m.start(), (m.group(1) or m.group(2) or m.group(3)).upper(), m.group(4).strip())
             for m in _OPT_LINE.finditer(body)]
    # one line holding several options: "A) x B) y C) z D) w"
    expanded: list[tuple[int, str, str]] = []
    for start, letter, rest in found:
        inner = list(_OPT_INLINE.finditer(" " + rest))
        if inner:
            pieces, prev_letter, prev_end = [], letter, 0
            for m in inner:
                pieces.append((prev_letter, (" " + rest)[prev_end:m.start()].strip()))
                prev_letter, prev_end = (m.group(1) or m.group(2) or m.group(3)).upper(), m.end()
            pieces.append((prev_letter, (" " + rest)[prev_end:].strip()))
            expanded += [(start, lt, tx) for lt, tx in pieces]
        else:
            expanded.append((start, letter, rest))
    if not expanded:
        return body, []
    head = body[: expanded[0][0]]
    return head, [(lt, tx) for _, lt, tx in expanded]


def _resolve_answer(raw: str, options: list[str]) -> int | None | str:
    """Index of the option the answer names; a reason string when it names none or several."""
    raw = raw.strip()
    if not raw:
        return "no_answer"
    first = raw.splitlines()[0].strip().strip("*").strip()
    m = re.match(r"^(?:option\s+)?[\[(]?\s*([A-Da-d])\s*[\])]?(?:$|[\s\).:,-]+(.*)$)", first)
    if m:
        letter, rest = m.group(1).upper(), (m.group(2) or "").strip()
        idx = LETTERS.index(letter)
        # "A small island..." is a sentence, not option A, unless it repeats option A
        if m.group(1).islower() and rest and norm(rest) != norm(options[idx]):
            pass
        elif not rest or not re.match(r"^[a-z]", rest) or norm(rest) == norm(options[idx]) \
                or norm(options[idx]).startswith(norm(rest)) or norm(rest).startswith(norm(options[idx])):
            return idx
    n = norm(first)
    exact = [i for i, o in enumerate(options) if norm(o) == n]
    if len(exact) == 1:
        return exact[0]
    contained = [i for i, o in enumerate(options) if norm(o) and (norm(o) in n or (len(n) > 3 and n in norm(o)))]
    if len(contained) == 1:
        return contained[0]
    return "ambiguous_answer" if len(contained) > 1 else "answer_not_an_option"


def validate_mcq(question: str, options: list[tuple[str, str]], answer_raw: str | None) -> tuple[dict | None, str | None]:
    """({question, options, answer} or None, reason or None)."""
    question = re.sub(r"\s+", " ", question or "").strip().strip("*").strip()
    if len(question) < 8 or not re.search(r"[A-Za-z]{2}", question):
        return None, "no_question"
    letters = [lt for lt, _ in options]
    if letters != list(LETTERS):
        return None, "not_four_options"
    texts = [re.sub(r"\s+", " ", t).strip() for _, t in options[:4]]
    if any(not norm(t) for t in texts):
        return None, "empty_option"
    if len({norm(t) for t in texts}) < 4:
        return None, "duplicate_options"
    if any(norm(t) == norm(question) for t in texts):
        return None, "option_repeats_question"
    if answer_raw is None:
        return None, "no_answer"
    idx = _resolve_answer(answer_raw, texts)
    if isinstance(idx, str):
        return None, idx
    return {"question": question, "options": texts, "answer": idx}, None


def parse_mcq(text: str) -> tuple[list[dict], list[str]]:
    """All valid items in a completion, and the reasons the others failed."""
    if not text or not text.strip():
        return [], ["empty"]
    items, reasons = [], []
    for chunk in _split_items(text):
        end = re.search(_END_TAG, chunk, flags=re.IGNORECASE)
        if end:
            chunk = chunk[: end.start()]
        chunk = re.sub(r"^\s*" + _Q_TAG, "", chunk, count=1, flags=re.IGNORECASE)
        ans = None
        am = list(re.finditer(_ANS_TAG, chunk, flags=re.IGNORECASE))
        if am:
            ans = chunk[am[-1].end():]
            chunk = chunk[: am[-1].start()]
        head, options = _options(chunk)
        item, why = validate_mcq(head, options, ans)
        if item:
            items.append(item)
        else:
            reasons.append(why or "invalid")
    return items, reasons


_STOP = {"a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "is", "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "as", "into", "than", "then", "there", "their", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "does", "do", "did", "not", "no", "yes", "one", "only", "about"}


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9][a-z0-9'-]*", (text or "").lower()) if w not in _STOP and len(w) > 1}


def support(option: str, document: str) -> float:
    """Share of the option's content words that occur in the document (1.0 for an option without any)."""
    words = content_words(option)
    if not words:
        return 1.0
    return len(words & content_words(document)) / len(words)


def mcq_id(leaf: str, question: str, options: list[str]) -> str:
    h = hashlib.sha1("\x1f".join([leaf, question, *options]).encode()).hexdigest()
    return h[:16]


def cloze_mcqs(leaf: str, examples, seed: int, n_options: int = 4) -> list[MCQ]:
    """Each seed question with its answer among other seed answers of the same leaf (deterministic).

    Needs at least two distinct seed answers; options are capped by how many
    distinct answers the leaf has (up to n_options)."""
    answers = []
    for ex in examples:
        if ex.answer and norm(ex.answer) not in {norm(a) for a in answers}:
            answers.append(ex.answer.strip())
    if len(answers) < 2:
        return []
    out = []
    for i, ex in enumerate(examples):
        if not ex.question or not ex.answer:
            continue
        rng = random.Random(f"{seed}:{leaf}:cloze:{i}")
        others = [a for a in answers if norm(a) != norm(ex.answer)]
        picks = rng.sample(others, min(n_options - 1, len(others)))
        options = picks + [ex.answer.strip()]
        rng.shuffle(options)
        answer = [norm(o) for o in options].index(norm(ex.answer))
        out.append(MCQ(mcq_id(leaf, ex.question, options), leaf, ex.question.strip(), options, answer,
                       source="cloze", meta={"seed_example": i}))
    return out
