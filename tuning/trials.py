"""The trials table (docs/study_output.md): one row per evaluation, rewritten atomically to
``OUT/trials.parquet`` and ``OUT/trials.csv`` after every finished evaluation, and read back on resume."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from qsfl.errors import ConfigError
from qsfl.io import atomic_write
from tuning.objective import (
    METRICS,
    Evaluation,
    Objective,
    SeedResult,
    combine,
    failed_evaluation,
)

PARQUET = "trials.parquet"
CSV = "trials.csv"


def fitness_columns(n_objectives: int) -> list[str]:
    """``["fitness"]`` for one objective, else ``["fitness_0", "fitness_1", ...]``."""
    return ["fitness"] if n_objectives == 1 else [f"fitness_{i}" for i in range(n_objectives)]


def columns(param_names: Sequence[str], n_objectives: int) -> list[str]:
    """The table's columns in order (the documented ones plus ``repair`` and ``per_seed``)."""
    cols = ["study", "engine", "generation", "trial", "individual"]
    cols += [f"param_{p}" for p in param_names]
    cols += ["repair", "seeds", "rounds", "rung"]
    for m in METRICS:
        cols += [f"metric_{m}", f"metric_{m}_std"]
    cols += fitness_columns(n_objectives)
    cols += ["state", "reason", "duration_s", "simulated_rounds", "simulation", "finished_at", "per_seed"]
    return cols


def now_iso() -> str:
    """The current UTC time, ISO-8601, second precision."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def make_row(study: str, engine: str, generation: int, trial: int, ev: Evaluation, param_names: Sequence[str],
             n_objectives: int, finished_at: str | None = None) -> dict[str, Any]:
    """The table row of one evaluation (fitness is NaN unless the evaluation completed)."""
    row: dict[str, Any] = {"study": study, "engine": engine, "generation": int(generation), "trial": int(trial),
                           "individual": ev.individual}
    for p in param_names:
        row[f"param_{p}"] = ev.params.get(p, math.nan)
    row["repair"] = ev.repair
    row["seeds"] = ",".join(str(s) for s in ev.seeds)
    row["rounds"] = int(ev.rounds)
    row["rung"] = int(ev.rung)
    for m in METRICS:
        row[f"metric_{m}"] = ev.metrics.get(m, math.nan)
        row[f"metric_{m}_std"] = ev.metrics_std.get(m, math.nan)
    for col, value in zip(fitness_columns(n_objectives), ev.fitness):
        row[col] = float(value) if ev.ok else math.nan
    row["state"] = ev.state
    row["reason"] = ev.reason
    row["duration_s"] = float(ev.duration_s)
    row["simulated_rounds"] = int(ev.simulated_rounds)
    row["simulation"] = ev.simulation
    row["finished_at"] = finished_at or now_iso()
    row["per_seed"] = json.dumps([r.to_dict() for r in ev.per_seed])
    return row


def evaluation_from_row(row: Mapping[str, Any], param_names: Sequence[str], objective: Objective,
                        rounds: int) -> Evaluation:
    """Rebuild an Evaluation (same fitness as when it ran) from its table row (``rounds``: the study's)."""
    params = {p: _py(row[f"param_{p}"]) for p in param_names}
    seeds = [int(s) for s in str(row["seeds"]).split(",") if s != ""]
    repair = _text(row.get("repair", ""))
    per_seed = [SeedResult.from_dict(d) for d in json.loads(_text(row.get("per_seed", "")) or "[]")]
    at = _int(row.get("rounds"), rounds) or rounds
    if row["state"] == "complete" and per_seed:
        ev = combine(params, seeds, per_seed, objective, at, repair, rounds)
    else:
        ev = failed_evaluation(params, seeds, _text(row.get("reason", "")), objective, repair, state=str(row["state"]))
        ev.per_seed = per_seed
        ev.rounds = at
    ev.duration_s = float(row.get("duration_s", 0.0) or 0.0)
    ev.rung = _int(row.get("rung"), 0)
    ev.simulation = _text(row.get("simulation", ""))
    ev.simulated_rounds = _int(row.get("simulated_rounds"), 0)
    return ev


def _int(v: Any, default: int) -> int:
    """An int cell, ``default`` for a missing/NaN one (tables written before the column existed)."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return default
    return int(v)


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _py(v: Any) -> Any:
    """numpy scalars -> Python scalars (so params hash as they did when first evaluated)."""
    return v.item() if hasattr(v, "item") else v


class TrialsTable:
    """The rows of one study, kept in memory and rewritten atomically (parquet + CSV) on every change."""

    def __init__(self, out_dir: str | Path, param_names: Sequence[str], n_objectives: int,
                 param_types: Mapping[str, str] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.param_names = list(param_names)
        self.n_objectives = n_objectives
        self.param_types = dict(param_types or {})
        self.columns = columns(self.param_names, n_objectives)
        self.rows: list[dict[str, Any]] = []

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one finished evaluation and rewrite the files."""
        self.rows.append(dict(row))
        self.write()

    def replace(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace every row (Optuna rebuilds the table from its storage) and rewrite the files."""
        self.rows = [dict(r) for r in rows]
        self.write()

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with the documented columns and dtypes."""
        df = pd.DataFrame(self.rows, columns=self.columns)
        for col, default in (("rounds", 0), ("rung", 0), ("simulated_rounds", 0)):
            df[col] = df[col].fillna(default)
        for col in ("generation", "trial", "rounds", "rung", "simulated_rounds"):
            df[col] = df[col].astype("int64")
        for p in self.param_names:
            col = f"param_{p}"
            if self.param_types.get(p) == "int" and df[col].notna().all():
                df[col] = df[col].astype("int64")
            else:
                df[col] = df[col].astype("float64")
        for col in self.columns:
            if col.startswith(("metric_", "fitness")) or col == "duration_s":
                df[col] = df[col].astype("float64")
        for col in ("study", "engine", "individual", "repair", "seeds", "state", "reason", "simulation",
                    "finished_at", "per_seed"):
            df[col] = df[col].astype("object").where(df[col].notna(), "").astype(str)
        return df

    def write(self) -> None:
        """Atomically rewrite trials.parquet and trials.csv (a crash leaves the previous complete files)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        df = self.frame()
        atomic_write(self.out_dir / PARQUET, lambda p: df.to_parquet(p, index=False))
        atomic_write(self.out_dir / CSV, lambda p: df.to_csv(p, index=False))

    def load(self) -> list[dict[str, Any]]:
        """Read the rows written by an earlier run of the study (parquet, else CSV); [] if none."""
        df = read_trials(self.out_dir)
        self.rows = [] if df is None else [{c: _py(v) for c, v in r.items()} for r in df.to_dict("records")]
        return self.rows


def read_trials(out_dir: str | Path) -> pd.DataFrame | None:
    """The trials table of a study directory, or None when there is none yet."""
    d = Path(out_dir)
    for name, read in ((PARQUET, pd.read_parquet),
                       (CSV, lambda p: pd.read_csv(p, keep_default_na=False, na_values=[""]))):
        if (d / name).is_file():
            try:
                return read(d / name)
            except Exception as exc:   # noqa: BLE001 - any parser error means a damaged table
                raise ConfigError(f"{d / name}: damaged trials table ({type(exc).__name__}: {exc}); "
                                  f"restore it or start the study in a new --out directory") from None
    return None
