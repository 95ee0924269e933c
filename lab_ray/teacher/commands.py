"""`lab-ray teacher serve [overrides]`: deploy the teacher and keep it running."""

from __future__ import annotations

import argparse
import signal
import time

from lab_ray.errors import ConfigError


def register(sub, common) -> None:
    p = sub.add_parser("teacher", help="the teacher model (generator and judge)")
    tsub = p.add_subparsers(dest="teacher_command", metavar="ACTION")
    tsub.required = True
    serve = tsub.add_parser("serve", parents=[common], help="deploy the teacher as an OpenAI-compatible Serve app")
    serve.add_argument("args", nargs="*", metavar="key=value")
    serve.set_defaults(handler=_serve, positional_range=(0, 0), usage="teacher serve [key=value ...]")


def _serve(ns: argparse.Namespace, cfg, positional) -> int:
    from lab_ray.teacher.app import deploy, shutdown

    if cfg.teacher.backend == "openai":
        raise ConfigError("teacher.backend=openai is an external server: there is nothing to serve")
    if not cfg.teacher.http:
        raise ConfigError("teacher.http=false serves no HTTP API: `lab-ray teacher serve` is for HTTP clients")
    endpoint = deploy(cfg.teacher, cfg.ray)
    auth = " (API key required)" if endpoint.api_key else ""
    print(f"teacher {endpoint.model} serving at {endpoint.base_url}{auth}; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop is a Ctrl-C: shut Serve down cleanly
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the teacher", flush=True)
        shutdown()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt
