"""Constrained choice with a shared prompt cache equals the plain definition of log P(choice | prompt)."""

import pytest
import torch


@pytest.fixture(scope="module")
def engine():
    from lab_ray.embedded_model import embedded_model_dir
    from lab_ray.teacher.engine import Engine

    return Engine(str(embedded_model_dir()), threads=1)


def reference_logprob(engine, prompt_ids: list[int], choice: str) -> float:
    """Sum of log P(token) over the choice's tokens, from one forward pass of prompt + choice."""
    toks = engine.tokenizer.encode(choice, add_special_tokens=False)
    if not toks:
        return 0.0
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([prompt_ids + toks])).logits[0]
    logp = logits[len(prompt_ids) - 1: -1].float().log_softmax(-1)
    return float(logp[torch.arange(len(toks)), torch.tensor(toks)].sum())


def test_multi_token_single_token_and_empty_choices_match_the_reference(engine):
    scale = [str(i) for i in range(1, 11)]  # "10" is more than one token
    items = [
        (engine.chat_prompt([{"role": "user", "content": "Rate the answer 'Paris' to 'capital of France?'"}]), scale),
        (engine.chat_prompt([{"role": "user", "content": "Is fire cold?"}]), ["yes", "no", "", "not at all, never"]),
    ]
    assert any(len(engine.tokenizer.encode(c, add_special_tokens=False)) > 1 for c in scale)
    got = engine.choice_logprobs_many(items)
    for (prompt, choices), scores in zip(items, got):
        assert set(scores) == set(choices)
        for c in choices:
            assert scores[c] == pytest.approx(reference_logprob(engine, prompt, c), abs=2e-3), c
    assert got[1][""] == 0.0


# -- prefix sharing: a batch's shared prompt prefix is computed once -------------------------------
SYSTEM = ("You check tasks written for an AI assistant. Answer yes only if the task is of the requested "
          "kind, harmless, and possible with text alone.")


def judge_prompts(engine):
    """Three prompts sharing a judge's system text, one with other system text, one sharing nothing."""
    def chat(system, user):
        return engine.chat_prompt(([{"role": "system", "content": system}] if system else [])
                                  + [{"role": "user", "content": user}])
    return [chat(SYSTEM, "Task: List a synonym for happy."), chat(SYSTEM, "Task: Write a haiku about rain."),
            chat(SYSTEM, "Task: What is 2+2?"), chat("You are a warm writer.", "Describe a cat."),
            chat("", "Hello there")]


def test_prefix_clusters_group_prompts_by_a_shared_prefix_and_leave_each_a_token_to_run():
    from lab_ray.teacher.engine import prefix_clusters

    shared = list(range(100, 130))
    prompts = [shared + [1, 2], [7] * 40, shared + [3], shared + [1, 2], shared[:10] + [9, 9]]
    clusters = prefix_clusters(prompts, min_shared=16)
    by_member = {i: c for c in clusters for i in c.members}
    assert sorted(i for c in clusters for i in c.members) == [0, 1, 2, 3, 4]
    assert by_member[0] is by_member[2] is by_member[3] and by_member[0].prefix == shared
    assert by_member[1].prefix == [] and by_member[4].prefix == []  # alone, or sharing < 16 tokens
    # identical prompts (a request's n completions) share all but the last token
    twins = prefix_clusters([shared, shared], min_shared=16)
    assert len(twins) == 1 and twins[0].prefix == shared[:-1]
    # judge rows of two chunks: all share the system text (20 tokens), each chunk's rows 220
    system, chunk_a, chunk_b = list(range(1, 21)), [500] * 200, [600] * 200
    rows = [system + chunk + [q, 9] for chunk in (chunk_a, chunk_b) for q in (1, 2, 3)]
    by_chunk = prefix_clusters(rows, min_shared=16)
    assert sorted((len(c.prefix), sorted(c.members)) for c in by_chunk) == [(220, [0, 1, 2]), (220, [3, 4, 5])]


def test_choices_scored_on_a_shared_prefix_match_the_reference_and_report_the_reused_tokens(engine):
    from lab_ray.teacher.engine import GenUnit

    prompts = judge_prompts(engine)
    choices = ("yes", "no", "not at all, never")
    engine.judged_prefixes.entries.clear()
    got = engine.run([GenUnit(p, 1, choices=choices, top_logprobs=1) for p in prompts])
    for prompt, r in zip(prompts, got):
        for c in choices:
            assert r.choice_logprobs[c] == pytest.approx(reference_logprob(engine, prompt, c), abs=2e-3), c
    shared = next(k for k, toks in enumerate(zip(*prompts[:3])) if len(set(toks)) > 1)
    assert shared >= 16
    # the first of the three judge prompts computes the prefix; the other two reuse it
    assert sorted(r.cached_tokens for r in got[:3]) == [0, shared, shared]
    assert got[3].cached_tokens == got[4].cached_tokens == 0
    # a later batch: the judge's kept prefix serves a lone row of it (no other row to share with)
    later = engine.chat_prompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Task: Name a colour."}])
    again = engine.run([GenUnit(later, 1, choices=choices), GenUnit(prompts[4], 1, choices=choices)])
    assert again[0].cached_tokens == shared and again[1].cached_tokens == 0
    for c in choices:
        assert again[0].choice_logprobs[c] == pytest.approx(reference_logprob(engine, later, c), abs=2e-3), c


