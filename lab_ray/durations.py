"""How lab-ray prints a duration (progress lines, ETAs, `lab-ray status`)."""

from __future__ import annotations


def hms(seconds: float | None) -> str:
    """H:MM:SS, or "?" when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
