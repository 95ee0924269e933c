"""Packing: whole samples per bin, each used once, equal steps on 2 workers, real-token fraction."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from lab_ray.train.packing import collate, empty_batch, ffd_bins, micro_batches, pack_stream
from lab_ray.train.tokenize import IGNORE


def _rows(n, seed=0, lo=5, hi=120):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        L = rng.randint(lo, hi)
        ids = [1000 + i] * L  # the sample's own token value, to trace it inside bins
        out.append({"id": f"s{i}", "input_ids": ids, "targets": ids[1:] + [IGNORE]})
    return out


def test_ffd_bins_respect_capacity_and_use_every_sample_once():
    lengths = [random.Random(1).randint(1, 100) for _ in range(500)]
    bins = ffd_bins(lengths, 128)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # FFD is near-optimal: within a few bins of the lower bound.
    assert len(bins) <= sum(lengths) / 128 * 1.05 + 2
    with pytest.raises(ValueError):
        ffd_bins([129], 128)


def test_no_sample_split_and_each_used_once_per_epoch():
    rows = _rows(300)
    bins = list(pack_stream(iter(rows), capacity=128, window=64))
    seen = [sid for b in bins for sid in b.ids]
    assert sorted(seen) == sorted(r["id"] for r in rows)  # every sample exactly once
    for b in bins:
        assert len(b) <= 128
        # Positions restart at 0 for each sample, and each sample's tokens are contiguous and complete.
        starts = [j for j, p in enumerate(b.position_ids) if p == 0]
        assert len(starts) == len(b.ids)
        for k, s in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(b)
            seg = b.input_ids[s:end]
            assert len(set(seg)) == 1
            sid = f"s{seg[0] - 1000}"
            assert sid == b.ids[k] and len(seg) == len(rows[int(sid[1:])]["input_ids"])
            assert b.targets[end - 1] == IGNORE  # no prediction across the sample boundary


def test_split_samples_when_configured():
    rows = _rows(50, lo=100, hi=300)
    bins = list(pack_stream(iter(rows), capacity=128, split_samples=True))
    assert all(len(b) == 128 for b in bins[:-1])
    assert sum(len(b) for b in bins) == sum(len(r["input_ids"]) for r in rows)
    assert any(b.ids.count(b.ids[0]) and b.ids[0] in bins[i + 1].ids for i, b in enumerate(bins[:-1]))


def test_real_token_fraction():
    rows = _rows(3, lo=10, hi=10)
    bins = list(pack_stream(iter(rows[:2]), 128)) + list(pack_stream(iter(rows[2:]), 128))
    assert [len(b) for b in bins] == [20, 10]
    mb = collate(bins, pad_id=0)
    assert mb.input_ids.shape == (2, 20)
    assert mb.real_tokens == 30 and mb.computed_tokens == 40
    assert mb.real_fraction == pytest.approx(0.75)
    assert mb.label_tokens == 30 - 3  # last token of each sample predicts nothing
    assert (mb.targets[1, 10:] == IGNORE).all()
    assert empty_batch(0).real_tokens == 0 and empty_batch(0).label_tokens == 0


def test_equal_step_counts_across_two_workers_with_unequal_shards():
    """Two gloo processes (threads) with shards of very different size run the same number of steps."""
    import os

    import torch.distributed as dist

    from lab_ray.train import loop

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    port = str(29500 + random.Random().randint(0, 2000))
    shards = [_rows(40, seed=1), _rows(7, seed=2)]
    steps = [0, 0]
    errors = []

    def worker(rank):
        try:
            store = dist.TCPStore("127.0.0.1", int(port), 2, rank == 0)
            pg = dist.ProcessGroupGloo(store, rank, 2)
            batches = micro_batches(pack_stream(iter(shards[rank]), 128, 16), 1, 0)
            while True:  # the loop's step protocol: all-reduce "have data", stop together
                mb = next(batches, None)
                t = torch.tensor([float(mb is not None)])
                pg.allreduce([t]).wait()
                if t.item() == 0:
                    break
                steps[rank] += 1
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    ths = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    [t.start() for t in ths]
    [t.join(60) for t in ths]
    assert not errors, errors
    assert steps[0] == steps[1] > len(list(pack_stream(iter(shards[1]), 128, 16)))
    assert loop._allreduce([1.0]) == [1.0]  # no process group: identity


def test_packed_forward_matches_separate_forwards():
    """Position ids reset per sample give a block-diagonal mask: packing does not change the loss."""
    from transformers import AutoModelForCausalLM

    from lab_ray.embedded_model import resolve_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("SmolLM2-135M-Instruct"), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    a, b = [int(x) for x in torch.randint(100, 5000, (9,))], [int(x) for x in torch.randint(100, 5000, (6,))]
    rows = [{"id": "a", "input_ids": a, "targets": a[1:] + [IGNORE]}, {"id": "b", "input_ids": b, "targets": b[1:] + [IGNORE]}]
    (bin_,) = list(pack_stream(iter(rows), 64))
    mb = collate([bin_], pad_id=0)
    with torch.no_grad():
        packed = model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False).logits[0]
        first = rows[0] if bin_.ids[0] == "a" else rows[1]
        second = rows[1] if bin_.ids[0] == "a" else rows[0]
        sep1 = model(input_ids=torch.tensor([first["input_ids"]])).logits[0]
        sep2 = model(input_ids=torch.tensor([second["input_ids"]])).logits[0]
    n1 = len(first["input_ids"])
    assert torch.allclose(packed[:n1], sep1, atol=1e-3)
    assert torch.allclose(packed[n1:], sep2, atol=1e-3)  # would differ if b attended to a
