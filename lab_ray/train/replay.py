"""Replay buffer: a streaming, weighted, seeded interleave of two row streams.

Why not `Dataset.mix` (present in Ray 2.60): it interleaves whole blocks, has
no seed, and its stopping rules either stop on the shorter input or finish
with a tail drawn only from the longer one. LAB's replay wants row-level
mixing at a fixed ratio for as long as the *new* data lasts, with the replay
buffer cycled if it runs short. So each train worker mixes its own shard of
the new data with its own slice of the replay dataset here, holding one row
of each at a time.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Iterator


def mix(primary: Iterable[dict], replay_factory: Callable[[], Iterable[dict]], ratio: float,
        seed: int) -> Iterator[dict]:
    """Yield rows of `primary`, with each output row drawn from replay with probability `ratio`.

    Ends when `primary` is exhausted. `replay_factory()` returns a fresh pass
    over the replay rows; it is called again if a pass runs out (never more
    than once per exhausted pass, and not at all when ratio is 0). Output is
    a pure function of the inputs' order and `seed`.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"replay ratio must be in [0, 1), got {ratio}")
    rng = random.Random(seed)
    prim = iter(primary)
    rep: Iterator[dict] | None = None
    replay_empty = ratio == 0.0
    while True:
        if not replay_empty and rng.random() < ratio:
            row = None
            for _attempt in range(2):  # the current pass, then one fresh pass
                if rep is None:
                    rep = iter(replay_factory())
                row = next(rep, None)
                if row is not None:
                    break
                rep = None
            if row is None:
                replay_empty = True  # no replay rows at all: carry on with new data only
            else:
                yield row
                continue
        row = next(prim, None)
        if row is None:
            return
        yield row


def worker_slice(rows: Iterable[dict], rank: int, world: int) -> Iterator[dict]:
    """This worker's disjoint share of an unsplit replay stream (by id hash, stable across passes)."""
    import zlib

    for r in rows:
        if world <= 1 or zlib.crc32(str(r["id"]).encode()) % world == rank:
            yield r
