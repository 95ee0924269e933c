"""A run's storage: where its artifacts live and how they are written.

Every artifact of a run lives under one run directory, `run.root/run.name`,
where `run.root` is a local path or any URI `pyarrow.fs` resolves (`s3://`,
`gs://`, `abfs://`, `file://`). `StoragePath` is that location: a small,
picklable, pathlib-like handle over `pyarrow.fs` (the filesystem layer Ray
Data and Ray Train use), so a Ray task or actor on any node reads and writes
the same run. Node-local disk is only for scratch and caches.

Writes are atomic: on a local disk the bytes go to a temporary name beside
the target and are renamed over it; on an object store an object becomes
visible only when its upload completes. A reader (or a resumed run) sees the
whole old file or the whole new one, never half of either. Credentials come
from the usual places (environment, instance roles): the standard AWS
variables, `AWS_ENDPOINT_URL` included, are honoured by pyarrow's S3
filesystem, so an S3-compatible store needs no lab-ray setting.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from lab_ray.errors import ConfigError


def is_uri(location: str) -> bool:
    return "://" in str(location)


# What pyarrow's S3 filesystem reads from the environment when it is built: a
# process whose environment names another endpoint or identity (a test's second
# S3 server, a re-pointed shell) must not reuse a filesystem bound to the old one.
_FS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_REGION",
           "AWS_REGION")


def _filesystem(base: str) -> pafs.FileSystem:
    """One filesystem object per process, scheme://authority and endpoint (connections are reused)."""
    return _cached_filesystem(base, tuple(os.environ.get(k) for k in _FS_ENV))


@lru_cache(maxsize=16)
def _cached_filesystem(base: str, env: tuple) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(base)[0]


