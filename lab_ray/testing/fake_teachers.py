"""Test-only teachers for the SDG pipeline. Never used by default.

They stand in for the teacher client inside each stage actor, through the
pipeline's python teacher spec:

    {"kind": "python", "factory": "lab_ray.testing.fake_teachers:InstantTeacher", "args": {...}}

and honour the client's contract: `run_many(calls) -> list[TeacherReply]`,
one reply per call, in order, never raising.

- `InstantTeacher`: well-formed, instant, deterministic replies for every
  stage. Knowledge Q/A requests (recognised by the tagged `[Question]`
  example turns) get `[Question] .. [Answer] .. [End]`; every other chat
  request gets one plain sentence. The words are drawn from a generator
  seeded by a hash of the whole request, so different rows get different
  text (dedup does not collapse them) and the same request always gets the
  same reply (resume tests can compare id sets). A constrained choice returns
  the positive choice ("yes", or "good" on the 3-point scale) with high
  probability, or, for `reject_fraction` of the requests (by hash), the
  negative one ("no", "poor"). With `repeat_fraction`, that share of rows
  (chosen by the row's seed) get replies that ignore the seed and the
  examples, so they repeat each other within a leaf and dedup has work.
- `FaultyTeacher`: an InstantTeacher of which a fraction of requests, chosen
  by a hash of the request (so the schedule is the same on every run), come
  back as failures (timeout, http_500, ...) or as garbage the stages cannot
  parse. With `log_dir`, every request's fate is appended to a file there so
  a test can count exactly what it injected.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
import time
import uuid
from pathlib import Path

from lab_ray.teacher.client import TeacherReply

_SYLLABLES = ["ka", "lo", "mi", "ru", "te", "na", "so", "vi", "de", "pa", "zu", "ri", "mo", "fe", "ta", "gu",
              "be", "no", "si", "la", "ko", "me", "du", "ha", "ve", "ti", "ro", "ju", "ne", "wa", "ci", "po"]
POSITIVE = ("yes", "good")  # the positive answer of a yes/no judge, and the top of the 3-point scale
NEGATIVE = ("no", "poor")
ERRORS = ("timeout", "http_500", "http_503", "connection")
# Garbage that no stage can read as an item: too short, no letters, no tags.
PLAIN_GARBAGE = ("", "   ", "\n", "?", "\u2014", "\u200b")
TAGGED_GARBAGE = (
    "Sure! Here is a quiz question about the document.",
    "[Question] What is described in the document?",
    "[Answer] Only an answer, no question. [End]",
    "[Question]\n[Answer]\n[End]",
    "Question - answer - end",
    "",
)


def request_digest(kind: str, kwargs: dict) -> bytes:
    """A stable hash of one request (the same bytes in every process and run)."""
    return hashlib.sha256(json.dumps([kind, kwargs], sort_keys=True, default=str).encode()).digest()


def unit(digest: bytes, salt: str) -> float:
    """A deterministic number in [0, 1) for (request, salt)."""
    h = hashlib.sha256(digest + salt.encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(n)]


def _is_tagged(messages: list[dict]) -> bool:
    return any("[Question]" in (m.get("content") or "") for m in messages if m.get("role") != "user")


def _prompt_tokens(messages: list[dict]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in messages)


class InstantTeacher:
    """Well-formed deterministic replies for every SDG stage, with no model behind them."""

    def __init__(self, words: int = 12, latency_s: float = 0.0, reject_fraction: float = 0.0,
                 repeat_fraction: float = 0.0, malformed_item_fraction: float = 0.0, log_dir: str | None = None):
        self.words = int(words)
        # Of the n completions of a request (n > 1), this share are garbage no stage can parse.
        self.malformed_item_fraction = float(malformed_item_fraction)
        self.latency_s = float(latency_s)  # per run_many call: lets a test catch a run part-way
        self.reject_fraction = float(reject_fraction)
        self.repeat_fraction = float(repeat_fraction)
        self.log_dir = Path(log_dir) if log_dir else None
        self._log_name = f"teacher-{os.getpid()}-{uuid.uuid4().hex[:8]}.log"
        self._lock = threading.Lock()

    # -- the client contract ---------------------------------------------------
    def run_many(self, calls: list[tuple[str, dict]]) -> list[TeacherReply]:
        if self.latency_s:
            time.sleep(self.latency_s)
        replies, fates = [], []
        for kind, kwargs in calls:
            try:
                reply, fate = self.reply(kind, kwargs)
            except Exception as e:  # the client never raises out of a batch; neither do we
                reply, fate = TeacherReply(False, error="client_error", detail=f"{type(e).__name__}: {e}"), "error"
            replies.append(reply)
            fates.append(f"{kind}\t{fate}")
        self._log(fates)
        return replies

    def close(self) -> None:
        pass

    # -- replies -----------------------------------------------------------------
    def reply(self, kind: str, kwargs: dict) -> tuple[TeacherReply, str]:
        digest = request_digest(kind, kwargs)
        if kind == "choose":
            reply = self.choose(kwargs, digest)
            return reply, ("rejected" if reply.text in NEGATIVE else "ok")
        if kind in ("chat", "complete"):
            seed = kwargs.get("seed")
            if self.repeat_fraction and seed is not None and \
                    unit(str(seed).encode(), "repeat") < self.repeat_fraction:
                messages = kwargs.get("messages") or []
                # the system prompt and the row's own request only: the same for such rows of a leaf
                digest = request_digest(kind, {"system": messages[0] if messages else None,
                                               "last": messages[-1] if messages else None})
                return self.chat(kwargs, digest), "repeat"
            return self.chat(kwargs, digest), "ok"
        return TeacherReply(False, error="client_error", detail=f"unknown call {kind!r}"), "error"

    def chat(self, kwargs: dict, digest: bytes) -> TeacherReply:
        """`n` completions (n on the request, as the OpenAI API): the prompt is counted once."""
        messages = kwargs.get("messages") or [{"role": "user", "content": str(kwargs.get("prompt", ""))}]
        tagged = _is_tagged(messages)
        texts = []
        for i in range(max(1, int(kwargs.get("n") or 1))):
            item = digest if i == 0 else hashlib.sha256(digest + f"/{i}".encode()).digest()
            if i > 0 and unit(item, "malformed") < self.malformed_item_fraction:
                texts.append((TAGGED_GARBAGE if tagged else PLAIN_GARBAGE)[i % 2])
                continue
            rng = random.Random(int.from_bytes(item[:8], "big"))
            n = max(3, min(self.words, int(kwargs.get("max_tokens") or self.words)))
            if tagged:
                q, a = _words(rng, n), _words(rng, n)
                texts.append(f"[Question] {' '.join(q).capitalize()}?\n[Answer] {' '.join(a).capitalize()}.\n[End]")
            else:
                texts.append(" ".join(_words(rng, n)).capitalize() + ".")
        return TeacherReply(True, texts, prompt_tokens=_prompt_tokens(messages),
                            completion_tokens=sum(len(t.split()) for t in texts), attempts=1)

    def choose(self, kwargs: dict, digest: bytes) -> TeacherReply:
        choices = [str(c) for c in kwargs["choices"]]
        positive = next((c for c in choices if c in POSITIVE), choices[-1])
        negative = next((c for c in choices if c in NEGATIVE), choices[0])
        best = negative if unit(digest, "reject") < self.reject_fraction else positive
        others = max(1, len(choices) - 1)
        logprobs = {c: math.log(0.9) if c == best else math.log(0.1 / others) for c in choices}
        return TeacherReply(True, [best], prompt_tokens=_prompt_tokens(kwargs["messages"]), completion_tokens=1,
                            attempts=1, choice_logprobs=logprobs)

    def _log(self, lines: list[str]) -> None:
        if not self.log_dir or not lines:
            return
        with self._lock:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / self._log_name, "a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())


class FaultyTeacher(InstantTeacher):
    """An InstantTeacher where `fraction` of requests fail or come back as garbage.

    The fate of a request is a function of its hash and `salt` only: the same
    request fails the same way on every run. Of the faulty requests,
    `garbage_share` return garbage (a chat reply no stage can parse; for a
    constrained choice, the client's own verdict on an answer outside the
    choices: error="unparsable"), the rest fail like a transport error
    (timeout, http_500, http_503, connection) after the client gave up.
    """

    def __init__(self, fraction: float = 0.3, garbage_share: float = 0.5, salt: str = "faults", **kwargs):
        super().__init__(**kwargs)
        self.fraction = float(fraction)
        self.garbage_share = float(garbage_share)
        self.salt = salt

    def fate(self, kind: str, kwargs: dict) -> str:
        digest = request_digest(kind, kwargs)
        if unit(digest, self.salt) >= self.fraction:
            return "ok"
        return "garbage" if unit(digest, self.salt + "/garbage") < self.garbage_share else "error"

    def reply(self, kind: str, kwargs: dict) -> tuple[TeacherReply, str]:
        fate = self.fate(kind, kwargs)
        if fate == "ok":
            return super().reply(kind, kwargs)
        digest = request_digest(kind, kwargs)
        pick = int(unit(digest, self.salt + "/which") * 1e6)
        if fate == "error":
            error = ERRORS[pick % len(ERRORS)]
            return TeacherReply(False, error=error, detail="injected by FaultyTeacher", attempts=4), fate
        if kind == "choose":
            return TeacherReply(False, ["maybe"], error="unparsable", detail="maybe", prompt_tokens=5,
                                completion_tokens=1, attempts=1), fate
        tagged = _is_tagged(kwargs.get("messages") or [])
        pool = TAGGED_GARBAGE if tagged else PLAIN_GARBAGE
        text = pool[pick % len(pool)]
        return TeacherReply(True, [text], prompt_tokens=_prompt_tokens(kwargs.get("messages") or []),
                            completion_tokens=len(text.split()), attempts=1), fate


def read_fates(log_dir: str | Path) -> list[tuple[str, str]]:
    """(kind, fate) of every request the teachers logged under log_dir."""
    out = []
    for path in sorted(Path(log_dir).glob("teacher-*.log")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line:
                kind, fate = line.split("\t")
                out.append((kind, fate))
    return out
