"""Configuration of synthetic data generation (section `sdg`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class JudgeConfig:
    # Judges are calibrated per leaf (see sdg/calibration.py): a score of 0 is
    # what the judge gives known-bad references, 1 what it gives the leaf's own
    # seeds. Thresholds apply to that calibrated score; when a judge cannot
    # tell the references apart, to its raw P(yes) instead.
    calibrate: bool = True
    # Keep an instruction (on-topic, harmless, doable by an LLM) at or above this.
    instruction_min: float = 0.5
    # Keep a pair whose 3-point grade (1 poor, 2 fair, 3 good) is at least this.
    pair_min_score: float = 2.0
    # Knowledge: faithfulness to the chunk, relevance of the answer, question quality.
    faithfulness_min: float = 0.5
    relevance_min: float = 0.5
    question_min: float = 0.5
    # Known-good references per leaf and judge (seeds), at most.
    max_references: int = 6
    # A judge whose good and bad reference levels differ by less than this
    # fraction of its score's span (1 for P(yes), 2 for the pair judge's 1-3
    # grade) cannot tell them apart for the leaf: its raw score is used instead
    # (calibrating on noise would amplify it).
    min_separation: float = 0.05
    # Judges that write their reasons before the verdict (stage names, e.g. [judge_pair]):
    # one more request per judged row, whose text (at most rationale_max_tokens) is given to
    # the verdict, which stays the constrained choice and its probability (calibration too).
    # For teachers strong enough to reason; texts in conf/prompts/judge_rationale.yaml.
    rationale: List[str] = field(default_factory=list)
    rationale_max_tokens: int = 96
    # Rows judged in one request: the judge's fixed text (instructions, task description, for
    # knowledge the chunk) is paid once per this many rows sharing it, and the reply is one
    # verdict line per row, scored jointly (sdg/judge_batch.py). 1 = one row per request. At
    # most 8, and fewer for a judge whose joint verdicts would pass 256 (the 3-grade pair
    # judge: 5). Judges with a rationale, or whose prompt has no turn_user_batch, ask one row.
    rows_per_request: int = 1
    # A judge that cannot tell a leaf's references apart (see min_separation): "raw" judges the
    # leaf's rows on its raw score and raw threshold; "skip" does not judge them at all (no
    # tokens for a verdict that carries no signal; the score stays empty). Calibration must be on.
    unseparated: str = "raw"


@dataclass
class KnowledgeConfig:
    # Chunking with the teacher's tokenizer (tokens); chunks stay well inside
    # the teacher's context so the prompt and answer fit beside them.
    chunk_tokens: int = 320
    chunk_overlap: int = 48
    max_tokens: int = 160
    # The teacher's context in tokens; null = read it from a local teacher's model
    # config (a remote teacher's is unknown: then nothing is checked up front).
    teacher_context_tokens: Optional[int] = None
    # Knowledge augmentation (InstructLab 0.8's knowledge pipeline): before Q/A, each chunk
    # becomes one row per view - "document" (the chunk itself), "detailed_summary",
    # "extractive_summary", "atomic_facts" (one teacher request each, prompts
    # conf/prompts/knowledge_view_<name>.yaml, max_tokens above) - and Q/A is generated from
    # each view; faithfulness is still judged against the original chunk. [] = off.
    views: List[str] = field(default_factory=list)


@dataclass
class DedupConfig:
    enabled: bool = True
    # Near-duplicates: MinHash (datasketch) Jaccard over word 3-shingles.
    near_threshold: float = 0.85
    num_perm: int = 64


@dataclass
class MixingConfig:
    # Mixing recipe: taxonomy path prefix (a leaf's path, or a branch such as "knowledge" or
    # "compositional_skills/writing") -> {sampling_size, max_upsample} (README "Mixing
    # recipes"), e.g. sdg.mixing.rules.knowledge.sampling_size=200. Sizes are per leaf; the
    # longest matching prefix wins, as for sdg.personas; a leaf no rule matches gives every
    # sample once. sampling_size (InstructLab's recipe semantics): an integer is a count
    # (200 = 200 samples of the leaf), a number with a decimal point a fraction of what the
    # leaf has (0.5 = half, 2.0 = each twice), null = every sample once; fewer than the leaf
    # has is a seeded subsample, more repeats every sample and adds a seeded remainder.
    # max_upsample (default 3.0): cap on that repeat factor (40 samples asked for 200 with
    # cap 3.0 give 120); 0 = no cap. Counts are of the training split (samples not held out
    # by train.seed / train.heldout_fraction) and written to data/recipe.yaml, which
    # training follows. (Plain dicts, checked by lab_ray.sdg.mixing, so that a new prefix
    # can be given as a key=value override.)
    rules: Dict[str, Any] = field(default_factory=dict)
    # Seed of the selection (which samples a subsample keeps, which a partial repeat adds).
    seed: int = 42


@dataclass
class SDGConfig:
    # Per-leaf quota: candidate samples per leaf. 0 means scale_factor x the
    # leaf's seed examples. Never capped; with fan-out it is rounded up to whole
    # requests (ceil(quota / fan-out) requests). Accepted samples are what
    # survives the judges and dedup.
    samples_per_leaf: int = 0
    scale_factor: int = 4
    seed: int = 42
    # In-context examples per request, rotated through the leaf's examples.
    examples_per_prompt: int = 3
    # Of those, how many the response stage shows as earlier turns (null = all). They are most of
    # a response request's prompt, paid once per candidate, but they teach the leaf's answer
    # form: on the community synonyms leaf, 0 made the small teacher's answers twice as long and
    # kept fewer (bench/RESULTS.md). For leaves whose examples are long.
    response_examples: Optional[int] = None
    temperature: float = 0.8
    instruction_max_tokens: int = 64
    context_max_tokens: int = 120
    response_max_tokens: int = 160
    # Responses longer than this (teacher tokens, estimated by words) are "long".
    long_response_words: int = 60
    prompts_dir: Optional[str] = None  # default: conf/prompts
    # Persona by taxonomy path prefix (longest match wins); else `default`.
    personas: Dict[str, str] = field(default_factory=lambda: {
        "compositional_skills/writing": "creative",
        "compositional_skills/roleplay": "creative",
        "compositional_skills/extraction": "precise",
        "compositional_skills/coding": "precise",
        "compositional_skills/stem": "precise",
        "foundational_skills/reasoning": "precise",
        "knowledge": "precise",
    })
    # Fan-out: completions asked for per request (`n` on the request) by a generation
    # stage, each becoming its own row: the prompt (system text, examples, the chunk)
    # is paid once for n candidates. Stages: gen_context, gen_instruction, gen_qa
    # (missing = 1). Sibling completions that repeat one another are dropped at once
    # (reason "duplicate"), before any judge or response is paid for them.
    fanout: Dict[str, int] = field(default_factory=dict)
    # Ray Data: rows per batch sent to a stage actor, actors per stage.
    batch_size: int = 16
    actors_per_stage: int = 1
    # Memory Ray reserves for each stage actor (a stage actor is ~125 MB RSS; Ray Data
    # warns and the scheduler may overpack a node when actors request none).
    actor_memory_mb: int = 256
    # Generate only for leaves changed against taxonomy.base ("empty" = all).
    only_changed: bool = False
    leaves: List[str] = field(default_factory=list)  # explicit leaf paths (optional)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # How many samples of each leaf feed training (data/recipe.yaml): see sdg.mixing.rules.
    mixing: MixingConfig = field(default_factory=MixingConfig)
    # Generation progress (sdg/progress.py): per stage in/kept/dropped, kept per leaf vs its quota,
    # requests in flight, tokens/s, ETA; a live table on a terminal, else a line every
    # progress_interval_s. Ray Data's own progress bars are off either way.
    progress: bool = True
    # Seconds between progress lines when output is not a terminal (logs, Ray Jobs); sdg/progress.json,
    # which `lab-ray status` reads, is rewritten as often.
    progress_interval_s: float = 10.0
    # Tests and benchmarks only: "module:callable" of an in-process test teacher
    # (e.g. lab_ray.testing.fake_teachers:InstantTeacher) used instead of any endpoint.
    test_teacher: Optional[str] = None
    test_teacher_args: Dict[str, Any] = field(default_factory=dict)
