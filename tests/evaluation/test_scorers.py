"""Each shipped scorer on real cases, pass@k against hand-computed values, and scorer config errors."""

from __future__ import annotations

import math

import pytest

from sft_exp.errors import ConfigError
from sft_exp.evaluation.scorers import (
    ExactMatch,
    NumericAnswer,
    RegexMatch,
    build_scorer,
    exact_match,
    extract_number,
    pass_at_k,
    scorer_name,
    substring,
    token_f1,
)


def test_exact_match_normalizes_whitespace_and_case_only_by_default():
    assert exact_match("  Paris \n", "paris") == 1.0
    assert exact_match("Paris.", "Paris") == 0.0
    assert ExactMatch(ignore_punctuation=True)("Paris.", "paris") == 1.0
    assert ExactMatch(ignore_case=False)("Paris", "paris") == 0.0
    assert exact_match("03511", "3511") == 0.0


@pytest.mark.parametrize("text, number", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", 18.0),
    ("so 1,234 apples\n#### 1,234", 1234.0),
    ("The answer is 42.", 42.0),
    ("first 3 then -7.5", -7.5),
    ("#### $70,000", 70000.0),
    ("no digits here", None),
])  # fmt: skip
def test_numbers_are_read_after_the_last_marker_else_the_last_number(text, number):
    assert extract_number(text) == number


def test_numeric_answer_compares_the_final_numbers():
    gsm8k_reference = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18"
    scorer = NumericAnswer()
    assert scorer("9 eggs at $2 each is $18.", gsm8k_reference) == 1.0
    assert scorer("#### 18.0", gsm8k_reference) == 1.0
    assert scorer("She keeps 9 eggs", gsm8k_reference) == 0.0
    assert scorer("", gsm8k_reference) == 0.0
    boxed = NumericAnswer(pattern=r"\\boxed\{([^}]*)\}")
    assert boxed(r"so \boxed{18} and 20", gsm8k_reference) == 1.0
    assert boxed("18", gsm8k_reference) == 0.0  # the pattern is required when given
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        NumericAnswer(pattern="(")


def test_regex_match_with_a_pattern_or_the_reference_as_pattern():
    assert RegexMatch(pattern=r"\bcat\b")("a cat sat", "ignored") == 1.0
    assert RegexMatch(pattern=r"\bcat\b")("concatenate", "ignored") == 0.0
    assert RegexMatch()("answer: 12", r"\d+") == 1.0
    assert RegexMatch(fullmatch=True)("answer: 12", r"\d+") == 0.0
    assert RegexMatch(fullmatch=True)(" 12 ", r"\d+") == 1.0


def test_substring_and_token_f1():
    assert substring("The capital is PARIS, France", "paris") == 1.0
    assert substring("London", "paris") == 0.0
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("dog", "the cat sat") == 0.0
    # 2 common words of 4 predicted and 3 expected: P=1/2, R=2/3, F1=4/7
    assert token_f1("the cat ran away", "The cat sat.") == pytest.approx(4 / 7)


def test_math_verify_when_installed():
    pytest.importorskip("math_verify")
    scorer = build_scorer("math_verify", "evals.t.scorer")
    assert scorer(r"The answer is $\frac{1}{2}$", "$0.5$") == 1.0
    assert scorer(r"The answer is $\frac{1}{3}$", "$0.5$") == 0.0


def test_pass_at_k_matches_the_combinatorial_formula():
    # n=5 samples, c=2 correct: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 1, 5) == 1.0
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def _my_scorer(output, reference, bonus=0.0):
    return float(output == reference) + bonus


class _MyScorer:
    def __init__(self, weight=1.0):
        self.weight = weight

    def __call__(self, output, reference):
        return self.weight * (output == reference)


NOT_CALLABLE = 3


def test_scorers_from_config_names_targets_and_classes():
    assert build_scorer("exact_match", "w")("A", "a") == 1.0
    assert scorer_name(build_scorer("exact_match", "w")) == "exact_match"
    assert scorer_name(build_scorer({"name": "numeric"}, "w")) == "accuracy"
    plain = build_scorer({"_target_": f"{__name__}._my_scorer"}, "w")
    assert plain("x", "x") == 1.0 and scorer_name(plain) == "_my_scorer"
    with_args = build_scorer({"_target_": f"{__name__}._my_scorer", "bonus": 0.5}, "w")
    assert with_args("x", "y") == 0.5 and scorer_name(with_args) == "_my_scorer"
    assert build_scorer({"_target_": f"{__name__}._MyScorer", "weight": 0.25}, "w")("x", "x") == 0.25


@pytest.mark.parametrize("spec, message", [
    ("exakt_match", "unknown scorer 'exakt_match'"),
    ({"_target_": "no_such_module.score"}, "cannot import the scorer module 'no_such_module'"),
    ({"_target_": f"{__name__}.nope"}, "has no 'nope'"),
    ({"_target_": f"{__name__}.NOT_CALLABLE"}, "is a int, not a callable"),
    ({"_target_": f"{__name__}._MyScorer", "wait": 1}, "cannot build _MyScorer"),
    ({"name": "numeric", "pattern": "("}, "not a valid regular expression"),
])  # fmt: skip
def test_bad_scorer_configs_name_the_key(spec, message):
    with pytest.raises(ConfigError, match="evals.gsm8k.scorer") as err:
        build_scorer(spec, "evals.gsm8k.scorer")
    assert message in str(err.value) or message in str(err.value.__cause__ or "")
