"""Builders for small taxonomies on disk (real files, real git repos)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

def skill_yaml(n: int = 5, grounded: bool = False, task: str = "Write a haiku about a subject.") -> str:
    lines = ["version: 3", "created_by: tester", f"task_description: {task}", "seed_examples:"]
    for i in range(n):
        lines.append(f"  - question: Write a haiku about subject number {i}.")
        lines.append(f"    answer: A short poem about subject {i}.")
        if grounded:
            lines.append(f"    context: Subject {i} is a thing with property {i}.")
    return "\n".join(lines) + "\n"


def knowledge_yaml(repo: str, commit: str, patterns=("doc.md",), n: int = 5) -> str:
    lines = ["version: 3", "created_by: tester", "domain: testing", "document_outline: A test document.",
             "seed_examples:"]
    for i in range(n):
        lines.append(f"  - context: Paragraph {i} of the document says fact {i}.")
        lines.append("    questions_and_answers:")
        for j in range(3):
            lines.append(f"      - question: What is fact {i}.{j}?")
            lines.append(f"        answer: Fact {i}.{j} is stated in paragraph {i}.")
    lines += ["document:", f"  repo: {repo}", f"  commit: {commit}", "  patterns:"]
    lines += [f"    - {p!r}" for p in patterns]
    return "\n".join(lines) + "\n"


ATTRIBUTION = textwrap.dedent("""\
    Title of work: Test document
    Link to work: -
    License of the work: {license}
    Creator names: Tester
    """)


def write(root: Path, leaf: str, text: str | bytes, name: str = "qna.yaml") -> Path:
    path = root / leaf / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}).stdout
