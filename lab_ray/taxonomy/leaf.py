"""The typed leaf: one qna.yaml, identified by its path in the taxonomy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Branch(str, Enum):
    KNOWLEDGE = "knowledge"
    FOUNDATIONAL_SKILLS = "foundational_skills"
    COMPOSITIONAL_SKILLS = "compositional_skills"


BRANCHES = [b.value for b in Branch]


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    # Skills: the grounding context of a grounded example; knowledge: the
    # excerpt of the document the Q/A was written against.
    context: str | None = None
    # Knowledge: index of the seed_examples entry (context block) it came from.
    group: int = 0


@dataclass(frozen=True)
class DocumentRef:
    repo: str
    commit: str
    patterns: tuple[str, ...]


@dataclass
class Leaf:
    path: str  # e.g. compositional_skills/writing/poetry/haiku
    branch: Branch
    file: str  # the qna.yaml on disk
    version: int
    created_by: str
    examples: list[Example]
    task_description: str = ""
    domain: str = ""
    document_outline: str = ""
    document: DocumentRef | None = None
    licenses: list[str] = field(default_factory=list)  # from attribution.txt

    @property
    def is_knowledge(self) -> bool:
        return self.branch is Branch.KNOWLEDGE

    @property
    def grounded(self) -> bool:
        """Skills whose examples carry a context (knowledge leaves always do)."""
        return bool(self.examples) and all(e.context for e in self.examples)

    @property
    def kind(self) -> str:
        if self.is_knowledge:
            return "knowledge"
        return "grounded" if self.grounded else "freeform"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for Ray Data rows and JSON files)."""
        d = asdict(self)
        d["branch"] = self.branch.value
        d["kind"] = self.kind
        return d


def leaf_from_data(path: str, branch: Branch, file: str, data: dict[str, Any]) -> Leaf:
    """Build a leaf from schema-valid qna.yaml data of any version (1-3)."""
    examples: list[Example] = []
    for i, seed in enumerate(data.get("seed_examples") or []):
        if not isinstance(seed, dict):
            continue
        context = _text(seed.get("context")) or None
        if "questions_and_answers" in seed:  # knowledge v3
            for qa in seed.get("questions_and_answers") or []:
                if isinstance(qa, dict):
                    examples.append(Example(_text(qa.get("question")), _text(qa.get("answer")), context, i))
        else:  # skills (all versions) and knowledge v1/v2
            examples.append(Example(_text(seed.get("question")), _text(seed.get("answer")), context, i))
    doc = data.get("document")
    document = None
    if isinstance(doc, dict):
        patterns = doc.get("patterns") or []
        document = DocumentRef(
            repo=str(doc.get("repo", "")),
            commit=str(doc.get("commit", "")),
            patterns=tuple(str(p) for p in patterns) if isinstance(patterns, list) else (),
        )
    return Leaf(
        path=path,
        branch=branch,
        file=file,
        version=int(data.get("version", 1)) if str(data.get("version", 1)).isdigit() else 1,
        created_by=_text(data.get("created_by")),
        examples=examples,
        task_description=_text(data.get("task_description")),
        domain=_text(data.get("domain")),
        document_outline=_text(data.get("document_outline")),
        document=document,
    )


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ("" if value is None else str(value))
