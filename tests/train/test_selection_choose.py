"""Checkpoint choice: the metric decides, held-out loss breaks ties, missing values lose."""

import math

import pytest

from lab_ray.errors import ConfigError
from lab_ray.train.selection import choose


def test_metric_decides_in_either_direction():
    s = {"a": {"m": 0.5}, "b": {"m": 0.7}, "c": {"m": 0.6}}
    assert choose(s, "m", "max") == "b"
    assert choose(s, "m", "min") == "a"


def test_ties_on_the_eval_score_go_to_the_lowest_heldout_loss():
    s = {"a": {"score": 0.6, "heldout_loss": 1.9},
         "b": {"score": 0.6, "heldout_loss": 1.2},
         "c": {"score": 0.6, "heldout_loss": 1.5},
         "d": {"score": 0.5, "heldout_loss": 0.1}}
    assert choose(s, "score", "max") == "b"
    # Without a tie-breaker, the latest of the tied wins.
    assert choose(s, "score", "max", tiebreak="") == "c"


def test_nan_and_missing_lose_and_all_missing_goes_to_the_latest():
    s = {"a": {"m": math.nan}, "b": {"m": 0.2}, "c": {}}
    assert choose(s, "m", "max") == "b"
    assert choose({"a": {}, "b": {"m": math.nan}}, "m", "max") == "b"


def test_a_tie_with_no_tiebreak_values_goes_to_the_latest():
    s = {"a": {"m": 1.0}, "b": {"m": 1.0, "heldout_loss": math.nan}}
    assert choose(s, "m", "min") == "b"


def test_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="train.selection.mode"):
        choose({"a": {"m": 1.0}}, "m", "best")
