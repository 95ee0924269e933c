"""Mixing recipes: how many samples of each leaf feed training.

A recipe (config `sdg.mixing`) maps taxonomy path prefixes to a rule
{sampling_size, max_upsample}; the longest matching prefix rules a leaf (as for
sdg.personas). `sampling_size` follows InstructLab's recipes: an int is a count
of samples per leaf, a float a fraction of the leaf's available samples (2.0 =
twice each); null keeps every sample once. Asking for more than a leaf has
repeats its samples, at most `max_upsample` times over (0 = no cap).

Counts are of the *training split*: a dataset's rows that training does not hold
out for checkpoint selection (lab_ray.train.tokenize.is_heldout with train.seed
and train.heldout_fraction), so the rows a phase trains on per leaf are exactly
the recipe's `taken` (before rows over the phase's max_seq_len are dropped,
which the phase's stats count).

Selection is deterministic and needs no row in the driver: with A available
and T taken, every sample is used T // A times and the T % A samples with the
smallest (sha1(seed:id), id) keys once more. The cutoff key of that remainder
is found per leaf by a Ray Data groupby over (leaf, key, id) only, and is
written into recipe.yaml with the counts, so any reader decides a row's copies
from the row itself (`copies`). Finalize plans the recipe (`plan_datasets`);
training reads it back (`selection_for`), or plans it again over the same
files when its held-out split differs from the recipe's.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Iterable

from lab_ray.errors import ConfigError

SHORT, LONG = "short", "long"


# -- rules and counts (pure) --------------------------------------------------------
def rules_from_config(mixing_cfg) -> dict[str, dict]:
    """`sdg.mixing.rules` as plain {prefix: {"sampling_size", "max_upsample"}}, validated."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(mixing_cfg.rules, resolve=True) if OmegaConf.is_config(mixing_cfg.rules) \
        else dict(mixing_cfg.rules or {})
    rules = {}
    for prefix, r in raw.items():
        if not isinstance(r, dict):
            raise ConfigError(f"sdg.mixing.rules[{prefix!r}]={r!r}: give a mapping such as "
                              f"sdg.mixing.rules.{prefix}.sampling_size=200")
        if unknown := set(r) - {"sampling_size", "max_upsample"}:
            raise ConfigError(f"sdg.mixing.rules[{prefix!r}]: unknown key(s) {sorted(unknown)}; "
                              "a rule has sampling_size and max_upsample")
        rules[str(prefix).strip("/")] = check_rule(prefix, r.get("sampling_size"), r.get("max_upsample", 3.0))
    return rules


def check_rule(prefix: str, sampling_size: Any, max_upsample: Any) -> dict:
    where = f"sdg.mixing.rules[{prefix!r}]"
    if isinstance(sampling_size, bool) or not (sampling_size is None or isinstance(sampling_size, (int, float))):
        raise ConfigError(f"{where}.sampling_size={sampling_size!r}: use an integer (a count of samples per leaf), "
                          "a number with a decimal point (a fraction of the leaf's samples) or null")
    if sampling_size is not None and (sampling_size < 0 or not math.isfinite(sampling_size)):
        raise ConfigError(f"{where}.sampling_size={sampling_size!r} must be >= 0")
    cap = float(max_upsample if max_upsample is not None else 0.0)
    if cap != 0 and cap < 1:
        raise ConfigError(f"{where}.max_upsample={max_upsample!r}: use 0 (no cap) or a repeat factor >= 1")
    return {"sampling_size": sampling_size, "max_upsample": cap}


def rule_for(leaf: str, rules: dict[str, dict]) -> str | None:
    """The longest prefix in `rules` that is `leaf` or one of its ancestors (or "" if set), else None."""
    best = None
    for prefix in rules:
        if prefix == "" or leaf == prefix or leaf.startswith(prefix + "/"):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best


def target_count(available: int, sampling_size: Any, max_upsample: float) -> int:
    """Samples to take from a leaf with `available` samples (see the module docstring)."""
    if available <= 0:
        return 0
    if sampling_size is None:
        return available
    if isinstance(sampling_size, int):
        want = int(sampling_size)
    else:  # a fraction of the available; the epsilon keeps 0.29 x 100 at 29, not 28
        want = math.floor(available * float(sampling_size) + 1e-9)
    if want > available and max_upsample:
        want = min(want, math.floor(available * max_upsample + 1e-9))
    return max(0, want)


