"""Knowledge documents resolve at exactly the leaf's commit, through the offline map."""

from __future__ import annotations

from taxonomy_builders import ATTRIBUTION, git, knowledge_yaml, write

from lab_ray.config import load_config
from lab_ray.taxonomy.loader import load_taxonomy


def test_git_repo_is_read_at_the_leafs_commit(tmp_path, docs_repo, repo_map_config):
    repo, commit = docs_repo
    # later history and uncommitted edits must not leak into the snapshot
    (repo / "doc.md").write_text("# Doc\n\nSecond version.\n")
    git(repo, "commit", "-qam", "v2")
    (repo / "doc.md").write_text("dirty working tree\n")
    tax_root = tmp_path / "tax"
    write(tax_root, "knowledge/topic", knowledge_yaml("https://example.org/docs.git", commit, ("*.md", "sub/**/*.md")))
    write(tax_root, "knowledge/topic", ATTRIBUTION.format(license="CC-BY-SA-4.0"), name="attribution.txt")
    cfg = load_config([], str(repo_map_config({"https://example.org/docs": repo})))
    tax = load_taxonomy(tax_root, cfg.taxonomy)
    assert not tax.errors, tax.errors
    docs = tax.documents["knowledge/topic"]
    assert [d.relpath for d in docs] == ["doc.md", "sub/more.md"]
    assert docs[0].read_text() == "# Doc\n\nFirst version of the document.\n"
    assert all(d.commit_verified for d in docs)
    assert tax.leaf("knowledge/topic").licenses == ["CC-BY-SA-4.0"]


def test_local_path_repo_without_mapping(tmp_path, docs_repo):
    repo, commit = docs_repo
    tax_root = tmp_path / "tax"
    write(tax_root, "knowledge/topic", knowledge_yaml(str(repo), commit))
    write(tax_root, "knowledge/topic", ATTRIBUTION.format(license="MIT"), name="attribution.txt")
    cfg = load_config([f"taxonomy.documents.cache_dir={tmp_path / 'cache'}"])
    tax = load_taxonomy(tax_root, cfg.taxonomy)
    assert not tax.errors, tax.errors
    assert [d.relpath for d in tax.documents["knowledge/topic"]] == ["doc.md"]


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF with a text object, written by hand (no PDF writer needed)."""
    stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def test_pdf_and_unsupported_formats(tmp_path, repo_map_config):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "paper.pdf").write_bytes(_minimal_pdf("Hello PDF knowledge"))
    (plain / "slides.pptx").write_bytes(b"PK\x03\x04")
    tax_root = tmp_path / "tax"
    write(tax_root, "knowledge/topic", knowledge_yaml("https://example.org/p", "abc123", ("*.pdf", "*.pptx")))
    write(tax_root, "knowledge/topic", ATTRIBUTION.format(license="CC0-1.0"), name="attribution.txt")
    cfg = load_config([], str(repo_map_config({"https://example.org/p": plain})))
    tax = load_taxonomy(tax_root, cfg.taxonomy)
    docs = {d.relpath: d for d in tax.documents["knowledge/topic"]}
    assert docs["paper.pdf"].read_text().strip() == "Hello PDF knowledge"
    assert not docs["paper.pdf"].commit_verified  # a plain folder cannot prove its commit
    import pytest

    from lab_ray.taxonomy.documents import DocumentProblem

    with pytest.raises(DocumentProblem, match="unsupported format .pptx"):
        docs["slides.pptx"].read_text()
