"""Scorers: `scorer(output: str, reference: str) -> float` (1.0 right, 0.0 wrong, or anything between).

A task names its scorer in config by `_target_` (any importable callable or class; a class is built
with the other keys as arguments) or by a short name from SCORERS. pass@k is computed from the
per-sample scores when a task draws several samples per prompt.
"""

from __future__ import annotations

import importlib
import math
import re
import string
from collections import Counter
from functools import partial
from typing import Any, Callable, Mapping, Optional

from sft_exp.errors import ConfigError

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str, ignore_case: bool = True, ignore_punctuation: bool = False) -> str:
    """Whitespace collapsed and stripped; case-folded and punctuation removed when asked."""
    text = " ".join(str(text).split())
    if ignore_case:
        text = text.casefold()
    if ignore_punctuation:
        text = " ".join(text.translate(_PUNCTUATION).split())
    return text


class ExactMatch:
    """1.0 when output and reference are equal after normalization (whitespace, case; punctuation optional)."""

    name = "exact_match"

    def __init__(self, ignore_case: bool = True, ignore_punctuation: bool = False):
        self.ignore_case, self.ignore_punctuation = ignore_case, ignore_punctuation

    def __call__(self, output: str, reference: str) -> float:
        norm = partial(normalize_text, ignore_case=self.ignore_case, ignore_punctuation=self.ignore_punctuation)
        return float(norm(output) == norm(reference))


def exact_match(output: str, reference: str) -> float:
    """ExactMatch with its defaults, as a plain function."""
    return ExactMatch()(output, reference)


def _to_number(text: str) -> Optional[float]:
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(text)
    except ValueError:
        return None


def extract_number(text: str, pattern: Optional[str] = None) -> Optional[float]:
    """The answer of a text: `pattern`'s first group (last match), else the number after the last
    `####` (GSM8K), else the last number in the text. None when there is none."""
    if pattern is not None:
        matches = list(re.finditer(pattern, text))
        if not matches:
            return None
        match = matches[-1]
        return _to_number(match.group(1) if match.groups() else match.group(0))
    if "####" in text:
        numbers = _NUMBER.findall(text.rsplit("####", 1)[1])
        if numbers:
            return _to_number(numbers[0])
    numbers = _NUMBER.findall(text)
    return _to_number(numbers[-1]) if numbers else None


class NumericAnswer:
    """1.0 when the output's answer number equals the reference's (GSM8K `#### N`, the last number,
    or the first group of `pattern`); commas and `$` are ignored, values compared within `tolerance`."""

    name = "accuracy"

    def __init__(self, pattern: Optional[str] = None, reference_pattern: Optional[str] = None, tolerance: float = 1e-6):
        for key, value in (("pattern", pattern), ("reference_pattern", reference_pattern)):
            if value is not None:
                try:
                    re.compile(value)
                except re.error as err:
                    raise ConfigError(
                        f"NumericAnswer {key}={value!r} is not a valid regular expression ({err})"
                    ) from None
        self.pattern, self.reference_pattern, self.tolerance = pattern, reference_pattern, tolerance

    def __call__(self, output: str, reference: str) -> float:
        expected = extract_number(str(reference), self.reference_pattern)
        got = extract_number(output, self.pattern)
        if expected is None or got is None:
            return 0.0
        return float(abs(expected - got) <= self.tolerance * max(1.0, abs(expected)))


class RegexMatch:
    """1.0 when `pattern` (or, without one, the reference itself as a regex) matches the output:
    anywhere (search) or the whole stripped output (fullmatch=True)."""

    name = "regex_match"

    def __init__(self, pattern: Optional[str] = None, fullmatch: bool = False, ignore_case: bool = False):
        self.flags = re.IGNORECASE if ignore_case else 0
        self.pattern = re.compile(pattern, self.flags) if pattern is not None else None
        self.fullmatch = fullmatch

    def __call__(self, output: str, reference: str) -> float:
        regex = self.pattern or re.compile(str(reference), self.flags)
        text = output.strip()
        return float(bool(regex.fullmatch(text) if self.fullmatch else regex.search(text)))


