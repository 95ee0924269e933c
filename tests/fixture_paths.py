"""Where the shared LAB fixtures live (../shared/fixtures beside the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
COMMUNITY_TAXONOMY = SHARED_FIXTURES / "instructlab-taxonomy"
KNOWLEDGE_DOCS = SHARED_FIXTURES / "knowledge-docs"


def requires_fixtures():
    return pytest.mark.skipif(not COMMUNITY_TAXONOMY.is_dir(), reason="../shared/fixtures is absent")