def _split(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('s3://bucket', 'bucket/a/b') as pyarrow names them."""
    scheme, rest = uri.split("://", 1)
    authority = rest.split("/", 1)[0]
    if scheme == "file":
        return "file://", rest if rest.startswith("/") else "/" + rest
    return f"{scheme}://{authority}", rest


class StoragePath:
    """A file or directory of the run's storage (local path or URI), pathlib-like."""

    __slots__ = ("uri",)

    def __init__(self, location: str | os.PathLike | "StoragePath"):
        if isinstance(location, StoragePath):
            self.uri = location.uri
        elif str(location).startswith("file://"):  # a (shared) mount named as a URI: a local path
            self.uri = str(Path(str(location)[len("file://"):]).absolute())
        elif is_uri(str(location)):
            self.uri = str(location).rstrip("/")
        else:
            self.uri = str(Path(location).expanduser().absolute())

    # -- identity -----------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return not is_uri(self.uri)

    @property
    def fs(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem() if self.is_local else _filesystem(_split(self.uri)[0])

    @property
    def path(self) -> str:
        """The path as `self.fs` names it."""
        return self.uri if self.is_local else _split(self.uri)[1]

    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on a local disk")
        return Path(self.uri)

    def __fspath__(self) -> str:  # only a local path is a filesystem path
        return str(self.local_path())

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"StoragePath({self.uri!r})"

    def __eq__(self, other) -> bool:
        if isinstance(other, (str, os.PathLike)) and not isinstance(other, StoragePath):
            other = StoragePath(other)  # a local path equals the same path given as a Path
        return isinstance(other, StoragePath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str) -> "StoragePath":
        return StoragePath(posixpath.join(self.uri, str(name)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri)

    @property
    def parent(self) -> "StoragePath":
        return StoragePath(posixpath.dirname(self.uri))

    def with_name(self, name: str) -> "StoragePath":
        return self.parent / name

    def with_suffix(self, suffix: str) -> "StoragePath":
        stem, _ = posixpath.splitext(self.name)
        return self.parent / (stem + suffix)

    # -- queries ------------------------------------------------------------------
    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def iterdir(self) -> list["StoragePath"]:
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(self / posixpath.basename(i.path) for i in infos)

    def glob(self, pattern: str) -> list["StoragePath"]:
        """Entries matching `pattern` below this directory, one path component per level
        ("*.jsonl", "cache/*.json", "*/part-*"), like Path.glob without "**"."""
        first, _, rest = pattern.partition("/")
        matches = [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, first)]
        if not rest:
            return matches
        return sorted(q for p in matches for q in p.glob(rest))

    def rglob_files(self) -> list["StoragePath"]:
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        base = self.path.rstrip("/")
        return sorted(self / i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File)

    def __lt__(self, other: "StoragePath") -> bool:
        return self.uri < other.uri

    # -- reads --------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    # -- writes (atomic) ------------------------------------------------------------
    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        self.fs.create_dir(self.path, recursive=parents)

    def write_bytes(self, data: bytes, fsync: bool = False) -> "StoragePath":
        if self.is_local:
            path = self.local_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        else:  # the object appears when the upload completes, whole
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
        return self

    def write_text(self, text: str, encoding: str = "utf-8") -> "StoragePath":
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = True) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        if self.is_local:
            shutil.rmtree(self.local_path(), ignore_errors=True)
        elif self.exists():
            self.fs.delete_dir(self.path)

    def upload_dir(self, local: Path) -> None:
        """Copy a local directory's files here (a node-local build, e.g. plots, published)."""
        pafs.copy_files(str(local), self.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def download_dir(self, local: Path) -> Path:
        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(local), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return local


def storage(location: str | os.PathLike | StoragePath) -> StoragePath:
    return StoragePath(location)


def in_ray_job() -> bool:
    """True in the driver of a Ray Job (`ray job submit` / `lab-ray submit`)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def run_root(cfg) -> StoragePath:
    """`run.root` as a storage location. A relative local root inside a Ray Job would
    land in the job's unpacked working directory (one copy per node, deleted when
    Ray's cache fills): refused."""
    root = str(cfg.run.root)
    if not is_uri(root) and not Path(root).expanduser().is_absolute() and in_ray_job():
        raise ConfigError(f"run.root={root!r} is a relative path inside a Ray Job: it would land in the job's "
                          "temporary working directory on each node. Set run.root to an object-store URI "
                          "(s3://BUCKET/lab-ray/runs, gs://...) or a shared absolute path")
    return StoragePath(root)


def run_dir(cfg) -> StoragePath:
    return run_root(cfg) / cfg.run.name


def atomic_write_bytes(path, data: bytes, fsync: bool = False) -> StoragePath:
    return StoragePath(path).write_bytes(data, fsync)


def atomic_write_text(path, text: str, fsync: bool = False) -> StoragePath:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync)


def atomic_write_json(path, data: Any, indent: int | None = 1, **kw) -> StoragePath:
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str, **kw))


def read_json(path, default: Any = None) -> Any:
    p = StoragePath(path)
    return json.loads(p.read_text()) if p.is_file() else default


def replace_dir(tmp, final) -> None:
    """Swap a fully written directory in for `final`. Local: a rename. Object stores
    have no rename: the old objects go, the new ones are copied in and the staging
    prefix removed (a crash in between leaves `final` partial; whoever wrote it
    reruns the step, as finalize and the run journal do)."""
    tmp, final = StoragePath(tmp), StoragePath(final)
    if tmp.is_local:
        tmp.local_path().mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final.local_path(), ignore_errors=True)
        os.replace(tmp.local_path(), final.local_path())
        return
    final.rmtree()
    if tmp.is_dir():
        pafs.copy_files(tmp.path, final.path, source_filesystem=tmp.fs, destination_filesystem=final.fs)
        tmp.rmtree()


class Journal:
    """A JSON record of what a multi-step job has finished, saved atomically
    after every change, so a rerun knows what to skip (run.json, train/journal.json)."""

    def __init__(self, path, empty: dict):
        self.path = StoragePath(path)
        self.data = read_json(self.path, default=None) or json.loads(json.dumps(empty))

    def save(self) -> None:
        atomic_write_json(self.path, self.data, indent=2)

    def entry(self, section: str, name: str) -> dict:
        return self.data[section].setdefault(name, {"status": "pending"})

    def is_done(self, section: str, name: str) -> bool:
        return self.data[section].get(name, {}).get("status") == "done"

    def finish(self, section: str, name: str, **info) -> None:
        """Mark `name` done (with when, and what `info` says) and save."""
        self.data[section][name] = {"status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.save()
