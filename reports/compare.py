"""Tables, statistics and figures of a comparison (``qsfl compare``) from what tuning.compare wrote.

Reads ``OUT/compare/runs.csv``, ``OUT/compare/plan.toml`` and the runs' Histories and ``clients.csv`` (through
tuning.results) and writes ``compare.csv`` (per label: mean, sample std and confidence interval over seeds),
``compare_tests.csv`` (each tuned config against each baseline: difference of means, its interval, Welch's t
or bootstrap p-value), ``compare_fairness.csv`` (spread of per-client accuracy, QJ exclusions), ``compare.md``
and ``figures/compare_convergence*``. Nothing here simulates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qsfl import fairness
from qsfl.errors import ConfigError
from qsfl.io import atomic_write_text
from reports import plots
from reports.format import DASH, NA, md_table
from reports.stats import LEVEL, MIN_N, TestResult, compare_means, mean_ci, paired_compare
from tuning.results import CompareResults, read_compare

# metric names of tuning's METRICS summarised per label; the *_to_target ones over the seeds that reached it
METRICS = ("final_accuracy", "best_accuracy", "compression_ratio", "uplink_mb", "rounds_to_target",
           "uplink_bytes_to_target")
TESTED = ("final_accuracy", "uplink_mb")      # tested between every tuned config and every baseline
CLIENTS_FILE = "clients.csv"
LABELS = {"final_accuracy": "final accuracy", "best_accuracy": "best accuracy", "uplink_mb": "uplink MB"}
# the range each metric can take: its confidence interval is clipped to it (None: the study's rounds)
BOUNDS: dict[str, tuple[float, float | None]] = {
    "final_accuracy": (0.0, 1.0), "best_accuracy": (0.0, 1.0), "compression_ratio": (0.0, math.inf),
    "uplink_mb": (0.0, math.inf), "rounds_to_target": (1.0, None), "uplink_bytes_to_target": (0.0, math.inf)}


def _bounds(metric: str, rounds: float) -> tuple[float, float]:
    lo, hi = BOUNDS.get(metric, (-math.inf, math.inf))
    return lo, (rounds if hi is None else hi)


def _ok(g: pd.DataFrame) -> pd.DataFrame:
    return g[g["status"] != "failed"] if "status" in g.columns else g


def _rounds(compare: CompareResults) -> float:
    rounds = compare.plan.get("base", {}).get("rounds")
    return float(rounds) if rounds else math.inf


def _runs_with_objective(compare: CompareResults) -> pd.DataFrame:
    """runs.csv with the study's per-seed objective values and constraint flag joined on."""
    return compare.runs.join(compare.objective_values())


def objective_columns(compare: CompareResults) -> list[str]:
    """``objective_0``, ... for the study's objectives (none without an [objective] in plan.toml)."""
    objective = compare.objective()
    return [f"objective_{j}" for j in range(objective.n)] if objective is not None else []


