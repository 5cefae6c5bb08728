"""Validation before the answer: the search's best configurations and the strategy's defaults re-simulated on
seeds the search never used, and the answer chosen there.

Search seeds (``study.seeds``) are what the searcher optimises; its best points are partly best by luck on those
seeds, and more search buys more luck. So when the search ends, the top ``validation.top`` distinct configurations
by search fitness (the Pareto front's, spread along it, for several objectives) and the baseline (the strategy's
own defaults; QSFL: the authors') are simulated on the validation seeds (``[validation] seeds``, default eight
seeds disjoint from ``study.seeds``, the racing seeds and ``study.eval_seeds``). They are ranked by a pessimistic
bound of their fitness on the validation seeds (the mean of the per-seed fitness moved against them by the
one-sided 90 % Student-t half-width): a configuration that is good on average but fragile ranks below a steady one.

Then, in that order, each candidate must **pass**: (1) where the objective or its constraint uses the target
(``rounds_to_target``, ``uplink_bytes_to_target``, ``target_reached``), it reaches the target on every seed on
which the defaults reach it (a missed target costs the documented stand-in, FedAvg's bytes of R + 1 rounds, often
a hundred times a tuned run's bytes: a configuration that misses one seed in twenty is worse than the defaults in
expectation); (2) it beats the defaults by at least ``validation.min_ratio`` (default 1.25 when minimising, 1 when
maximising; minimised: ``defaults >= min_ratio * tuned`` on a seed counts as a win) by a one-sided exact
Wilcoxon signed-rank test over the per-seed differences at level ``validation.alpha`` (default 0.1); (3) it does
so on all but ``validation.risk`` (5 %) of 2000 groups of ``len(study.eval_seeds)`` seeds drawn with replacement
from its seeds, its fitness and the defaults' computed on each group as the study computes a fitness over seeds
(mean metrics, the constraint on the means): the chance, as far as these seeds show it, that ``qsfl compare`` on
fresh test seeds does not confirm the gain (:func:`group_risk`). A candidate
that passes on the validation seeds is **confirmed** on ``validation.confirm`` more seeds (default 24, automatic,
disjoint from all others; the defaults once, on the same seeds) and must pass again on all its seeds (32 by
default): a rare failure (one seed in 20-50, e.g. one hard non-IID partition) shows in 32 seeds far more often
than in 8. The first candidate that passes is the answer; when none does, the study says it found nothing better
and returns the defaults. ``study.eval_seeds`` stay untouched: they are the test seeds of ``qsfl compare`` and the
benchmarks.

Several objectives: the validated points' front (non-dominated on validation fitness, the defaults included) is
the answer; the defaults are returned when no validated point dominates them (no confirmation stage).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qsfl.errors import ConfigError, check_bool, check_range, check_table, reject_unknown
from tuning.evaluate import Evaluator, Point
from tuning.objective import RUN_METRICS, Evaluation, Objective, combine, dominates, fitness_inputs

VALIDATION_KEYS = ("enabled", "seeds", "top", "alpha", "confirm", "min_ratio", "risk")
DEFAULT_SEEDS = 8        # a fragile configuration (a rare missed target or collapsed last round) needs seeds to show
DEFAULT_CONFIRM = 24     # confirmation seeds of a candidate that passed on the validation seeds
MIN_RATIO_MINIMIZE = 1.25   # default validation.min_ratio when minimising (1 when maximising)
TARGET_METRICS = ("rounds_to_target", "uplink_bytes_to_target", "target_reached")
RISK_DRAWS = 2000        # resampled groups of seeds behind validation.risk
PESSIMISM = 0.9          # one-sided level of the bound that ranks validated configurations
FIRST_AUTO_SEED = 200   # automatic validation seeds: the smallest seeds from here that the study uses nowhere else


@dataclass(frozen=True)
class ValidationSettings:
    """The ``[validation]`` table (on by default)."""

    enabled: bool = True
    seeds: tuple[int, ...] = ()     # empty: chosen automatically (see :func:`auto_seeds`)
    top: int = 5
    alpha: float = 0.1
    confirm_seeds: tuple[int, ...] = ()   # a passing candidate is confirmed on these too (empty: no confirmation)
    min_ratio: float | None = None        # None: MIN_RATIO_MINIMIZE when minimising, 1 when maximising
    risk: float = 0.05                    # largest share of resampled seed groups on which the answer may fall short
    group: int = 5                        # seeds per resampled group: as many as study.eval_seeds

    def ratio(self, sign: float) -> float:
        """How many times better than the defaults the answer must be (``sign`` +1: the study maximises)."""
        if self.min_ratio is not None:
            return self.min_ratio
        return 1.0 if sign > 0 else MIN_RATIO_MINIMIZE


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
    confirm = table.get("confirm", DEFAULT_CONFIRM)
    check_range("validation.confirm", confirm, 0, None, integer=True)
    min_ratio = table.get("min_ratio")
    if min_ratio is not None:
        check_range("validation.min_ratio", min_ratio, 1.0, None)
    risk = table.get("risk", 0.05)
    check_range("validation.risk", risk, 0.0, 1.0)
    confirm_seeds = auto_seeds((*search_seeds, *chosen), eval_seeds, n=int(confirm))
    return ValidationSettings(enabled=bool(enabled), seeds=chosen, top=int(top), alpha=float(alpha),
                              confirm_seeds=confirm_seeds, min_ratio=None if min_ratio is None else float(min_ratio),
                              risk=float(risk), group=max(len(eval_seeds), 1))


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
    check: str = ""                # "" (not checked), "passed", or why it did not pass (see the module docstring)

    @property
    def seeds(self) -> list[int]:
        """The seeds it was validated on (the validation seeds, plus the confirmation seeds once confirmed)."""
        return list(self.evaluation.seeds)

    def missed_targets(self) -> list[int]:
        """The seeds on which the target accuracy was not reached."""
        return [r.seed for r in self.evaluation.per_seed if r.metrics.get("target_reached", 0.0) != 1.0]

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
    ranked: list[Validated]        # the answer first (if tuned), then by the pessimistic bound (the front for several)
    defaults: Validated
    answer: str                    # "tuned" or "defaults"
    verdict: str                   # one sentence that says what was chosen and why
    p_value: float = math.nan
    confirm_seeds: list[int] = field(default_factory=list)   # the confirmation seeds (empty: none was needed)


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


def paired_one_sided(better: Sequence[float], worse: Sequence[float], sign: float,
                     ratio: float = 1.0) -> tuple[float, float]:
    """(mean signed gain, one-sided p) of "``better`` beats ``worse`` by ``ratio`` on the same seeds" (``sign`` +1:
    larger is better; the gain on a seed is ``worse - ratio * better`` when minimising, ``better - ratio * worse``
    when maximising; a seed where both are equal, e.g. both missed the target, is a tie whatever the ratio) by the
    exact Wilcoxon signed-rank test: it ranks the per-seed gains, so one seed where a
    constraint penalty makes a fitness huge neither wins nor sinks the comparison on its own (a paired t-test would
    let that one seed's variance hide a consistent gain). Ties (zero gains) are dropped; no pair left gives p = 1."""
    a, b = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    gain = a[keep] - ratio * b[keep] if sign > 0 else b[keep] - ratio * a[keep]
    gain[a[keep] == b[keep]] = 0.0     # an equal outcome (e.g. both missed the target: the same stand-in) is a tie
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
    """Simulate ``candidates`` (best.toml entries, best first) and the defaults on the validation seeds, confirm
    the leaders and choose the answer (see the module docstring)."""
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
        point_of = {v.label: pt for v, pt in zip(validated, points)}

        def extend(items: Sequence[Validated]) -> list[Validated]:
            more = evaluator.evaluate([point_of[v.label] for v in items], rounds, seeds=list(settings.confirm_seeds))
            return [extended(v, ev, objective, rounds) for v, ev in zip(items, more)]

        return choose_answer(seeds, ranked, base, signs[0], settings, defaults_name, objective,
                             extend if settings.confirm_seeds else None, rounds)
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


def extended(v: Validated, more: Evaluation, objective: Objective, rounds: int) -> Validated:
    """``v`` with the seeds of ``more`` (the same configuration on the confirmation seeds) added."""
    ev = v.evaluation
    both = combine(ev.params, [*ev.seeds, *more.seeds], [*ev.per_seed, *more.per_seed], objective, rounds,
                   ev.repair, rounds)
    return Validated(v.label, v.entry, both, *per_seed_fitness(both, objective, rounds))


def uses_target(objective: Objective) -> bool:
    """Whether a missed target changes the fitness: the formulas or the constraint name a to-target metric."""
    names: set[str] = set()
    for formula in objective.formulas:
        names |= formula.names
    if objective.constraint is not None:
        names |= objective.constraint.lhs.names | objective.constraint.rhs.names
    return bool(names & set(TARGET_METRICS))


def group_risk(tuned: Validated, base: Validated, objective: Objective, rounds: int, sign: float, ratio: float,
               group: int, draws: int = RISK_DRAWS) -> float:
    """The share of ``draws`` groups of ``group`` seeds, drawn with replacement from the seeds both were simulated
    on (the same seeds for both), on which ``tuned``'s fitness, computed as the study computes it over a group
    (mean metrics, the constraint on the means), is not ``ratio`` times better than ``base``'s. Deterministic
    (a fixed generator)."""
    runs_t = {r.seed: r for r in tuned.evaluation.per_seed}
    runs_b = {r.seed: r for r in base.evaluation.per_seed}
    shared = [s for s in runs_t if s in runs_b]
    if not shared:
        return 1.0
    names = RUN_METRICS

    def table(runs: Mapping[int, Any]) -> np.ndarray:
        inputs = [fitness_inputs(runs[s], rounds, rounds) for s in shared]     # once per seed, not per metric
        return np.array([[values[m] for m in names] for values in inputs], dtype=float)

    picks = np.random.default_rng(0).integers(0, len(shared), size=(draws, group))
    means_t, means_b = table(runs_t)[picks].mean(axis=1), table(runs_b)[picks].mean(axis=1)

    def fitness(row: np.ndarray) -> float:
        values = dict(zip(names, (float(x) for x in row)))
        values["constraint_violation"] = objective.violation(values)
        return float(objective.fitness(values)[0])

    short = 0
    for mt, mb in zip(means_t, means_b):
        ft, fb = fitness(mt), fitness(mb)
        gain = ft - ratio * fb if sign > 0 else fb - ratio * ft
        short += not gain > 0
    return short / draws


def check_candidate(tuned: Validated, base: Validated, sign: float, ratio: float, alpha: float,
                    target_matters: bool, defaults_name: str, objective: Objective | None = None, rounds: int = 0,
                    settings: ValidationSettings | None = None) -> tuple[str, float]:
    """("passed" or why not, the signed-rank p) of ``tuned`` against ``base`` on the seeds they share (see the
    module docstring: no missed target where the defaults reached it, at least ``ratio`` times better by the
    signed-rank test and, with ``objective`` and ``settings``, on all but ``settings.risk`` of resampled groups of
    ``settings.group`` seeds)."""
    if not tuned.evaluation.ok:
        return f"failed: {tuned.evaluation.reason}", math.nan
    if target_matters:
        missed = sorted(set(tuned.missed_targets()) - set(base.missed_targets()))
        if missed:
            return (f"missed the target on seed{'s' if len(missed) > 1 else ''} {', '.join(map(str, missed))} "
                    f"where the {defaults_name} reached it"), math.nan
    gain, p = paired_one_sided(tuned.per_seed[0], base.per_seed[0], sign, ratio)
    better = f"{ratio:g}x better than" if ratio != 1 else "better than"
    if not (math.isfinite(gain) and gain > 0 and p < alpha):
        return f"not {better} the {defaults_name} (signed-rank p = {p:.3g}, needed < {alpha:g})", p
    if objective is not None and settings is not None and settings.risk < 1:
        risk = group_risk(tuned, base, objective, rounds, sign, ratio, settings.group)
        if risk > settings.risk:
            return (f"not {better} the {defaults_name} on {risk:.1%} of {RISK_DRAWS} groups of {settings.group} of its "
                    f"seeds drawn at random (allowed {settings.risk:.0%})"), p
    return "passed", p


def choose_answer(seeds: list[int], ranked: list[Validated], base: Validated, sign: float,
                  settings: ValidationSettings, defaults_name: str, objective: Objective,
                  extend: Callable[[Sequence[Validated]], list[Validated]] | None = None,
                  rounds: int = 0) -> ValidationResult:
    """The answer of a single-objective study: the first of ``ranked`` that passes on the validation seeds and,
    through ``extend`` (None: no confirmation), on the confirmation seeds too; else the defaults."""
    n = len(seeds)
    text = f"{'maximize' if sign > 0 else 'minimize'} {objective.formulas[0].text}"
    if not ranked or not ranked[0].evaluation.ok:
        return ValidationResult(seeds, ranked, base, "defaults",
                                f"no searched configuration completed on the {n} validation seeds: the study returns "
                                f"the {defaults_name}")
    if not base.evaluation.ok:
        ranked[0].check = "passed"
        return ValidationResult(seeds, ranked, base, "tuned",
                                f"the {defaults_name} failed on the validation seeds; the best validated "
                                f"configuration ({ranked[0].fitness[0]:.4g}) is the answer")
    ratio, target_matters = settings.ratio(sign), uses_target(objective)
    confirmed_base: Validated | None = None
    out = list(ranked)
    p = math.nan
    for i, cand in enumerate(ranked):
        if not cand.evaluation.ok:
            break
        check, p = check_candidate(cand, base, sign, ratio, settings.alpha, target_matters, defaults_name,
                                   objective, rounds, settings)
        if check == "passed" and extend is not None:
            if confirmed_base is None:
                confirmed_base, cand = extend([base, cand])
            else:
                cand = extend([cand])[0]
            check, p = check_candidate(cand, confirmed_base, sign, ratio, settings.alpha, target_matters,
                                       defaults_name, objective, rounds, settings)
            if check != "passed":
                check = f"confirmation: {check}"
        cand.check = check
        out[i] = cand
        if check == "passed":
            against = confirmed_base or base
            skipped = "".join(f"; {v.label} ranked above it but {v.check}" for v in out[:i])
            answer = [cand, *(v for v in out if v is not cand)]
            facts = (f"validation fitness {cand.fitness[0]:.4g} against the {defaults_name}' "
                     f"{against.fitness[0]:.4g} ({text}, {len(cand.seeds)} seeds never searched, one-sided "
                     f"signed-rank test p = {p:.3g})")
            return ValidationResult(seeds, answer, against, "tuned",
                                    f"the best validated configuration beats the {defaults_name}"
                                    + (f" by at least {ratio:g}x" if ratio != 1 else "") + f": {facts}{skipped}", p,
                                    list(settings.confirm_seeds) if confirmed_base is not None else [])
    reasons = "; ".join(f"{v.label} {v.check}" for v in out if v.check)
    return ValidationResult(seeds, out, confirmed_base or base, "defaults",
                            f"the search found nothing that beats the {defaults_name}"
                            + (f" by {ratio:g}x" if ratio != 1 else "") + f" on seeds it did not search ({reasons}): "
                            f"the study returns the {defaults_name}", p,
                            list(settings.confirm_seeds) if confirmed_base is not None else [])
