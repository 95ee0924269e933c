"""Teacher test constants and a free port. Its own module name, not conftest:
every test directory has a conftest.py, and in a whole-suite run `import conftest`
finds whichever was imported last."""

from __future__ import annotations

import socket

API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
