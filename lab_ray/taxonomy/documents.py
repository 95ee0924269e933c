"""Knowledge documents: `document: {repo, commit, patterns}` -> files on disk.

A repo is a URL or a local path; `taxonomy.documents.repo_map` maps a URL to
a local directory so users (and the tests) work offline. A git repo is read
at exactly the leaf's commit: `git archive <commit>` is unpacked into the
cache with tarfile's "data" filter, so nothing in it can land outside the
snapshot. A plain (non-git) mapped directory is taken as that commit's
snapshot. Patterns are globs relative to the repo root; they may not be
absolute or contain `..`, and a match that resolves outside the repo (a
symlink) is refused.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lab_ray.taxonomy.leaf import DocumentRef

TEXT_FORMATS = {".md", ".markdown", ".txt", ".text", ".rst"}
PDF_FORMATS = {".pdf"}
GIT_TIMEOUT_S = 600


class DocumentProblem(Exception):
    """A document cannot be resolved; yaml_path says which field is at fault."""

    def __init__(self, message: str, yaml_path: str = ".document"):
        super().__init__(message)
        self.yaml_path = yaml_path


@dataclass(frozen=True)
class ResolvedDocument:
    repo: str
    commit: str
    relpath: str  # inside the repo, posix
    path: Path  # on disk
    commit_verified: bool  # False when read from a plain mapped directory

    def read_text(self, max_bytes: int = 20_000_000) -> str:
        return read_document(self.path, max_bytes)


def normalize_repo(url: str) -> str:
    url = url.strip().rstrip("/")
    return url[:-4] if url.endswith(".git") else url


def pattern_problem(pattern: str) -> str | None:
    """Why a pattern could escape its repo, or None if it is safe."""
    if not pattern or not pattern.strip():
        return "empty pattern"
    if "\\" in pattern:
        return f"pattern {pattern!r} uses '\\'; use '/' between folders"
    if pattern.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", pattern):
        return f"pattern {pattern!r} is absolute; patterns are relative to the repo root"
    if ".." in PurePosixPath(pattern).parts:
        return f"pattern {pattern!r} contains '..'; patterns cannot leave the repo"
    return None


def read_document(path: Path, max_bytes: int = 20_000_000) -> str:
    size = path.stat().st_size
    if size > max_bytes:
        raise DocumentProblem(f"document {path.name} is {size / 1e6:.1f} MB, over the "
                              f"{max_bytes / 1e6:.0f} MB limit (taxonomy.documents.max_document_bytes)")
    suffix = path.suffix.lower()
    if suffix in TEXT_FORMATS:
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DocumentProblem(f"document {path.name} is not valid UTF-8 (offset {e.start})")
    if suffix in PDF_FORMATS:
        try:
            from pypdf import PdfReader
        except ImportError:
            raise DocumentProblem(f"document {path.name} is a PDF; install pypdf to read PDFs")
        return "\n\n".join((page.extract_text() or "") for page in PdfReader(str(path)).pages)
    raise DocumentProblem(f"document {path.name} has unsupported format {suffix or '(none)'} "
                          f"(supported: {', '.join(sorted(TEXT_FORMATS | PDF_FORMATS))})")


def _git(args: list[str], cwd: Path | None = None, input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(["git", *args], cwd=cwd, input=input_bytes, capture_output=True,
                              timeout=GIT_TIMEOUT_S, env=env, check=False)
    except FileNotFoundError:
        raise DocumentProblem("git is not installed; it is needed to read knowledge documents from a repo "
                              "(or map the repo to a plain directory in taxonomy.documents.repo_map)", ".document.repo")
    except subprocess.TimeoutExpired:
        raise DocumentProblem(f"git {args[0]} timed out after {GIT_TIMEOUT_S} s", ".document.repo")


def _is_git_root(path: Path) -> bool:
    try:
        out = _git(["rev-parse", "--show-toplevel"], cwd=path)
    except DocumentProblem:
        return False
    return out.returncode == 0 and Path(out.stdout.decode().strip()).resolve() == path.resolve()


class DocumentResolver:
    def __init__(self, cfg, base_dir: Path | None = None):
        self.cfg = cfg
        self.base_dir = base_dir or Path.cwd()
        self.cache = Path(os.path.expanduser(cfg.cache_dir))
        self.repo_map = {normalize_repo(k): v for k, v in (cfg.repo_map or {}).items()}

    # -- public -------------------------------------------------------------
    def resolve(self, ref: DocumentRef) -> list[ResolvedDocument]:
        """All files the leaf's patterns match; raises DocumentProblem."""
        for i, pattern in enumerate(ref.patterns):
            why = pattern_problem(pattern)
            if why:
                raise DocumentProblem(why, f".document.patterns[{i}]")
        if not ref.patterns:
            raise DocumentProblem("document.patterns is empty; list the files to use", ".document.patterns")
        root, verified = self._snapshot(ref)
        real_root = root.resolve()
        docs: list[ResolvedDocument] = []
        for i, pattern in enumerate(ref.patterns):
            matches = sorted(glob.glob(pattern, root_dir=root, recursive=True))
            files = []
            for rel in matches:
                full = root / rel
                if not full.resolve().is_relative_to(real_root):
                    raise DocumentProblem(f"pattern {pattern!r} matches {rel}, a link leading outside the repo",
                                          f".document.patterns[{i}]")
                if full.is_file():
                    files.append(rel)
            if not files:
                raise DocumentProblem(f"pattern {pattern!r} matches no file in {ref.repo} at commit "
                                      f"{ref.commit[:12]}", f".document.patterns[{i}]")
            for rel in files:
                docs.append(ResolvedDocument(ref.repo, ref.commit, PurePosixPath(*Path(rel).parts).as_posix(),
                                             root / rel, verified))
        return docs

    # -- snapshots -----------------------------------------------------------
    def _local_source(self, repo: str) -> Path | None:
        mapped = self.repo_map.get(normalize_repo(repo))
        if mapped:
            return (self.base_dir / Path(mapped).expanduser()).resolve()
        if repo.startswith("file://"):
            return Path(repo[len("file://"):])
        if "://" not in repo and not re.match(r"^[\w.-]+@[\w.-]+:", repo):  # not a URL nor scp-style
            return (self.base_dir / Path(repo).expanduser()).resolve()
        return None

    def _snapshot(self, ref: DocumentRef) -> tuple[Path, bool]:
        local = self._local_source(ref.repo)
        if local is not None:
            if not local.is_dir():
                raise DocumentProblem(f"repo {ref.repo} maps to {local}, which is not a directory", ".document.repo")
            if not _is_git_root(local):
                return local, False  # a plain snapshot of the commit, as the user mapped it
            return self._materialize(local, ref), True
        if not self.cfg.allow_clone:
            raise DocumentProblem(f"repo {ref.repo} is not mapped to a local directory and cloning is off; "
                                  "add it to taxonomy.documents.repo_map", ".document.repo")
        return self._materialize(self._clone(ref), ref), True

    def _slug(self, repo: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", normalize_repo(repo).rsplit("/", 1)[-1])[:40]
        return f"{name}-{hashlib.sha256(normalize_repo(repo).encode()).hexdigest()[:10]}"

    def _clone(self, ref: DocumentRef) -> Path:
        gitdir = self.cache / "repos" / (self._slug(ref.repo) + ".git")
        if not gitdir.exists():
            gitdir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=gitdir.parent))
            out = _git(["clone", "--bare", "--quiet", "--", ref.repo, str(tmp)])
            if out.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise DocumentProblem(f"cannot clone {ref.repo}: {out.stderr.decode(errors='replace').strip()[-200:]}; "
                                      "map it to a local copy in taxonomy.documents.repo_map", ".document.repo")
            tmp.rename(gitdir)
        return gitdir

    def _materialize(self, gitdir: Path, ref: DocumentRef) -> Path:
        target = self.cache / "snapshots" / f"{self._slug(ref.repo)}-{ref.commit}"
        if target.is_dir():
            return target
        if not re.fullmatch(r"[0-9a-fA-F]{4,64}", ref.commit):
            raise DocumentProblem(f"commit {ref.commit!r} is not a commit hash", ".document.commit")
        check = _git(["rev-parse", "--verify", "--quiet", f"{ref.commit}^{{commit}}"], cwd=gitdir)
        if check.returncode != 0:
            raise DocumentProblem(f"commit {ref.commit} is not in repo {ref.repo}", ".document.commit")
        archive = _git(["archive", "--format=tar", ref.commit], cwd=gitdir)
        if archive.returncode != 0:
            raise DocumentProblem(f"cannot read commit {ref.commit} of {ref.repo}: "
                                  f"{archive.stderr.decode(errors='replace').strip()[-200:]}", ".document.commit")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent))
        try:
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                # Links that would leave the snapshot are dropped, never followed.
                tar.extractall(tmp, filter=_drop_escaping)
            try:
                tmp.rename(target)
            except OSError:
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def _drop_escaping(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None
