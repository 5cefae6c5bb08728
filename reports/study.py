"""What a report shows of a study directory: tuning.results' view plus the saved Histories, and the study's
timing (time spent computing, not the gaps between resumed sessions)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qsfl.history import History
from tuning.results import CompareResults, StudyResults, load_histories, load_study, read_compare

# a pause longer than this between one evaluation's end and the next one's start is a new session (a resume)
SESSION_GAP_S = 60.0


@dataclass
class Study:
    """A study directory as the report reads it."""

    results: StudyResults
    histories: dict[str, History] = field(default_factory=dict)
    compare: CompareResults | None = None
    compare_runs: dict[str, list[History]] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return self.results.out_dir

    @property
    def name(self) -> str:
        return self.results.name

    @property
    def trials(self) -> pd.DataFrame:
        return self.results.trials


def load_report_study(out_dir: str | Path) -> Study:
    """Read a study output directory (ConfigError naming what is missing if it is not one)."""
    results = load_study(out_dir)
    compare = read_compare(results.out_dir)
    return Study(results=results, histories=load_histories(results.out_dir / "histories"), compare=compare,
                 compare_runs=compare.histories() if compare is not None else {})


def sessions(trials: pd.DataFrame, gap_s: float = SESSION_GAP_S) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """(start, end) of each session: evaluations (``finished_at - duration_s`` to ``finished_at``) grouped
    while the pause between the end of the busy time so far and the next start stays below ``gap_s``."""
    if "finished_at" not in trials.columns or not len(trials):
        return []
    end = pd.to_datetime(trials["finished_at"], errors="coerce", utc=True, format="ISO8601")
    dur = pd.to_numeric(trials["duration_s"], errors="coerce").fillna(0.0) if "duration_s" in trials.columns \
        else pd.Series(0.0, index=trials.index)
    frame = pd.DataFrame({"start": end - pd.to_timedelta(dur, unit="s"), "end": end}).dropna().sort_values("start")
    out: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for start, stop in zip(frame["start"], frame["end"]):
        if out and (start - out[-1][1]).total_seconds() < gap_s:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


def study_timing(trials: pd.DataFrame, gap_s: float = SESSION_GAP_S) -> dict[str, Any]:
    """Wall time spent computing (sum of the sessions' spans), compute time (sum of evaluation durations),
    the number of sessions, first start, last finish, and the count of each state."""
    out: dict[str, Any] = {"evaluations": len(trials), "compute_s": math.nan, "wall_s": math.nan,
                           "sessions": 0, "started": None, "finished": None}
    if "duration_s" in trials.columns:
        out["compute_s"] = float(pd.to_numeric(trials["duration_s"], errors="coerce").sum())
    spans = sessions(trials, gap_s)
    if spans:
        out["sessions"] = len(spans)
        out["wall_s"] = float(sum((b - a).total_seconds() for a, b in spans))
        out["started"], out["finished"] = spans[0][0], max(b for _, b in spans)
    if "state" in trials.columns:
        out.update({f"n_{k}": int(v) for k, v in trials["state"].value_counts().items()})
    return out