def substring(output: str, reference: str) -> float:
    """1.0 when the normalized reference occurs in the normalized output."""
    return float(normalize_text(reference) in normalize_text(output))


def token_f1(output: str, reference: str) -> float:
    """SQuAD-style F1 over the words of output and reference (case and punctuation ignored)."""
    got = normalize_text(output, ignore_punctuation=True).split()
    expected = normalize_text(reference, ignore_punctuation=True).split()
    if not got or not expected:
        return float(got == expected)
    common = sum((Counter(got) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(expected)
    return 2 * precision * recall / (precision + recall)


class MathVerify:
    """Symbolic equivalence of the final answers (LaTeX or plain), by the `math-verify` package."""

    name = "math_verify"

    def __init__(self):
        try:
            import math_verify
        except ImportError:
            raise ConfigError("the math_verify scorer needs the math-verify package: pip install math-verify") from None
        self._parse, self._verify = math_verify.parse, math_verify.verify

    def __call__(self, output: str, reference: str) -> float:
        gold, answer = self._parse(str(reference)), self._parse(output)
        return float(bool(gold) and bool(answer) and self._verify(gold, answer))


# Short names a task may use instead of a `_target_` (scorer: numeric or scorer: {name: numeric, pattern: ...}).
SCORERS = {
    "exact_match": ExactMatch, "numeric": NumericAnswer, "regex": RegexMatch, "substring": substring,
    "token_f1": token_f1, "math_verify": MathVerify,
}  # fmt: skip


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): the chance that at least one of k samples drawn from n,
    c of them correct, is correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def scorer_name(scorer: Callable) -> str:
    """The metric name of a scorer: its `name`, else its function or class name."""
    if getattr(scorer, "name", None):
        return scorer.name
    func = scorer.func if isinstance(scorer, partial) else scorer
    return getattr(func, "__name__", type(func).__name__)


def _locate(target: str, where: str):
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ConfigError(
            f"{where}: `_target_: {target}` is not a dotted path (module.name); or use one of {sorted(SCORERS)}"
        )
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"{where}: cannot import the scorer module '{module_name}' of `_target_: {target}` ({err})"
        ) from None
    if not hasattr(obj, attr):
        raise ConfigError(f"{where}: module '{module_name}' has no '{attr}' (`_target_: {target}`)")
    return getattr(obj, attr)


def build_scorer(spec: Any, where: str) -> Callable[[str, str], float]:
    """A scorer from config: a short name, or a mapping with `_target_` or `name` plus arguments.

    A class (or a function given arguments) is built with the other keys; a plain function is used
    as it is. `where` (e.g. `evals.gsm8k.scorer`) names the config key in errors.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if callable(spec) and not isinstance(spec, Mapping):  # already built (e.g. by hydra.utils.instantiate)
        return spec
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a scorer name or a mapping with `_target_`, got {spec!r}")
    kwargs = dict(spec)
    target, name = kwargs.pop("_target_", None), kwargs.pop("name", None)
    if target is not None:
        obj = _locate(str(target), where)
    elif name in SCORERS:
        obj = SCORERS[name]
    else:
        raise ConfigError(
            f"{where}: unknown scorer {name!r}; use one of {sorted(SCORERS)} or `_target_: module.function`"
        )
    if not callable(obj):
        raise ConfigError(
            f"{where}: `{target or name}` is a {type(obj).__name__}, not a callable scorer(output, reference)"
        )
    if isinstance(obj, type):
        try:
            return obj(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        except TypeError as err:
            raise ConfigError(f"{where}: cannot build {obj.__name__} with {kwargs} ({err})") from None
    return partial(obj, **kwargs) if kwargs else obj
