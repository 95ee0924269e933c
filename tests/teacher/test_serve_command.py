"""`lab-ray teacher serve` argument handling (the deployment itself is covered by test_serve_cpu.py)."""

from __future__ import annotations


def test_serve_rejects_positional_arguments(cli):
    code, out, err = cli("teacher", "serve", "now")
    assert code != 0 and "key=value overrides only" in err


def test_serve_refuses_the_external_openai_backend(cli):
    code, out, err = cli("teacher", "serve", "teacher=openai")
    assert code != 0 and "external server" in err
