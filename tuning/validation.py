"""Validation before the answer: the search's best configurations and the strategy's defaults re-simulated on
seeds the search never used, and the answer chosen there.

Search seeds (``study.seeds``) are what the searcher optimises; its best points are partly best by luck on those
seeds, and more search buys more luck. So when the search ends, the top ``validation.top`` distinct configurations
by search fitness (the Pareto front's, spread along it, for several objectives) and the baseline (the strategy's
own defaults; QSFL: the authors') are simulated on the validation seeds (``[validation] seeds``, default eight
seeds disjoint from ``study.seeds`` and ``study.eval_seeds``). They are ranked by a pessimistic bound of their
fitness on the validation seeds (the mean of the per-seed fitness moved against them by the one-sided 90 %
Student-t half-width): a configuration that is good on average but fragile, one missed target among steady seeds,
ranks below a steady one. The first is the answer, and it replaces the defaults only when it beats them on those
seeds by a one-sided exact Wilcoxon signed-rank test over the per-seed fitness at level ``validation.alpha``
(default 0.1): otherwise the study says
it found nothing better and returns the defaults. ``study.eval_seeds`` stay untouched: they are the test seeds of
``qsfl compare`` and the benchmarks.

Several objectives: the validated points' front (non-dominated on validation fitness, the defaults included) is
the answer; the defaults are returned when no validated point dominates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qsfl.errors import ConfigError, check_bool, check_range, check_table, reject_unknown
from tuning.evaluate import Evaluator, Point
from tuning.objective import Evaluation, Objective, combine, dominates

VALIDATION_KEYS = ("enabled", "seeds", "top", "alpha")
DEFAULT_SEEDS = 8        # a fragile configuration (a rare missed target or collapsed last round) needs seeds to show
PESSIMISM = 0.9          # one-sided level of the bound that ranks validated configurations
FIRST_AUTO_SEED = 200   # automatic validation seeds: the smallest seeds from here that the study uses nowhere else


@dataclass(frozen=True)
class ValidationSettings:
    """The ``[validation]`` table (on by default)."""

    enabled: bool = True
    seeds: tuple[int, ...] = ()     # empty: chosen automatically (see :func:`auto_seeds`)
    top: int = 5
    alpha: float = 0.1


def parse_validation(table: Any, search_seeds: Sequence[int], eval_seeds: Sequence[int]) -> ValidationSettings:
    """Validate the ``[validation]`` table; its seeds must be disjoint from the search and test seeds."""
    table = {} if table is None else check_table("validation", table)
    reject_unknown("validation", table, VALIDATION_KEYS)
    enabled = table.get("enabled", True)
    check_bool("validation.enabled", enabled)
    top = table.get("top", 5)
    check_range("validation.top", top, 1, None, integer=True)
    alpha = table.get("alpha", 0.1)
    check_range("validation.alpha", alpha, 0.0, 1.0, lo_open=True)
    seeds = table.get("seeds")
    if seeds is None:
        chosen = auto_seeds(search_seeds, eval_seeds)
    else:
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"validation.seeds: expected a non-empty list of seeds, got {seeds!r}")
        for i, s in enumerate(seeds):
            check_range(f"validation.seeds[{i}]", s, 0, None, integer=True)
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"validation.seeds: {seeds!r} repeats a seed")
        clash = sorted(set(seeds) & (set(search_seeds) | set(eval_seeds)))
        if clash:
            raise ConfigError(f"validation.seeds: {clash} also in study.seeds, the racing seeds (study.max_seeds) or "
                              "study.eval_seeds; validation needs seeds of its own (the search's would reward luck, "
                              "the test seeds must stay unseen)")
        chosen = tuple(int(s) for s in seeds)
    if enabled and smallest_p(len(chosen)) >= alpha:
        raise ConfigError(f"validation.seeds: {len(chosen)} seeds can never show a difference at validation.alpha "
                          f"{alpha:g} (the signed-rank test's smallest p is {smallest_p(len(chosen)):g}); give at "
                          f"least {math.ceil(math.log2(1 / alpha) + 1e-9)} seeds or a larger alpha")
    return ValidationSettings(enabled=bool(enabled), seeds=chosen, top=int(top), alpha=float(alpha))


def auto_seeds(search_seeds: Sequence[int], eval_seeds: Sequence[int], n: int = DEFAULT_SEEDS,
               first: int = FIRST_AUTO_SEED) -> tuple[int, ...]:
    """The ``n`` smallest seeds from ``first`` on that are neither search nor test seeds (validation's, racing's)."""
    used = set(search_seeds) | set(eval_seeds)
    out: list[int] = []
    s = first
    while len(out) < n:
        if s not in used:
            out.append(s)
        s += 1
    return tuple(out)


# ----- the outcome ------------------------------------------------------------------------------------------
@dataclass
class Validated:
    """One configuration re-simulated on the validation seeds."""

    label: str                     # "defaults" or "search-<rank>"
    entry: dict[str, Any]          # its best.toml entry (params, search fitness, metrics, trial, ...)
    evaluation: Evaluation
    per_seed: list[list[float]]    # per objective: the fitness on each validation seed alone (NaN: failed)
    violations: list[float] = field(default_factory=list)   # the constraint's violation on each seed (NaN: failed)

    @property
    def constraint_met(self) -> int:
        """On how many validation seeds the objective's constraint held."""
        return sum(1 for v in self.violations if v == 0.0)

    @property
    def fitness(self) -> list[float]:
        return [float(f) if self.evaluation.ok else math.nan for f in self.evaluation.fitness]

    def pessimistic(self, sign: float, level: float = PESSIMISM) -> float:
        """The first objective's per-seed fitness, mean moved against the configuration by the one-sided
        ``level`` Student-t half-width (``sign`` +1: larger is better): a configuration that is good on average
        but fragile (an occasional missed target or constraint) ranks below a steady one."""
        values = np.asarray(self.per_seed[0], dtype=float)
        if not self.evaluation.ok or len(values) == 0 or not np.isfinite(values).all():
            return -sign * math.inf
        mean = float(values.mean())
        if len(values) < 2:
            return mean
        from scipy import stats

        half = float(stats.t.ppf(level, len(values) - 1)) * float(values.std(ddof=1)) / math.sqrt(len(values))
        return mean - sign * half


