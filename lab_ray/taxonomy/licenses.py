"""Licence of a knowledge leaf's documents, checked against an SPDX allowlist.

The LAB paper generates only from documents whose licence permits it. The
licence comes from config (taxonomy.documents.licenses[leaf]) or from the
leaf's attribution.txt, as the community taxonomy writes it:
`License of the work: CC-BY-SA-4.0` (one line per attributed work).
"""

from __future__ import annotations

import re
from pathlib import Path

from lab_ray.errors import Problem

_LICENSE_LINE = re.compile(r"^\s*licen[sc]e(?: of the work)?\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def normalize_spdx(name: str) -> str:
    """'CC BY-SA 4.0' / 'cc-by-sa-4.0' -> 'CC-BY-SA-4.0' style key for comparison."""
    return re.sub(r"[\s_]+", "-", name.strip()).upper()


def licenses_from_attribution(leaf_dir: Path) -> list[str]:
    path = leaf_dir / "attribution.txt"
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    return [m.group(1) for m in _LICENSE_LINE.finditer(text)]


def check_license(leaf_path: str, leaf_dir: Path, display: str, cfg) -> tuple[list[str], list[Problem]]:
    """Returns (licences found, problems). cfg is taxonomy.documents."""
    if leaf_path in cfg.license_opt_out:
        return [], []
    configured = cfg.licenses.get(leaf_path) if cfg.licenses else None
    found = [configured] if configured else licenses_from_attribution(leaf_dir)
    allowed = {normalize_spdx(x) for x in cfg.allowed_licenses}
    hint = (f"allowed: {', '.join(cfg.allowed_licenses)}; set taxonomy.documents.licenses or list the leaf "
            "in taxonomy.documents.license_opt_out to take responsibility for it")
    if not found:
        return [], [Problem(f"knowledge leaf {leaf_path} has no licence: add 'License of the work: <SPDX id>' "
                            f"to attribution.txt ({hint})", display)]
    bad = [x for x in found if normalize_spdx(x) not in allowed]
    if bad:
        return found, [Problem(f"licence {bad[0]!r} of knowledge leaf {leaf_path} is not in the allowlist ({hint})",
                               display)]
    return found, []
