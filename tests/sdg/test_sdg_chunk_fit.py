"""Knowledge chunks must fit the teacher's context with the prompt and the answer."""

from __future__ import annotations

import pytest

from lab_ray.config import load_config
from lab_ray.errors import ConfigError
from lab_ray.sdg.plan import check_chunks_fit


def test_chunks_too_large_for_the_teacher_are_a_config_error_naming_the_keys():
    cfg = load_config(["sdg.knowledge.teacher_context_tokens=1024", "sdg.knowledge.chunk_tokens=512"])
    with pytest.raises(ConfigError, match=r"sdg.knowledge.chunk_tokens \(512\).*1024 tokens"):
        check_chunks_fit(cfg)


def test_defaults_fit_and_the_context_is_read_from_the_embedded_teacher():
    cfg = load_config([])
    check_chunks_fit(cfg)  # 8192-token SmolLM2: fits
    too_big = load_config(["sdg.knowledge.chunk_tokens=8000"])
    with pytest.raises(ConfigError, match="8192"):
        check_chunks_fit(too_big)


def test_a_remote_teacher_of_unknown_context_is_not_checked_up_front():
    cfg = load_config(["teacher=openai", "teacher.model=some-remote-model", "sdg.knowledge.chunk_tokens=100000"])
    check_chunks_fit(cfg)