@dataclass
class ValidationResult:
    """The validated configurations, best first, and the choice between the best and the defaults."""

    seeds: list[int]
    ranked: list[Validated]        # tuned configurations by validation fitness (the front for several objectives)
    defaults: Validated
    answer: str                    # "tuned" or "defaults"
    verdict: str                   # one sentence that says what was chosen and why
    p_value: float = math.nan


def per_seed_fitness(ev: Evaluation, objective: Objective, rounds: int) -> tuple[list[list[float]], list[float]]:
    """Per objective, the fitness of each seed of ``ev`` alone, and the constraint's violation on each seed (0 when
    met; NaN where the seed failed)."""
    out: list[list[float]] = [[] for _ in range(objective.n)]
    violations: list[float] = []
    for r in ev.per_seed:
        one = combine(ev.params, [r.seed], [r], objective, rounds, full_rounds=rounds)
        for j in range(objective.n):
            out[j].append(float(one.fitness[j]) if one.ok else math.nan)
        violations.append(float(one.metrics["constraint_violation"]) if one.ok else math.nan)
    return out, violations


def paired_one_sided(better: Sequence[float], worse: Sequence[float], sign: float) -> tuple[float, float]:
    """(mean signed gain, one-sided p) of "``better`` beats ``worse`` on the same seeds" (``sign`` +1: larger is
    better) by the exact Wilcoxon signed-rank test: it ranks the per-seed gains, so one seed where a constraint
    penalty makes a fitness huge neither wins nor sinks the comparison on its own (a paired t-test would let that
    one seed's variance hide a consistent gain). Ties (zero gains) are dropped; no pair left gives p = 1."""
    a, b = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    gain = sign * (a[keep] - b[keep])
    if len(gain) == 0:
        return math.nan, 1.0
    mean = float(gain.mean())
    nonzero = gain[gain != 0]
    if len(nonzero) == 0:
        return mean, 1.0
    from scipy import stats

    return mean, float(stats.wilcoxon(nonzero, alternative="greater", method="exact").pvalue)