def summarise(compare: CompareResults, *, method: str = "auto") -> pd.DataFrame:
    """One row per label: runs, failures, and mean, sample std and CI over seeds of every metric and of the study's
    objective (per seed; ``objective_<j>_study`` is the study's own value over all the seeds), how many seeds
    reached the target and met the constraint. Intervals need at least ``MIN_N`` seeds and stay in each metric's
    range."""
    runs = _runs_with_objective(compare)
    rounds = _rounds(compare)
    ocols = objective_columns(compare)
    objective = compare.objective()
    has_constraint = objective is not None and objective.constraint is not None
    rows = []
    for label in compare.labels:
        g = runs[runs["label"] == label]
        ok = _ok(g)
        row: dict[str, Any] = {"label": label, "kind": compare.kind(label), "setting": compare.description(label),
                               "seeds": ",".join(str(int(s)) for s in g["seed"]), "runs": len(ok),
                               "failed": len(g) - len(ok)}
        for m in (*METRICS, *ocols):
            vals = pd.to_numeric(ok[m], errors="coerce").dropna().to_numpy(dtype=float) if m in ok else np.array([])
            mean, lo, hi = mean_ci(vals, method=method, bounds=_bounds(m, rounds))
            row[f"{m}_mean"] = mean
            row[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = lo, hi
        for j, value in enumerate(compare.study_fitness(label)):
            row[f"objective_{j}_study"] = value
        row["reached"] = int(pd.to_numeric(ok["rounds_to_target"], errors="coerce").notna().sum()) if len(ok) else 0
        if "constraint_met" in ok and has_constraint:
            row["constraint_met"] = int(pd.to_numeric(ok["constraint_met"], errors="coerce").fillna(0).sum())
        row["diverged"] = int((ok["status"] == "diverged").sum()) if "status" in ok else 0
        row["target_accuracy"] = float(ok["target_accuracy"].iloc[0]) if len(ok) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def significance(compare: CompareResults, *, metrics: Sequence[str] = TESTED, method: str = "auto",
                 seed: int = 0) -> pd.DataFrame:
    """Each tuned config against each baseline, per metric: difference of means over seeds, its CI and p (Welch's
    t or a bootstrap; ``exact`` and no statistic where neither side varies); on the study's objective a paired
    t-test over the shared seeds."""
    runs = _runs_with_objective(compare)
    tuned = [lab for lab in compare.labels if compare.kind(lab) == "tuned"]
    baselines = [lab for lab in compare.labels if compare.kind(lab) == "baseline"]
    rows = []
    for t in tuned:
        # and each tuned configuration of another compared study (qsfl compare OUT --with OTHER): tuned vs tuned
        others = [u for u in tuned if tuned.index(u) > tuned.index(t) and compare.study_of(u) != compare.study_of(t)]
        for b in baselines + others:
            for m in (*objective_columns(compare), *metrics):
                if m.startswith("objective_"):
                    a, c = _paired(runs, t, b, m)
                    res = paired_compare(a, c)
                    a, c = a[np.isfinite(a) & np.isfinite(c)], c[np.isfinite(a) & np.isfinite(c)]
                else:
                    a = pd.to_numeric(_ok(runs[runs["label"] == t]).get(m), errors="coerce").dropna().to_numpy(float)
                    c = pd.to_numeric(_ok(runs[runs["label"] == b]).get(m), errors="coerce").dropna().to_numpy(float)
                    res = compare_means(a, c, method=method, seed=seed)
                rows.append({"tuned": t, "baseline": b, "metric": m, "n_tuned": len(a), "n_baseline": len(c),
                             "mean_tuned": float(a.mean()) if len(a) else math.nan,
                             "mean_baseline": float(c.mean()) if len(c) else math.nan,
                             "diff": res.diff, "diff_ci_low": res.low, "diff_ci_high": res.high,
                             "statistic": res.statistic, "p_value": res.p_value, "method": res.method})
    return pd.DataFrame(rows, columns=["tuned", "baseline", "metric", "n_tuned", "n_baseline", "mean_tuned",
                                       "mean_baseline", "diff", "diff_ci_low", "diff_ci_high", "statistic",
                                       "p_value", "method"])


def _paired(runs: pd.DataFrame, a: str, b: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``column`` of labels ``a`` and ``b`` on their shared seeds, in seed order (NaN for a failed run)."""
    x = runs[runs["label"] == a].set_index("seed")[column]
    y = runs[runs["label"] == b].set_index("seed")[column]
    shared = sorted(set(x.index) & set(y.index))
    return (pd.to_numeric(x.loc[shared], errors="coerce").to_numpy(float),
            pd.to_numeric(y.loc[shared], errors="coerce").to_numpy(float))


def verdicts(compare: CompareResults, summary: pd.DataFrame) -> list[str]:
    """One plain sentence per tuned config and reference (the tuned strategy's defaults, FedAvg; with ``--with``
    also the other studies' strategies' defaults and their best tuned config) on the (first) study's objective over
    the fresh seeds (paired, 95 %), and a warning for every tuned config that missed the target accuracy or the
    constraint on some seed."""
    objective = compare.objective()
    if objective is None:
        return []
    runs = _runs_with_objective(compare)
    rows = {str(r["label"]): r for _, r in summary.iterrows()}
    refs = [lab for lab in compare.references if lab in rows]
    out = []
    for label in (lab for lab in compare.labels if compare.kind(lab) == "tuned"):
        for j, (text, direction) in enumerate(zip((f.text for f in objective.formulas), objective.directions)):
            mine = compare.study_of(label)
            for ref in (r for r in refs if compare.kind(r) == "baseline" or compare.study_of(r) != mine):
                a, b = _paired(runs, label, ref, f"objective_{j}")
                out.append(_verdict(label, ref, f"{direction} {text}", direction, paired_compare(a, b),
                                    int((np.isfinite(a) & np.isfinite(b)).sum()), compare.description(ref)))
        r = rows[label]
        n, reached = int(r["runs"]), int(r["reached"])
        own = compare.defaults_for(label)
        ref_reached = int(rows[own]["reached"]) if own in rows else None
        if reached < n:
            out.append(f"WARNING: {label} reached the target accuracy {float(r['target_accuracy']):g} on only "
                       f"{reached} of {n} fresh seeds" + (f" ({own}: {ref_reached} of {int(rows[own]['runs'])})"
                                                         if ref_reached is not None else "") + ".")
        if objective.constraint is not None and int(r.get("constraint_met", n)) < n:
            out.append(f"WARNING: {label} met the constraint {objective.constraint.text} on only "
                       f"{int(r['constraint_met'])} of {n} fresh seeds.")
    return out


def _verdict(label: str, ref: str, what: str, direction: str, res: TestResult, n: int, ref_text: str) -> str:
    ref_name = f"{ref} ({ref_text})" if ref_text else ref
    if n == 0 or not math.isfinite(res.diff):
        return f"{label} vs {ref_name}: no seed where both completed; nothing to compare."
    means = f"mean difference {res.diff:+.4g} over {n} fresh seed{'s' if n > 1 else ''}"
    if res.method != "exact" and not math.isfinite(res.low):
        return (f"{label} vs {ref_name} on {what}: {means}; too few seeds to tell at {LEVEL:.0%} confidence "
                f"(at least {MIN_N} needed; pass --seeds with 5 or more).")
    sign = -1.0 if direction == "minimize" else 1.0
    if res.method == "exact":
        better, worse, how = sign * res.diff > 0, sign * res.diff < 0, "the same on every seed: exact"
    else:
        better, worse = sign * (res.low if sign > 0 else res.high) > 0, sign * (res.high if sign > 0 else res.low) < 0
        how = f"{LEVEL:.0%} interval [{res.low:+.4g}, {res.high:+.4g}], paired t-test p = {res.p_value:.3g}"
    word = "better than" if better else ("worse than" if worse else "not better than")
    tail = "" if better or worse else "; no difference at this confidence"
    return f"{label} is {word} {ref_name} on {what}: {means} ({how}{tail})."


def fairness_summary(compare: CompareResults) -> pd.DataFrame:
    """Per label, mean over seeds of each run's per-client spread (qsfl.fairness.summarise of clients.csv)."""
    rows = []
    for label in compare.labels:
        g = _ok(compare.runs[compare.runs["label"] == label])
        per_run = [fairness.summarise(pd.read_csv(Path(p) / CLIENTS_FILE)) for p in g.get("path", [])
                   if (Path(p) / CLIENTS_FILE).is_file()]
        if per_run:
            rows.append({"label": label, "runs": len(per_run),
                         **{k: float(np.mean([r[k] for r in per_run])) for k in per_run[0]}})
    return pd.DataFrame(rows)


# ----- display ---------------------------------------------------------------------------------------
def _cell(r: pd.Series, m: str, fmt: str, suffix: str = "", scale: float = 1.0) -> str:
    mean, lo, hi = (float(r[f"{m}_{k}"]) * scale for k in ("mean", "ci_low", "ci_high"))
    if math.isinf(mean):
        return NA
    if not math.isfinite(mean):
        return DASH
    if not math.isfinite(lo) or f"{lo:{fmt}}" == f"{hi:{fmt}}":
        return f"{mean:{fmt}}{suffix}"    # too few seeds for an interval, or no spread at the shown precision
    return f"{mean:{fmt}}{suffix} [{lo:{fmt}}, {hi:{fmt}}]"


def display_table(summary: pd.DataFrame, objectives: Sequence[str] = ()) -> pd.DataFrame:
    """compare.csv as readable cells: the study's objective(s) (``objectives``: their texts) with how many seeds
    reached the target and met the constraint, then each metric's mean and, with enough seeds, its interval."""
    rows = []
    for _, r in summary.iterrows():
        n, reached = int(r["runs"]), int(r["reached"])
        target = float(r["target_accuracy"]) if math.isfinite(float(r["target_accuracy"])) else math.nan
        row: dict[str, Any] = {"config": r["label"],
                               "setting": r.get("setting", "") if isinstance(r.get("setting", ""), str) else ""}
        for j, text in enumerate(objectives):
            row[f"objective: {text}" if len(objectives) == 1 else f"objective {j}: {text}"] = \
                _cell(r, f"objective_{j}", ".4g")
        row[f"reached {target:g}"] = f"{reached}/{n}"
        if "constraint_met" in r and objectives and pd.notna(r["constraint_met"]):
            row["constraint met"] = f"{int(r['constraint_met'])}/{n}"
        row.update({
            "final accuracy": _cell(r, "final_accuracy", ".4f"),
            "compression": _cell(r, "compression_ratio", ".2f", "x"),
            "uplink MB": _cell(r, "uplink_mb", ".3f"),
            f"rounds to {target:g}": _cell(r, "rounds_to_target", ".1f") if reached else DASH,
            f"uplink MB to {target:g}": _cell(r, "uplink_bytes_to_target", ".3f", scale=1e-6) if reached else DASH,
        })
        rows.append(row)
    return pd.DataFrame(rows)


def _p(p: float) -> str:
    if not math.isfinite(p):
        return NA
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def tests_display(tests: pd.DataFrame) -> pd.DataFrame:
    """compare_tests.csv as readable cells: one row per (tuned, baseline), per metric the difference, its CI, p."""
    rows = []
    for (tuned, base), g in tests.groupby(["tuned", "baseline"], sort=False):
        row: dict[str, Any] = {"tuned": tuned, "vs": base}
        for _, t in g.iterrows():
            fmt = ".4f" if "accuracy" in t["metric"] else (".4g" if str(t["metric"]).startswith("objective") else ".3f")
            name = LABELS.get(str(t["metric"]), str(t["metric"]).replace("_", " "))
            diff = f"{t['diff']:+{fmt}}" if math.isfinite(t["diff"]) else DASH
            if math.isfinite(t["diff_ci_low"]) and f"{t['diff_ci_low']:{fmt}}" != f"{t['diff_ci_high']:{fmt}}":
                diff += f" [{t['diff_ci_low']:+{fmt}}, {t['diff_ci_high']:+{fmt}}]"
            row[f"\u0394 {name}"] = diff
            row[f"p ({name})"] = _p(float(t["p_value"]))
        row["seeds"] = f"{int(g['n_tuned'].iloc[0])}/{int(g['n_baseline'].iloc[0])}"
        rows.append(row)
    return pd.DataFrame(rows)


def fairness_display(table: pd.DataFrame) -> pd.DataFrame:
    """compare_fairness.csv as readable cells."""
    rows = []
    for _, f in table.iterrows():
        rows.append({"config": f["label"], "client acc. mean": f"{f['accuracy_mean']:.4f}",
                     "std": f"{f['accuracy_std']:.4f}", "min": f"{f['accuracy_min']:.4f}",
                     "10th pct.": f"{f['accuracy_p10']:.4f}",
                     "uploads per client": f"{f['qualified_min']:.0f}\u2013{f['qualified_max']:.0f}",
                     "never qualified": f"{f['never_qualified']:g}",
                     "left out by QJ": f"{f['not_qualified_share']:.0%}"})
    return pd.DataFrame(rows)


def summary_note(compare: CompareResults, summary: pd.DataFrame) -> str:
    """What the comparison's cells are (the seeds, the interval, what 'reached' counts)."""
    seeds = compare.seeds
    if len(seeds) >= MIN_N:
        note = (f"Mean over the {len(seeds)} seeds {', '.join(map(str, seeds))} (not used by the search) with its "
                f"{LEVEL:.0%} confidence interval in brackets (Student t, clipped to the metric's range).")
    else:
        note = (f"Mean over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))} (not used "
                f"by the search): too few for a {LEVEL:.0%} interval (at least {MIN_N} needed; pass --seeds with 5 "
                "or more).")
    if compare.objective() is not None:
        note += (" The objective is the study's fitness on each seed alone (its stand-ins where the target was not "
                 "reached, its constraint penalty included), averaged.")
    if len(summary) and "target_accuracy" in summary.columns:
        note += (f" Rounds and uplink MB to the target accuracy {summary['target_accuracy'].iloc[0]:g} average the "
                 "runs that reached it; reached counts them. Compression is vs FedAvg on the same rounds.")
    if compare.stale:
        note += (" STALE: best.toml changed since this comparison ran (the study was resumed or extended); "
                 "run `qsfl compare` again.")
    return note


def tests_note(tests: pd.DataFrame) -> str:
    """How the p-values were computed."""
    methods = set(tests["method"]) if len(tests) else {"welch"}
    how = "Welch's unequal-variance t-test" if "bootstrap" not in methods else "a seeded bootstrap of Welch's statistic"
    return (f"\u0394: difference of means (tuned minus baseline) over seeds with its {LEVEL:.0%} interval in "
            f"brackets; p: the two-sided p-value of {how} (the objective: a paired t-test over the shared seeds); "
            f"n/a with fewer than {MIN_N} runs per side, and where neither side varies (e.g. byte counts: the "
            "difference is then exact). Not corrected for multiple comparisons.")


FAIRNESS_NOTE = ("Per-client accuracy of the final global model on each client's own label distribution "
                 "(qsfl.fairness), averaged over seeds: its mean, spread, minimum and 10th percentile; uploads "
                 "per client is the range of rounds each client was qualified; left out by QJ is the share of "
                 "sampled client-rounds that QJ did not qualify.")


def objective_texts(compare: CompareResults) -> list[str]:
    objective = compare.objective()
    return [f"{d} {f.text}" for f, d in zip(objective.formulas, objective.directions)] if objective else []


def compare_markdown(compare: CompareResults, summary: pd.DataFrame, tests: pd.DataFrame,
                     fair: pd.DataFrame) -> str:
    """compare.md: the table, the tests, the fairness table, what was run, and the figure."""
    base = compare.plan.get("base", {})
    lines = ["# Comparison of tuned configurations with baselines", "",
             f"{base.get('dataset', '?')}/{base.get('model', '?')}, {base.get('clients', '?')} clients, "
             f"{base.get('rounds', '?')} rounds. " + summary_note(compare, summary), "",
             md_table(display_table(summary, objective_texts(compare))), ""]
    said = verdicts(compare, summary)
    if said:
        lines += ["## Verdict", "", *[f"- {v}" for v in said], ""]
    if len(tests):
        lines += ["## Tuned vs baselines", "", tests_note(tests), "", md_table(tests_display(tests)), ""]
    if len(fair):
        lines += ["## Per-client accuracy and uploads", "", FAIRNESS_NOTE, "", md_table(fairness_display(fair)), ""]
    lines += ["![accuracy vs uplink](figures/compare_convergence.png)", ""]
    for _, r in summary[summary["failed"] > 0].iterrows():
        lines.append(f"- {r['label']}: {int(r['failed'])} run(s) failed; see compare/runs.csv")
    return "\n".join(lines) + "\n"


def write_compare(out_dir: str | Path, *, method: str = "auto") -> pd.DataFrame:
    """Write compare.csv, compare_tests.csv, compare_fairness.csv, compare.md and the figures; return the summary."""
    out = Path(out_dir)
    compare = read_compare(out)
    if compare is None:
        raise ConfigError(f"{out}: no comparison yet (compare/runs.csv); run `qsfl compare {out}` first")
    summary = summarise(compare, method=method)
    tests = significance(compare, method=method)
    fair = fairness_summary(compare)
    atomic_write_text(out / "compare.csv", summary.to_csv(index=False))
    atomic_write_text(out / "compare_tests.csv", tests.to_csv(index=False))
    atomic_write_text(out / "compare_fairness.csv", fair.to_csv(index=False))
    atomic_write_text(out / "compare.md", compare_markdown(compare, summary, tests, fair))
    histories = compare.histories()
    target = float(summary["target_accuracy"].dropna().iloc[0]) if summary["target_accuracy"].notna().any() else None
    plots.save_figure(plots.accuracy_vs_uplink(histories, log_x=True, target=target),
                      out / "figures" / "compare_convergence")
    plots.save_figure(plots.accuracy_vs_round(histories, target=target), out / "figures" / "compare_convergence_round")
    return summary
