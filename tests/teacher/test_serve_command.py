"""`lab-ray teacher serve` argument handling (the deployment itself is covered by test_serve_cpu.py)."""

from __future__ import annotations


def test_serve_rejects_positional_arguments(cli):
    code, out, err = cli("teacher", "serve", "now")
    assert code != 0 and "usage: lab-ray teacher serve [key=value ...]" in err


def test_serve_refuses_the_external_openai_backend(cli):
    code, out, err = cli("teacher", "serve", "teacher=openai")
    assert code != 0 and "external server" in err


def test_serve_subprocess_answers_with_the_key_and_stops_cleanly_on_sigterm(tmp_path):
    """The command a user runs: a real process, a real port on 127.0.0.1, a real stop."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx
    import pytest

    from teacher_net import free_port

    port, key = free_port(), "serve-cmd-key"
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "lab_ray.cli", "teacher", "serve", f"teacher.port={port}",
                              f"teacher.api_key={key}", "ray.num_cpus=2"],
                             stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "CI": "1"})
    try:
        deadline = time.monotonic() + 600
        while "serving at" not in log.read_text():
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        line = next(l for l in log.read_text().splitlines() if "serving at" in l)
        assert f"http://127.0.0.1:{port}/v1" in line and "API key required" in line
        body = {"model": "SmolLM2-135M-Instruct", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        p.send_signal(signal.SIGTERM)
        assert p.wait(180) == 0, log.read_text()[-3000:]
        assert "stopping the teacher" in log.read_text()
        with pytest.raises(httpx.HTTPError):
            httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(60)


def test_serve_beyond_loopback_without_an_api_key_is_refused(cli, monkeypatch):
    monkeypatch.delenv("LAB_RAY_TEACHER_API_KEY", raising=False)
    for host in ("0.0.0.0", "10.1.2.3", "teacher.internal"):
        code, out, err = cli("teacher", "serve", f"teacher.host={host}")
        assert code != 0 and "Traceback" not in err
        assert f"teacher.host={host} exposes the teacher" in err and "LAB_RAY_TEACHER_API_KEY" in err


def test_loopback_hosts_need_no_key():
    from lab_ray.teacher.app import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))