def smallest_p(n: int) -> float:
    """The smallest one-sided p-value the signed-rank test can reach with ``n`` seeds (all gains positive)."""
    return 0.5 ** n


def validate(evaluator: Evaluator, objective: Objective, settings: ValidationSettings, rounds: int,
             candidates: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any], defaults_point: Point,
             defaults_name: str) -> ValidationResult:
    """Simulate ``candidates`` (best.toml entries, best first) and the defaults on the validation seeds and choose
    the answer (see the module docstring)."""
    seeds = list(settings.seeds)
    # the candidates' params are the values evaluated (after the NS <= K repair): the evaluator maps them as they are
    points = [defaults_point] + [Point(dict(c["params"]), str(c.get("repair", "") or "")) for c in candidates]
    evs = evaluator.evaluate(points, rounds, seeds=seeds)
    validated = [Validated("defaults" if i == 0 else f"search-{i}", dict(entry), ev,
                           *per_seed_fitness(ev, objective, rounds))
                 for i, (entry, ev) in enumerate(zip([dict(defaults), *candidates], evs))]
    base, tuned = validated[0], validated[1:]
    signs = objective.weights
    done = [v for v in tuned if v.evaluation.ok]
    if objective.n == 1:
        ranked = sorted(done, key=lambda v: (-signs[0] * v.pessimistic(signs[0]), tuned.index(v)))
        ranked += [v for v in tuned if not v.evaluation.ok]
        return _choose_one(seeds, ranked, base, signs[0], settings.alpha, defaults_name, objective)
    front = [v for v in done if not any(dominates(o.fitness, v.fitness, signs) for o in done if o is not v)]
    front.sort(key=lambda v: tuple(-s * f for s, f in zip(signs, v.fitness)))
    beaten = base.evaluation.ok and any(dominates(v.fitness, base.fitness, signs) for v in front)
    if not base.evaluation.ok or beaten:
        why = f"some dominate the {defaults_name}" if beaten else f"the {defaults_name} failed on them"
        return ValidationResult(seeds, front, base, "tuned",
                                f"on the {len(seeds)} validation seeds {len(front)} validated configuration(s) form "
                                f"the front and {why}: the front is the answer")
    return ValidationResult(seeds, front, base, "defaults",
                            f"on the {len(seeds)} validation seeds no validated configuration dominates the "
                            f"{defaults_name}: the study found nothing better and returns them")


def _choose_one(seeds: list[int], ranked: list[Validated], base: Validated, sign: float, alpha: float,
                defaults_name: str, objective: Objective) -> ValidationResult:
    n = len(seeds)
    text = f"{'maximize' if sign > 0 else 'minimize'} {objective.formulas[0].text}"
    if not ranked or not ranked[0].evaluation.ok:
        return ValidationResult(seeds, ranked, base, "defaults",
                                f"no searched configuration completed on the {n} validation seeds: the study returns "
                                f"the {defaults_name}")
    top = ranked[0]
    if not base.evaluation.ok:
        return ValidationResult(seeds, ranked, base, "tuned",
                                f"the {defaults_name} failed on the validation seeds; the best validated "
                                f"configuration ({top.fitness[0]:.4g}) is the answer")
    gain, p = paired_one_sided(top.per_seed[0], base.per_seed[0], sign)
    facts = (f"validation fitness {top.fitness[0]:.4g} against the {defaults_name}' {base.fitness[0]:.4g} ({text}, "
             f"{n} validation seeds, one-sided signed-rank test p = {p:.3g})")
    if math.isfinite(gain) and gain > 0 and p < alpha:
        return ValidationResult(seeds, ranked, base, "tuned",
                                f"the best validated configuration beats the {defaults_name}: {facts}", p)
    return ValidationResult(seeds, ranked, base, "defaults",
                            f"the search found nothing that beats the {defaults_name} on seeds it did not search "
                            f"({facts}, needed p < {alpha:g}): the study returns the {defaults_name}", p)
