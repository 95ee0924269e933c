"""The model under evaluation, loaded once: choice likelihoods and answers.

Knowledge is scored MMLU-style by the log-likelihood the model gives each
choice after the question (no parsing of generated text, so even a tiny
model gets a meaningful score); skills need generated answers, which the
teacher then judges.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from lab_ray.errors import LabRayError


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


@dataclass
class StudentModel:
    model: object
    tokenizer: object
    name: str

    @staticmethod
    def check(path: str) -> Path:
        """The local model directory, or a LabRayError saying why `path` is not a model."""
        from lab_ray.embedded_model import resolve_model

        local = Path(resolve_model(path))
        if not local.is_dir():
            raise LabRayError(f"model {path!r} is neither a model directory nor SmolLM2-135M-Instruct")
        if not (local / "config.json").exists():
            raise LabRayError(f"{local} is not a Hugging Face model directory (no config.json)")
        return local

    @classmethod
    def load(cls, path: str, tokenizer_from: str = "SmolLM2-135M-Instruct") -> StudentModel:
        """A HF model directory (checkpoint) or the embedded model's name.

        A checkpoint saved without tokenizer files borrows `tokenizer_from`'s."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lab_ray.embedded_model import resolve_model
        from lab_ray.teacher.chat_template import ensure_chat_template

        local = cls.check(path)
        tok_dir = local if _has_tokenizer(local) else Path(resolve_model(tokenizer_from))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
            ensure_chat_template(tokenizer)  # a base model without one: lab-ray's default (ChatML)
            model = AutoModelForCausalLM.from_pretrained(str(local), dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise LabRayError(f"cannot load the model at {local}: {str(e).splitlines()[0][:300]}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        return cls(model, tokenizer, path)

    def _prompt_ids(self, question: str, system: str | None = None) -> list[int]:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    @torch.no_grad()
    def choice_scores(self, question: str, choices: list[str], system: str | None = None) -> list[tuple[float, int]]:
        """(sum of token log-probs, token count) of each choice as the assistant's reply.

        The prompt runs once; its KV cache is shared by all choices, so an item
        costs about one prompt plus the choices' tokens (not one prompt per choice)."""
        prompt = self._prompt_ids(question, system)
        conts = [self.tokenizer.encode(c, add_special_tokens=False) or [self.tokenizer.eos_token_id] for c in choices]
        try:
            return self._scores_shared_prompt(prompt, conts)
        except (AttributeError, TypeError, NotImplementedError):  # a model/cache without batch expansion
            return self._scores_full(prompt, conts)

    @torch.no_grad()
    def _scores_shared_prompt(self, prompt: list[int], conts: list[list[int]]) -> list[tuple[float, int]]:
        out = self.model(input_ids=torch.tensor([prompt]), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        cache = getattr(out, "cache", None) or out.past_key_values  # transformers 5 names it `cache`
        n, width, pad = len(conts), max(len(c) for c in conts), self.tokenizer.pad_token_id
        cache.batch_repeat_interleave(n)
        ids = torch.tensor([c + [pad] * (width - len(c)) for c in conts])
        mask = torch.tensor([[1] * len(prompt) + [1] * len(c) + [0] * (width - len(c)) for c in conts])
        pos = torch.arange(len(prompt), len(prompt) + width).unsqueeze(0).expand(n, -1)
        kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                            **{kw: cache}).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        scores = []
        for i, c in enumerate(conts):
            total = float(first[c[0]])
            if len(c) > 1:
                total += float(logp[i, torch.arange(len(c) - 1), torch.tensor(c[1:])].sum())
            scores.append((total, len(c)))
        return scores

    @torch.no_grad()
    def _scores_full(self, prompt: list[int], conts: list[list[int]]) -> list[tuple[float, int]]:
        rows = [prompt + c for c in conts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        scores = []
        for i, row in enumerate(rows):
            targets = torch.tensor(row[len(prompt):])
            positions = torch.arange(len(prompt) - 1, len(row) - 1)
            scores.append((float(logp[i, positions, targets].sum()), len(targets)))
        return scores

    def choice_logprobs(self, question: str, choices: list[str], system: str | None = None) -> list[float]:
        return [s for s, _ in self.choice_scores(question, choices, system)]

    def pick(self, question: str, choices: list[str], normalize: str = "chars") -> tuple[int, list[float]]:
        """Index of the most likely choice and the (normalised) scores.

        normalize: "chars" (per character, lm-eval's acc_norm), "tokens" or "none"."""
        raw = self.choice_scores(question, choices)
        if normalize == "chars":
            scores = [s / max(1, len(c)) for (s, _), c in zip(raw, choices)]
        elif normalize == "tokens":
            scores = [s / max(1, n) for s, n in raw]
        else:
            scores = [s for s, _ in raw]
        return max(range(len(scores)), key=scores.__getitem__), scores

    @torch.no_grad()
    def answer(self, questions: list[str], max_new_tokens: int = 128, system: str | None = None,
               batch_size: int = 8) -> list[str]:
        """Greedy answers (deterministic, so base and trained compare fairly)."""
        out_texts: list[str] = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(questions), max(1, batch_size)):
            prompts = [self._prompt_ids(q, system) for q in questions[start:start + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding for generation
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=pad)
            out_texts += [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
        return out_texts
