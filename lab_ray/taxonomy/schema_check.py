"""Validation with the ecosystem's own schema package, instructlab-schema.

We run its TaxonomyParser (JSON schema for the file's declared version, plus
yamllint) and collect its messages through its LOGGING format, which hands us
structured records (file, line, col, yaml path, message) instead of printed
text. Two things are fixed around it:
- yamllint is a console script of our own venv; the parser runs it by name, so
  the venv's bin/ goes on PATH first. If it is still missing, lint is skipped
  with one warning, never a traceback.
- the parser's line lookup shells out to Go `yq`; we turn that off and locate
  lines from PyYAML's node marks (see yaml_source.line_for_path).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from instructlab.schema.taxonomy import TaxonomyMessageFormat, TaxonomyParser, TaxonomyReadingException

from lab_ray.taxonomy.yaml_source import YamlSource

_LOGGER = "instructlab.schema"


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _venv_tools_on_path():
    bindir = str(Path(sys.executable).parent)
    old = os.environ.get("PATH", "")
    if bindir not in old.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


class SchemaValidator:
    def __init__(self, schema_version: int = 0, yamllint_config: str | None = None):
        self.parser = TaxonomyParser(
            schema_version=schema_version,
            yamllint_config=yamllint_config,
            message_format=TaxonomyMessageFormat.LOGGING,
        )
        self.parser.yq_available = False  # lines come from our own YAML marks
        self._yamllint_missing_reported = False

    def validate(self, src: YamlSource) -> int:
        """Add the package's errors/warnings to src.problems; returns the file's version."""
        collector = _Collector()
        logger = logging.getLogger(_LOGGER)
        logger.addHandler(collector)
        old_propagate, logger.propagate = logger.propagate, False
        old_level = logger.level
        logger.setLevel(logging.INFO)
        try:
            with _venv_tools_on_path():
                have_yamllint = shutil.which("yamllint") is not None
                taxonomy = self.parser.parse(src.path)
        except TaxonomyReadingException as e:
            cause = e.__cause__ or e
            src.error(f"instructlab-schema could not read the file: {cause}")
            return 0
        finally:
            logger.removeHandler(collector)
            logger.propagate = old_propagate
            logger.setLevel(old_level)
        if not have_yamllint and not self._yamllint_missing_reported:
            self._yamllint_missing_reported = True
            src.warning("yamllint is not installed in this environment; lint checks skipped (pip install yamllint)")
        for rec in collector.records:
            self._record_to_problem(rec, src)
        return taxonomy.version

    @staticmethod
    def _record_to_problem(rec: logging.LogRecord, src: YamlSource) -> None:
        args = rec.args if isinstance(rec.args, tuple) else ()
        severity = "error" if rec.levelno >= logging.ERROR else "warning"
        fmt = str(rec.msg)
        if fmt.startswith("%s:%s:%s [%s] ") and len(args) >= 4:
            _, line, _col, yaml_path, *rest = args
            message = fmt[len("%s:%s:%s [%s] "):] % tuple(rest) if rest else fmt[len("%s:%s:%s [%s] "):]
            found = src.line_of(str(yaml_path))
            text = f"{yaml_path}: {message}" if yaml_path and yaml_path != "." else message
            src.problems.append(_problem(text, src, found or _int(line), severity))
        elif fmt.startswith("%s:%s:%s ") and len(args) >= 3:
            _, line, _col, *rest = args
            message = fmt[len("%s:%s:%s "):] % tuple(rest) if rest else fmt[len("%s:%s:%s "):]
            if message.startswith("could not run"):
                return  # tool problems are reported once by validate()
            src.problems.append(_problem(message, src, _int(line), severity))
        elif not fmt.startswith("could not run"):
            src.problems.append(_problem(rec.getMessage(), src, None, severity))


def _problem(message: str, src: YamlSource, line: int | None, severity: str):
    from lab_ray.errors import Problem

    return Problem(message, src.display, line, severity)


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
