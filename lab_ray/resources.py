"""Where lab-ray's own data files live (the conf/ tree: defaults, profiles, prompts)."""

from __future__ import annotations

import os
from pathlib import Path


def conf_dir() -> Path:
    """$LAB_RAY_CONF, else conf/ of the checkout (editable install), else the copy
    packaged in the wheel (lab_ray/_conf)."""
    env = os.environ.get("LAB_RAY_CONF")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    checkout = here.parent / "conf"
    return checkout if (checkout / "defaults.yaml").is_file() else here / "_conf"
