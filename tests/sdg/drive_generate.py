"""`lab-ray generate` with a python test teacher, for subprocess tests (resume after SIGKILL).

    python drive_generate.py '<teacher spec JSON>' key=value ...

The CLI deploys the real teacher; this driver runs the same pipeline entry
point (`run_generation`) with the given test teacher spec, and prints one
`RESULT {json}` line at the end.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from lab_ray.config import load_config
    from lab_ray.sdg.pipeline import run_generation
    from lab_ray.teacher.app import init_ray

    spec = json.loads(argv[0])
    cfg = load_config(argv[1:])
    init_ray(cfg.ray)
    result = run_generation(cfg, spec)
    print("RESULT " + json.dumps({"tasks": result.tasks, "resumed": result.resumed,
                                  "kept": result.stats["total"]["kept"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
