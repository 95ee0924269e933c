"""Leaves changed against a git ref, like InstructLab's `taxonomy diff`.

A leaf counts as changed when its qna.yaml was added or modified in commits
since the merge base of REF and HEAD, in the index or working tree, or is
untracked. Deleted leaves are reported but not generated from. A file whose
content equals REF's again is not a change. `--base empty` is the whole tree.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lab_ray.errors import TaxonomyError
from lab_ray.taxonomy.loader import LEAF_FILE, iter_yaml_files

EMPTY = "empty"


@dataclass(frozen=True)
class LeafChange:
    leaf: str  # leaf path relative to the taxonomy root
    status: str  # added | modified | untracked | deleted


def _git(root: Path, *args: str, check: bool = True) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise TaxonomyError("git is not installed; it is needed for taxonomy diff (or use --base empty)")
    if check and out.returncode != 0:
        raise TaxonomyError(f"git {' '.join(args[:2])} failed in {root}: {out.stderr.strip()[-300:]}")
    return out.stdout if out.returncode == 0 else ""


def changed_leaves(root: str | Path, base: str = EMPTY) -> list[LeafChange]:
    root = Path(root)
    if base == EMPTY:
        return [LeafChange(p.parent.relative_to(root).as_posix(), "added")
                for p in iter_yaml_files(root) if p.name == LEAF_FILE]
    if _git(root, "rev-parse", "--is-inside-work-tree", check=False).strip() != "true":
        raise TaxonomyError(f"{root} is not inside a git repository; diff needs one (or use --base empty)")
    if not _git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}", check=False).strip():
        raise TaxonomyError(f"git ref {base!r} not found in the repository of {root}; "
                            "give a branch, tag or commit (e.g. --base origin/main), or --base empty")
    prefix = _git(root, "rev-parse", "--show-prefix").strip()
    merge_base = _git(root, "merge-base", base, "HEAD", check=False).strip() or base
    touched: set[str] = set()
    for args in (["diff", "--name-only", "--no-renames", merge_base, "HEAD"],
                 ["diff", "--name-only", "--no-renames", "HEAD"],
                 ["diff", "--name-only", "--no-renames", "--cached", "HEAD"]):
        touched.update(_git(root, *args, "--", ".", check=False).splitlines())
    untracked = set(_git(root, "ls-files", "--others", "--exclude-standard", "--full-name", "--", ".").splitlines())
    touched |= untracked
    top = Path(_git(root, "rev-parse", "--show-toplevel").strip())
    changes: list[LeafChange] = []
    for repo_path in sorted(touched):
        if PurePosixPath(repo_path).name != LEAF_FILE or not repo_path.startswith(prefix):
            continue
        leaf = PurePosixPath(repo_path[len(prefix):]).parent.as_posix()
        on_disk = (top / repo_path).is_file()
        base_blob = _git(root, "rev-parse", "--verify", "--quiet", f"{merge_base}:{repo_path}", check=False).strip()
        if repo_path in untracked:
            status = "untracked"
        elif not on_disk:
            if not base_blob:
                continue  # added and deleted again since base
            status = "deleted"
        elif not base_blob:
            status = "added"
        else:
            now = _git(root, "hash-object", "--", str(top / repo_path)).strip()
            if now == base_blob:
                continue  # changed and changed back
            status = "modified"
        changes.append(LeafChange(leaf, status))
    return changes