def reference_greedy(engine, prompt_ids: list[int], max_new: int) -> str:
    """transformers' own greedy generate on the prompt alone (no padding, no shared prefix)."""
    with torch.no_grad():
        out = engine.model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=max_new, do_sample=False,
                                    top_k=None, top_p=None, temperature=None,
                                    pad_token_id=engine.tokenizer.pad_token_id)
    return engine.tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)


def test_greedy_text_with_shared_prefixes_and_rows_leaving_early_equals_each_prompt_generated_alone(engine):
    """The engine's own decode loop (shared prefixes computed once, finished rows leaving the batch,
    rows of different max_tokens in one batch) gives what transformers' generate gives per prompt."""
    from lab_ray.teacher.engine import GenUnit

    prompts = judge_prompts(engine)
    prompts.append(prompts[1])  # a second completion of the same prompt (n=2)
    lengths = [20, 6, 20, 12, 20, 20]
    together = engine.run([GenUnit(p, n, temperature=0.0) for p, n in zip(prompts, lengths)])
    assert [r.text for r in together] == [reference_greedy(engine, p, n) for p, n in zip(prompts, lengths)]
    assert [r.completion_tokens <= n for r, n in zip(together, lengths)] == [True] * len(prompts)
    assert sum(r.cached_tokens > 0 for r in together) == 3  # 4 prompts share the system text; one computes it
    assert all(r.cached_tokens == 0 for r in engine.run([GenUnit(prompts[0], 4, temperature=0.0)]))


def test_a_stop_string_ends_its_row_and_a_seed_repeats_a_sampled_batch(engine):
    from lab_ray.teacher.engine import GenUnit

    prompts = judge_prompts(engine)
    free = reference_greedy(engine, prompts[3], 30)
    stop = free.split()[2]  # a word the greedy text reaches
    cut = engine.run([GenUnit(prompts[3], 30, temperature=0.0, stop=(stop,)), GenUnit(prompts[4], 30, temperature=0.0)])
    assert cut[0].text == free[: free.find(stop)] and cut[0].finish_reason == "stop"
    assert cut[1].text == reference_greedy(engine, prompts[4], 30)
    # ignore_eos (vLLM's): exactly max_tokens, the logprobs still the model's own
    exact = engine.run([GenUnit(prompts[2], 40, temperature=0.0, ignore_eos=True, top_logprobs=1)])[0]
    assert exact.completion_tokens == 40 and exact.finish_reason == "length"
    assert len(exact.logprobs) == 40 and all(t["logprob"] <= 0.0 for t in exact.logprobs)
    batch = [GenUnit(p, 12, temperature=0.9, top_p=0.9, seed=7) for p in prompts]
    assert [r.text for r in engine.run(batch)] == [r.text for r in engine.run(batch)]


def test_usage_bills_a_prompt_once_and_counts_as_cached_only_what_no_completion_of_it_computed():
    from lab_ray.teacher.engine import GenResult
    from lab_ray.teacher.serve_cpu import _envelope

    r = [GenResult("a", 1, "stop", cached_tokens=0), GenResult("b", 1, "stop", cached_tokens=37)]
    one_prompt_n2 = _envelope("chat.completion", "x", "m", [], 50, r, n=2)["usage"]
    two_prompts = _envelope("text_completion", "x", "m", [], 100, r, n=1)["usage"]
    assert one_prompt_n2["prompt_tokens_details"]["cached_tokens"] == 0
    assert two_prompts["prompt_tokens_details"]["cached_tokens"] == 37


def test_joint_verdicts_of_several_rows_are_scored_exactly(engine):
    """sdg.judge.rows_per_request on the CPU teacher: every joint verdict ("1: yes\\n2: no\\n3: yes",
    ~12 tokens, all sharing their first tokens) gets its exact log P, so each row's probability
    is its exact marginal."""
    from lab_ray.sdg import judge_batch
    from lab_ray.sdg.stages import JudgeInstruction, ROW_SCHEMA

    judge = JudgeInstruction(None, {"temperature": 0.0, "seed": 0, "judge": {"rationale": [], "rows_per_request": 3}})
    rows = [{**{c.name: c.default for c in ROW_SCHEMA.values()}, "leaf": "x", "task_description": "synonyms",
             "question": q} for q in ("Give a synonym for happy.", "Send an email to my boss.", "Synonyms of fast?")]
    _, body = judge.batch_request(rows)
    prompt = engine.chat_prompt(body["messages"])
    scores = engine.choice_logprobs(prompt, body["choices"])
    assert len(scores) == 8 and all(len(engine.tokenizer.encode(c, add_special_tokens=False)) > 6 for c in scores)
    for c in body["choices"]:
        assert scores[c] == pytest.approx(reference_logprob(engine, prompt, c), abs=2e-3), c
    per_row = judge_batch.marginals(scores, ["yes", "no"], 3)
    assert all(sum(p.values()) == pytest.approx(1.0) for p in per_row)
