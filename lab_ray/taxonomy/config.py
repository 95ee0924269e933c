"""Configuration of the taxonomy layer (section `taxonomy` of the config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List


@dataclass
class DocumentsConfig:
    # Where knowledge repos are cloned / checked out (one dir per repo+commit).
    cache_dir: str = "~/.cache/lab-ray/documents"
    # Offline mapping: repo URL (as written in qna.yaml, .git optional) -> local
    # directory. A git directory is checked out at the leaf's commit; a plain
    # directory is taken as that commit's snapshot.
    repo_map: Dict[str, str] = field(default_factory=dict)
    # Clone repos that are not mapped (needs network); off means a clear error.
    allow_clone: bool = True
    # SPDX ids a document may carry; the list itself is in conf/defaults.yaml
    # (empty here: a config built without the defaults allows nothing).
    allowed_licenses: List[str] = field(default_factory=list)
    # Leaf path -> SPDX id, used when attribution.txt is missing or wrong.
    licenses: Dict[str, str] = field(default_factory=dict)
    # Leaf paths whose licence is not checked (the user takes responsibility).
    license_opt_out: List[str] = field(default_factory=list)
    # Largest document read, in bytes; larger ones are refused, not truncated.
    max_document_bytes: int = 20_000_000


@dataclass
class TaxonomyConfig:
    path: str = "taxonomy"
    # Git ref to diff against for `taxonomy diff` / generation; "empty" = whole tree.
    base: str = "empty"
    # 0 = validate each file against the schema version it declares.
    schema_version: int = 0
    yamllint_config: str = "{extends: relaxed, rules: {line-length: disable}}"
    # A qna.yaml larger than this is refused before parsing (they are small).
    max_file_bytes: int = 2_000_000
    # Check knowledge documents (resolve repo/commit/patterns, licence) in validate.
    check_documents: bool = True
    documents: DocumentsConfig = field(default_factory=DocumentsConfig)
