"""User-facing errors: one clear line per problem, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, located as precisely as we can."""

    message: str
    file: str | None = None
    line: int | None = None
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        return f"{self.severity}: {where}{self.message}"


class LabRayError(Exception):
    """An error the user can fix. The CLI prints it and exits non-zero."""

    exit_code = 1

    def __init__(self, message: str = "", problems: list[Problem] | None = None):
        self.problems = list(problems or [])
        if message and not self.problems:
            self.problems = [Problem(message)]
        super().__init__(message or "; ".join(str(p) for p in self.problems))


class ConfigError(LabRayError):
    exit_code = 2


class TaxonomyError(LabRayError):
    pass


class DocumentError(LabRayError):
    pass
