"""Checkpoint selection: pluggable scorers, one metric to optimise.

A scorer is "module:function" with fn(checkpoint_dir, phase, cfg) ->
{metric: value}, where phase is "knowledge" or "skills". All scorers' values
for every candidate go into the run's metrics; `train.selection.metric` (and
`mode` min|max) picks the winner. The held-out-loss scorer is delivered here;
evaluation scorers plug in through the same hook.
"""

from __future__ import annotations

import importlib
import json
import math

import torch
import torch.nn.functional as F

from lab_ray.errors import ConfigError
from lab_ray.training_data import KNOWLEDGE_TRAIN, SKILLS_TRAIN

# Selection group -> the training dataset it holds out from.
GROUP_DATA = {"knowledge": KNOWLEDGE_TRAIN, "skills": SKILLS_TRAIN}


def load_scorer(spec: str):
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise ConfigError(f"train.selection.scorers: {spec!r} is not of the form module:function")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"train.selection.scorers: cannot load {spec!r}: {e}")


def data_dir(cfg):
    """The run's data (or train.data_dir): a StoragePath, local or an object store."""
    from lab_ray.storage import StoragePath, run_dir

    return StoragePath(cfg.train.data_dir) if cfg.train.data_dir else run_dir(cfg) / "data"


def heldout_rows(cfg, group: str, limit: int):
    """Held-out rows of a group, read line by line (never the whole file set)."""
    from lab_ray.train.tokenize import is_heldout

    out = []
    for path in (data_dir(cfg) / GROUP_DATA[group]).glob("*.jsonl"):
        if True:  # one shard at a time
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                if is_heldout(str(row["id"]), cfg.train.seed, cfg.train.heldout_fraction):
                    out.append(row)
                    if len(out) >= limit:
                        return out
    return out


@torch.no_grad()
def heldout_loss(checkpoint_dir: str, phase: str, cfg) -> dict[str, float]:
    """Mean per-token loss on assistant tokens of the phase's held-out slice (nan if none)."""
    from transformers import AutoModelForCausalLM

    from lab_ray.train.tokenize import IGNORE, load_tokenizer, shift_targets, tokenize_conversation

    from lab_ray.errors import LabRayError
    from lab_ray.train.checkpoints import materialize

    group_dir = data_dir(cfg) / GROUP_DATA[phase]
    if not group_dir.glob("*.jsonl"):  # NaN here would silently decide the selection: say what is missing
        raise LabRayError(f"heldout_loss: no {GROUP_DATA[phase]} data readable at {group_dir} from this node "
                          "(on a cluster, run.root must be shared storage such as s3://...)")
    rows = heldout_rows(cfg, phase, int(cfg.train.selection.max_heldout_rows))
    checkpoint_dir = materialize(checkpoint_dir)
    tok = load_tokenizer(checkpoint_dir)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32)
    model.eval()
    total, count = 0.0, 0
    for row in rows:
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        ids, labels = tokenize_conversation(tok, msgs)
        targets = shift_targets(labels)
        # Longest phase max_seq_len bounds the cost; longer rows were never trained on either.
        if len(ids) > max(cfg.train.knowledge_long.max_seq_len, cfg.train.skills.max_seq_len):
            continue
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        t = torch.tensor(targets)
        total += float(F.cross_entropy(logits.float(), t, ignore_index=IGNORE, reduction="sum"))
        count += int((t != IGNORE).sum())
    return {"heldout_loss": total / count if count else math.nan, "heldout_tokens": float(count)}


def score_all(candidates: list[str], group: str, cfg) -> dict[str, dict[str, float]]:
    """Every scorer on every candidate, each in a Ray task (so a cluster can give it a GPU)."""
    import ray

    from lab_ray.train.tokenize import load_tokenizer  # noqa: F401  (fail early on import errors)

    scorers = list(cfg.train.selection.scorers)
    for s in scorers:
        load_scorer(s)

    @ray.remote(num_cpus=1, num_gpus=1 if cfg.train.use_gpu else 0)
    def _score(ckpt: str) -> dict:
        out: dict[str, float] = {}
        for s in scorers:
            out.update({k: float(v) for k, v in load_scorer(s)(ckpt, group, cfg).items()})
        return out

    results = ray.get([_score.remote(c) for c in candidates])
    return dict(zip(candidates, results))


def _value(scores: dict[str, float], key: str) -> float | None:
    v = scores.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def choose(scores: dict[str, dict[str, float]], metric: str, mode: str, tiebreak: str = "heldout_loss") -> str:
    """Best candidate by metric; nan/missing lose. Candidates tied on the metric go to the
    lowest `tiebreak` (held-out loss by default: a coarse eval score ties often), then to the
    latest; all-missing goes to the latest."""
    if mode not in ("min", "max"):
        raise ConfigError(f"train.selection.mode={mode!r}: use min or max")
    valued = {c: v for c, s in scores.items() if (v := _value(s, metric)) is not None}
    if not valued:
        return list(scores)[-1]
    best_v = min(valued.values()) if mode == "min" else max(valued.values())
    tied = [c for c, v in valued.items() if math.isclose(v, best_v, rel_tol=1e-9, abs_tol=1e-12)]
    if tiebreak and len(tied) > 1:
        broken = [(t, c) for c in tied if (t := _value(scores[c], tiebreak)) is not None]
        if broken:
            low = min(t for t, _ in broken)
            tied = [c for t, c in broken if t == low]
    return tied[-1]  # candidates are in training order