def selection_key(seed: int, row_id: str) -> int:
    """A row's place in its leaf's seeded order (63 bits: an Arrow int64)."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{row_id}".encode()).digest()[:8], "big") >> 1


def format_cutoff(key: int, row_id: str) -> str:
    return f"{key:016x}:{row_id}"


def parse_cutoff(text: str) -> tuple[int, str]:
    key, _, row_id = text.partition(":")
    return int(key, 16), row_id


def copies(row_id: str, leaf: str, selection: dict | None) -> int:
    """How many times training uses a row of the training split, by the recipe.

    `selection` is {"seed", "leaves": {leaf: (base, cutoff or None)}} (selection_for); a
    leaf it does not name, or no selection at all, uses every row once."""
    if not selection:
        return 1
    entry = selection["leaves"].get(leaf)
    if entry is None:
        return 1
    base, cutoff = entry
    if cutoff is None:
        return base
    return base + int((selection_key(selection["seed"], row_id), str(row_id)) <= cutoff)


# -- planning over the written JSONL (Ray Data, streaming) ---------------------------
def _lines(path: str) -> Iterable[dict]:
    from lab_ray.storage import StoragePath

    for line in StoragePath(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield json.loads(line)


def _row_facts(r: dict) -> tuple[str, str, str]:
    meta = r.get("metadata") or {}
    return str(r["id"]), str(meta.get("leaf") or ""), LONG if meta.get("length") == LONG else SHORT


def _count_files(batch, heldout_seed: int, heldout_fraction: float):
    """Per (leaf, split, length) row counts of some JSONL shards (one shard read at a time)."""
    import pandas as pd

    from lab_ray.train.tokenize import is_heldout

    counts: dict[tuple, int] = {}
    for path in batch["path"]:
        for r in _lines(path):
            row_id, leaf, length = _row_facts(r)
            k = (leaf, bool(is_heldout(row_id, heldout_seed, heldout_fraction)), length)
            counts[k] = counts.get(k, 0) + 1
    return pd.DataFrame([{"leaf": k[0], "heldout": k[1], "length": k[2], "n": n} for k, n in counts.items()],
                        columns=["leaf", "heldout", "length", "n"])


def _key_files(batch, leaves: list[str], seed: int, heldout_seed: int, heldout_fraction: float):
    """(leaf, key, id, short) of the training-split rows of the leaves that need a cutoff."""
    import pandas as pd

    from lab_ray.train.tokenize import is_heldout

    wanted, out = set(leaves), []
    for path in batch["path"]:
        for r in _lines(path):
            row_id, leaf, length = _row_facts(r)
            if leaf in wanted and not is_heldout(row_id, heldout_seed, heldout_fraction):
                out.append({"leaf": leaf, "key": selection_key(seed, row_id), "id": row_id, "short": length == SHORT})
    return pd.DataFrame(out, columns=["leaf", "key", "id", "short"])


def _cutoff(group, extras: dict[str, int]):
    """One leaf: the key of its extras[leaf]-th smallest row and the short rows among the first extras."""
    import pandas as pd

    leaf = str(group["leaf"].iloc[0])
    first = group.sort_values(["key", "id"]).head(extras[leaf])
    last = first.iloc[-1]
    return pd.DataFrame([{"leaf": leaf, "cutoff": format_cutoff(int(last["key"]), str(last["id"])),
                          "extra_short": int(first["short"].sum())}])


def plan_dataset(files: list[str], rules: dict[str, dict], seed: int, heldout_seed: int,
                 heldout_fraction: float) -> dict:
    """The recipe block of one training dataset (its JSONL shards): per leaf the counts and
    the cutoff that make the selection. Two streaming passes at most: counts, then (only for
    leaves taking a part of a round) the cutoffs; nothing but counts reach the driver."""
    import ray

    from lab_ray.sdg.limits import task_pool

    block: dict[str, Any] = {"seed": int(seed), "heldout": {"seed": int(heldout_seed),
                                                            "fraction": float(heldout_fraction)},
                             "rules": rules, "samples": 0, SHORT: 0, LONG: 0, "leaves": {}}
    if not files:
        return block
    paths = ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, min(len(files), 200)))
    counts = paths.map_batches(_count_files, fn_args=(heldout_seed, float(heldout_fraction)), batch_format="pandas",
                               batch_size=None, num_cpus=0.1, compute=task_pool()).take_all()
    avail: dict[str, dict] = {}
    for c in counts:
        a = avail.setdefault(c["leaf"], {"available": 0, "heldout": 0, SHORT: 0})
        if c["heldout"]:
            a["heldout"] += int(c["n"])
        else:
            a["available"] += int(c["n"])
            a[SHORT] += int(c["n"]) if c["length"] == SHORT else 0
    extras = {}
    for leaf in sorted(avail):
        a = avail[leaf]
        prefix = rule_for(leaf, rules)
        rule = rules.get(prefix, {}) if prefix is not None else {}
        n = a["available"]
        taken = target_count(n, rule.get("sampling_size"), rule.get("max_upsample", 0.0)) if rule else n
        base, extra = (taken // n, taken % n) if n else (0, 0)
        block["leaves"][leaf] = {"rule": prefix, "available": n, "heldout": a["heldout"], "taken": taken,
                                 "repeats": base + (extra > 0), SHORT: base * a[SHORT], "cutoff": None}
        if extra:
            extras[leaf] = extra
    if extras:
        keys = paths.map_batches(_key_files, fn_args=(sorted(extras), int(seed), heldout_seed, float(heldout_fraction)),
                                 batch_format="pandas", batch_size=None, num_cpus=0.1, compute=task_pool())
        cut = keys.groupby("leaf", num_partitions=max(1, min(len(extras), 64))).map_groups(
            _cutoff, fn_args=(extras,), batch_format="pandas", num_cpus=0.1, compute=task_pool()).take_all()
        for c in cut:
            e = block["leaves"][c["leaf"]]
            e["cutoff"], e[SHORT] = c["cutoff"], e[SHORT] + int(c["extra_short"])
    for e in block["leaves"].values():
        block["samples"] += e["taken"]
        block[SHORT] += e[SHORT]
    block[LONG] = block["samples"] - block[SHORT]
    return block


def plan_datasets(cfg, data_dir) -> dict[str, dict] | None:
    """Finalize: the recipe blocks of every training dataset under data_dir, or None when
    sdg.mixing has no rules (every kept sample is used once: nothing to plan)."""
    from lab_ray.storage import StoragePath
    from lab_ray.training_data import TRAINING_DATASETS

    rules = rules_from_config(cfg.sdg.mixing)
    if not rules:
        return None
    return {name: plan_dataset([str(p) for p in (StoragePath(data_dir) / name).glob("*.jsonl")], rules,
                               int(cfg.sdg.mixing.seed), int(cfg.train.seed), float(cfg.train.heldout_fraction))
            for name in TRAINING_DATASETS}


# -- what training reads back --------------------------------------------------------
def selection_for(block: dict | None) -> dict | None:
    """The compact selection `copies` uses, from a dataset's recipe block (None: every row once)."""
    if not block or not block.get("rules"):
        return None
    leaves = {}
    for leaf, e in (block.get("leaves") or {}).items():
        n, taken = int(e["available"]), int(e["taken"])
        base = taken // n if n else 0
        cutoff = parse_cutoff(e["cutoff"]) if e.get("cutoff") else None
        if base == 1 and cutoff is None:
            continue  # every row once, as for a leaf the recipe does not name
        leaves[leaf] = (base, cutoff)
    return {"seed": int(block["seed"]), "leaves": leaves} if leaves else None


def training_selection(block: dict | None, files: list[str], heldout_seed: int,
                       heldout_fraction: float) -> tuple[dict | None, dict | None, str]:
    """The selection a training phase applies to a dataset, the recipe block it follows, and
    how it got it: "none" (no mixing rules), "recipe" (recipe.yaml as written), or "replanned"
    (the recipe's rules planned again because training holds out other rows than the recipe
    assumed: other train.seed / train.heldout_fraction)."""
    if not block or not block.get("rules"):
        return None, None, "none"
    held = block.get("heldout") or {}
    if int(held.get("seed", -1)) == int(heldout_seed) and \
            float(held.get("fraction", -1.0)) == float(heldout_fraction):
        return selection_for(block), block, "recipe"
    block = plan_dataset(files, block["rules"], int(block["seed"]), int(heldout_seed), float(heldout_fraction))
    return selection_for(block), block, "replanned"


def max_repeats(selection: dict | None) -> int:
    """Passes over a dataset that yield every copy (round j keeps the rows used more than j times)."""
    if not selection:
        return 1
    return max([1] + [base + (cutoff is not None) for base, cutoff in selection["leaves"].values()])
