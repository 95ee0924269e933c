"""Configuration of the run report (section `report`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    # Example samples shown per leaf, and how much of each message is shown.
    examples_per_leaf: int = 2
    max_example_chars: int = 600
    # PNG resolution.
    dpi: int = 100
