"""The model under evaluation, loaded once: choice likelihoods and answers.

Knowledge is scored MMLU-style by the log-likelihood the model gives each
choice after the question (no parsing of generated text, so even a tiny
model gets a meaningful score); skills need generated answers, which the
teacher then judges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StudentModel:
    model: object
    tokenizer: object
    name: str

    @classmethod
    def load(cls, path: str) -> "StudentModel":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lab_ray.embedded_model import resolve_model

        local = resolve_model(path)
        tokenizer = AutoTokenizer.from_pretrained(local)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(local, dtype=torch.float32)
        model.eval()
        return cls(model, tokenizer, path)

    def _prompt_ids(self, question: str, system: str | None = None) -> list[int]:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    @torch.no_grad()
    def choice_logprobs(self, question: str, choices: list[str], system: str | None = None) -> list[float]:
        """Sum of token log-probs of each choice as the assistant's reply, one forward pass."""
        prompt = self._prompt_ids(question, system)
        rows = [prompt + self.tokenizer.encode(c, add_special_tokens=False) for c in choices]
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
            scores.append(float(logp[i, positions, targets].sum()))
        return scores

    @torch.no_grad()
    def answer(self, questions: list[str], max_new_tokens: int = 128, system: str | None = None) -> list[str]:
        """Greedy answers (deterministic, so base and trained compare fairly)."""
        prompts = [self._prompt_ids(q, system) for q in questions]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding for generation
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad)
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
