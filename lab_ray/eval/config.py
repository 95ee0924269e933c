"""Configuration of evaluation (section `eval`).

Knowledge is scored in the manner of MMLU-branch (teacher-written multiple
choice questions from each knowledge leaf's documents, scored by the
student's likelihood of each option); skills in the manner of MT-Bench-branch
(the leaf's held-out seed questions, the student's greedy answers judged by
the teacher on 1-10 against the seed answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class KnowledgeEvalConfig:
    # Teacher MCQ generation: chunks of the leaf's documents (teacher tokens).
    chunk_tokens: int = 200
    chunk_overlap: int = 24
    max_chunks_per_leaf: int = 5
    # Requests per chunk (each with its own deterministic seed); a weak teacher
    # gets several tries at writing a valid question.
    attempts_per_chunk: int = 3
    max_tokens: int = 160
    temperature: float = 0.7
    # In-context examples per request (built from the leaf's seed Q/A).
    examples_per_prompt: int = 2
    # Grounding check: at least this share of the correct option's content
    # words must occur in the chunk the question was written from (0 = off).
    min_answer_support: float = 0.6
    # At most this many questions per leaf (teacher-written first, then cloze).
    max_questions_per_leaf: int = 20
    # Fallback: below this many valid teacher questions, cloze-style MCQs from
    # the leaf's own seed Q/A (the seed answer vs other seed answers of the
    # leaf) are added, so every knowledge leaf has a scorable set.
    min_questions_per_leaf: int = 5
    cloze_fallback: bool = True
    # Option scoring: "chars" = log-likelihood per character (lm-eval acc_norm),
    # "tokens" = per token, "none" = summed log-likelihood.
    normalize: str = "chars"


@dataclass
class SkillsEvalConfig:
    # Student answers: greedy, at most this many new tokens.
    max_new_tokens: int = 128
    # 0 = every seed question of the leaf.
    max_questions_per_leaf: int = 0


@dataclass
class EvalConfig:
    seed: int = 1234
    # The base model the trained model is compared against.
    base_model: str = "SmolLM2-135M-Instruct"
    # `lab-ray eval` also scores the base model (and shows base vs trained).
    compare_base: bool = False
    # Student forward/generation batch size.
    batch_size: int = 8
    # Leaf paths to evaluate (empty: every leaf of the taxonomy).
    leaves: list[str] = field(default_factory=list)
    prompts_dir: str | None = None  # default: conf/prompts (eval_*.yaml)
    knowledge: KnowledgeEvalConfig = field(default_factory=KnowledgeEvalConfig)
    skills: SkillsEvalConfig = field(default_factory=SkillsEvalConfig)
