"""Walk a taxonomy tree into typed leaves, collecting every problem on the way.

Nothing here stops at the first error: each file is read, schema-validated
(instructlab-schema), checked for what the schema cannot see, and for
knowledge leaves licence-checked and document-resolved; all problems of all
files come back together so `validate` can list them in one run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lab_ray.errors import Problem, TaxonomyError
from lab_ray.taxonomy.checks import check_leaf_semantics, looks_like_taxonomy
from lab_ray.taxonomy.documents import DocumentProblem, DocumentResolver, ResolvedDocument
from lab_ray.taxonomy.leaf import BRANCHES, Branch, Leaf, leaf_from_data
from lab_ray.taxonomy.licenses import check_license
from lab_ray.taxonomy.schema_check import SchemaValidator
from lab_ray.taxonomy.yaml_source import read_yaml

LEAF_FILE = "qna.yaml"


@dataclass
class Taxonomy:
    root: Path
    leaves: list[Leaf] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    documents: dict[str, list[ResolvedDocument]] = field(default_factory=dict)
    files_checked: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    def leaf(self, path: str) -> Leaf:
        for leaf in self.leaves:
            if leaf.path == path:
                return leaf
        raise KeyError(path)

    def raise_for_errors(self) -> None:
        if self.errors:
            raise TaxonomyError(problems=self.errors)


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_root_problem(root: Path) -> str | None:
    if not root.exists():
        return f"taxonomy path {root} does not exist"
    if not root.is_dir():
        return f"taxonomy path {root} is not a directory"
    if not any((root / b).is_dir() for b in BRANCHES):
        return (f"{root} is not a taxonomy: it has none of {', '.join(b + '/' for b in BRANCHES)}; "
                "pass the folder that holds them")
    return None


def iter_yaml_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".yaml", ".yml")):
                yield Path(dirpath) / name


def load_taxonomy(root: str | Path, cfg, *, check_documents: bool | None = None,
                  only: set[str] | None = None) -> Taxonomy:
    """cfg is the `taxonomy` config section. `only`: leaf paths to load (diff)."""
    root = Path(root)
    tax = Taxonomy(root=root)
    why = find_root_problem(root)
    if why:
        raise TaxonomyError(why)
    check_documents = cfg.check_documents if check_documents is None else check_documents
    validator = SchemaValidator(cfg.schema_version, cfg.yamllint_config)
    resolver = DocumentResolver(cfg.documents)
    for path in iter_yaml_files(root):
        rel_dir = path.parent.relative_to(root).as_posix()
        display = display_path(path)
        if path.name != LEAF_FILE:
            _check_misnamed(path, display, cfg.max_file_bytes, tax)
            continue
        if only is not None and rel_dir not in only:
            continue
        tax.files_checked += 1
        leaf = _load_leaf(path, rel_dir, display, cfg, validator, resolver, check_documents, tax)
        if leaf is not None:
            tax.leaves.append(leaf)
    tax.leaves.sort(key=lambda leaf: leaf.path)
    return tax


def _check_misnamed(path: Path, display: str, max_bytes: int, tax: Taxonomy) -> None:
    try:
        if path.stat().st_size > max_bytes:
            return
    except OSError:
        return
    src = read_yaml(path, display, max_bytes)
    if src.ok and looks_like_taxonomy(src.data):
        tax.problems.append(Problem(
            f"holds taxonomy data (seed_examples) but is named {path.name!r}; only files named "
            f"{LEAF_FILE!r} are read: rename it to {path.parent.name}/{LEAF_FILE}", display, 1))


def _load_leaf(path: Path, rel_dir: str, display: str, cfg, validator: SchemaValidator,
               resolver: DocumentResolver, check_documents: bool, tax: Taxonomy) -> Leaf | None:
    src = read_yaml(path, display, cfg.max_file_bytes)
    branch_name = rel_dir.split("/", 1)[0]
    if src.ok and branch_name not in BRANCHES:
        src.error(f"qna.yaml is outside the taxonomy branches; move it under one of {', '.join(BRANCHES)}")
    if src.ok:
        validator.validate(src)
    if src.ok:
        check_leaf_semantics(src, src.data, Branch(branch_name))
    leaf = None
    if src.ok:
        leaf = leaf_from_data(rel_dir, Branch(branch_name), display, src.data)
        if leaf.is_knowledge:
            licenses, problems = check_license(leaf.path, path.parent, display, cfg.documents)
            leaf.licenses = licenses
            src.problems.extend(problems)
            if check_documents and leaf.document is not None:
                try:
                    tax.documents[leaf.path] = resolver.resolve(leaf.document)
                except DocumentProblem as e:
                    src.error(str(e), src.line_of(e.yaml_path))
    tax.problems.extend(src.problems)
    return leaf if src.ok else None
