"""Padding-free packing: first-fit-decreasing bins with position ids reset per sample.

Samples are packed into bins of at most `capacity` tokens (FFD over a
streaming window, so memory stays bounded). Each bin is one row; position ids
restart at 0 for every sample, and transformers' masking turns that into a
block-diagonal causal mask (no attention across samples). Targets are already
shifted per sample, so no token predicts its neighbour sample's first token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from lab_ray.train.tokenize import IGNORE


def ffd_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into bins whose lengths sum <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample of {n} tokens exceeds bin capacity {capacity}")
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(capacity - n)
    return bins


@dataclass
class Bin:
    input_ids: list[int]
    targets: list[int]
    position_ids: list[int]
    ids: list[str]  # sample ids packed here (for accounting and tests)

    def __len__(self) -> int:
        return len(self.input_ids)


def _bin(samples: list[dict]) -> Bin:
    b = Bin([], [], [], [])
    for s in samples:
        b.input_ids += list(s["input_ids"])
        b.targets += list(s["targets"])
        b.position_ids += list(range(len(s["input_ids"])))
        b.ids.append(str(s["id"]))
    return b


def pack_stream(rows: Iterable[dict], capacity: int, window: int = 256, split_samples: bool = False) -> Iterator[Bin]:
    """Bins from a stream of tokenised rows (dicts with id, input_ids, targets)."""
    if split_samples:  # plain concatenation, cut every `capacity` tokens
        cur = Bin([], [], [], [])
        for s in rows:
            ids, tg = list(s["input_ids"]), list(s["targets"])
            pos = 0
            while pos < len(ids):
                take = min(capacity - len(cur), len(ids) - pos)
                cur.input_ids += ids[pos:pos + take]
                cur.targets += tg[pos:pos + take]
                cur.position_ids += list(range(take))
                cur.ids.append(str(s["id"]))
                pos += take
                if len(cur) == capacity:
                    yield cur
                    cur = Bin([], [], [], [])
        if len(cur):
            yield cur
        return
    # Streaming FFD: each window of samples is placed, longest first, into the first open
    # bin with room. Bins stay open across windows until nothing seen could still fit,
    # and at most `window` stay open, so memory is bounded and the tail of one window
    # fills the gaps left by the previous one.
    buf: list[dict] = []
    open_bins: list[list] = []  # [free tokens, samples]

    def place() -> Iterator[Bin]:
        buf.sort(key=lambda s: -len(s["input_ids"]))
        smallest = len(buf[-1]["input_ids"])
        for s in buf:
            n = len(s["input_ids"])
            if n > capacity:
                raise ValueError(f"sample of {n} tokens exceeds bin capacity {capacity}")
            for b in open_bins:
                if n <= b[0]:
                    b[0] -= n
                    b[1].append(s)
                    break
            else:
                open_bins.append([capacity - n, [s]])
        buf.clear()
        open_bins.sort(key=lambda b: b[0])  # fullest first
        done = sum(1 for b in open_bins if b[0] < smallest)  # nothing this small fits any more
        done = max(done, len(open_bins) - window)  # bound the open bins
        for b in open_bins[:done]:
            yield _bin(b[1])
        del open_bins[:done]

    for s in rows:
        if len(s["input_ids"]) == 0:  # over-length rows arrive empty; they were counted upstream
            continue
        buf.append(s)
        if len(buf) >= window:
            yield from place()
    if buf:
        yield from place()
    for b in open_bins:
        yield _bin(b[1])


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor
    real_tokens: int  # tokens belonging to samples (not padding)
    label_tokens: int  # tokens that carry a loss

    @property
    def computed_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def real_fraction(self) -> float:
        return self.real_tokens / max(1, self.computed_tokens)


def collate(bins: list[Bin], pad_id: int, width: int | None = None) -> MicroBatch:
    """Stack bins, padding each to the longest (or `width`); padding is its own masked pseudo-sample."""
    width = width or max(len(b) for b in bins)
    ids, tgt, pos = [], [], []
    for b in bins:
        pad = width - len(b)
        ids.append(b.input_ids + [pad_id] * pad)
        tgt.append(b.targets + [IGNORE] * pad)
        pos.append(b.position_ids + list(range(pad)))
    t = torch.tensor(tgt, dtype=torch.long)
    return MicroBatch(torch.tensor(ids, dtype=torch.long), t, torch.tensor(pos, dtype=torch.long),
                      sum(len(b) for b in bins), int((t != IGNORE).sum()))


def empty_batch(pad_id: int, width: int = 8) -> MicroBatch:
    """A no-loss batch for a worker whose data ran out, so collectives stay matched."""
    mb = collate([Bin([pad_id] * width, [IGNORE] * width, list(range(width)), [])], pad_id)
    mb.real_tokens = 0
    return mb


def micro_batches(bins: Iterable[Bin], size: int, pad_id: int) -> Iterator[MicroBatch]:
    group: list[Bin] = []
    for b in bins:
        group.append(b)
        if len(group) == size:
            yield collate(group, pad_id)
            group = []
    if group:
        yield collate(group, pad_id)
