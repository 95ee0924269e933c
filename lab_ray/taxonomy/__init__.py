"""Taxonomy layer: qna.yaml leaves, validation, diff, documents and licences."""
