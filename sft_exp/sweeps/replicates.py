"""Seeds as replicates: jobs whose overrides differ only in `seed` are one config measured n times.

For each config and metric: mean, sample standard deviation, n and the 95% Student-t confidence interval
of the mean (mean +- t(0.975, n-1) * std / sqrt(n)). The verdict compares the best config with the runner-up
on the objective with a paired t-test over the seeds both ran (the seed fixes initialization and data
order, so the two runs of one seed are a pair), or Welch's t-test when they share fewer than two seeds.
This is the test Dror et al. recommend for comparing two systems over runs with different seeds
("The Hitchhiker's Guide to Testing Statistical Significance in Natural Language Processing", ACL 2018);
Student's paired t-test itself: Student (1908), "The probable error of a mean", Biometrika 6(1).
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Dict, List, Optional

SEED = re.compile(r"^\+*seed=")
ALPHA = 0.05


def config_key(overrides: str) -> str:
    """A job's overrides without its seed: what makes it a config."""
    return " ".join(o for o in overrides.split() if not SEED.match(o))


def seed_of(overrides: str, fallback=None):
    for o in overrides.split():
        if SEED.match(o):
            return o.split("=", 1)[1]
    return fallback


def summarize(values: List[float]) -> dict:
    """mean, std, n and the 95% t interval of the finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return {"n": 0}
    mean = statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    from scipy import stats

    std = statistics.stdev(values)
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def groups(rows: List[dict]) -> Dict[str, List[dict]]:
    """Completed jobs by config (first-seen order); only configs run under more than one seed."""
    by_config: Dict[str, List[dict]] = {}
    for row in rows:
        if row.get("status") == "completed":
            by_config.setdefault(config_key(row["overrides"]), []).append(row)
    return {k: v for k, v in by_config.items() if len(v) > 1}


def verdict(grouped: Dict[str, List[dict]], objective: str, maximize: bool) -> Optional[str]:
    """Whether the best config's lead over the runner-up on `objective` is beyond seed noise (p < 0.05)."""
    from scipy import stats

    scored = []
    for config, rows in grouped.items():
        by_seed = {seed_of(r["overrides"], r["job"]): r.get(objective) for r in rows}
        by_seed = {s: v for s, v in by_seed.items() if v is not None and math.isfinite(v)}
        if len(by_seed) >= 2:
            scored.append((statistics.fmean(by_seed.values()), config, by_seed))
    if len(scored) < 2:
        return None
    scored.sort(key=lambda item: item[0], reverse=maximize)
    (best_mean, best, best_seeds), (second_mean, second, second_seeds) = scored[0], scored[1]
    common = sorted(set(best_seeds) & set(second_seeds))
    if len(common) >= 2:
        a, b = [best_seeds[s] for s in common], [second_seeds[s] for s in common]
        test, p = f"paired t-test over {len(common)} seeds", stats.ttest_rel(a, b).pvalue
    else:
        a, b = list(best_seeds.values()), list(second_seeds.values())
        test, p = "Welch's t-test", stats.ttest_ind(a, b, equal_var=False).pvalue
    lead = abs(best_mean - second_mean)
    if p is None or math.isnan(p):  # identical differences on every seed: no spread to test against
        beyond = lead > 0
        p_text = "p undefined (the difference is the same on every seed)"
    else:
        beyond = p < ALPHA
        p_text = f"p = {p:.3g}"
    word = "higher" if maximize else "lower"
    return (
        f"Best config by mean {objective} ({word} is better): `{best or '(defaults)'}` "
        f"({best_mean:.4g}), runner-up `{second or '(defaults)'}` ({second_mean:.4g}): lead {lead:.4g}, "
        f"{test}, {p_text}: "
        + (
            "**beyond seed noise** at the 5% level."
            if beyond
            else "**within seed noise** (not significant at the 5% level): run more seeds before preferring one."
        )
    )
