"""The trials table (docs/study_output.md): one row per evaluation.

Appending a row costs O(1): the row goes to an append-only journal, ``OUT/trials.journal.jsonl`` (one JSON
line per finished evaluation, written with one ``write`` and fsync'd before ``append`` returns). The
journal is compacted into ``OUT/trials.parquet`` and ``OUT/trials.csv`` (both replaced atomically, the
directory fsync'd) when it holds ``compact_ratio`` times as many rows as the last compaction (at least 1:
a small study's files are current after every evaluation), when ``compact_every_s`` seconds have passed,
and on :meth:`TrialsTable.close`, so the total compaction work stays proportional to the number of rows.

Each journal line carries a sequence number; trials.parquet records (in its pandas ``attrs``) the sequence
number up to which it holds the journal, so a process killed between a compaction and the journal's
truncation duplicates nothing. A torn last line (the process died inside its write) is ignored with a
warning and cut off before the next append. Reading (resume, :func:`read_trials`) = parquet + journal tail.
The rows are written in completion order; the files hold them sorted by ``trial``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from qsfl.errors import ConfigError
from qsfl.io import atomic_write, fsync_dir
from tuning.objective import (
    METRICS,
    Evaluation,
    Objective,
    SeedResult,
    combine,
    failed_evaluation,
)

log = logging.getLogger(__name__)

PARQUET = "trials.parquet"
CSV = "trials.csv"
JOURNAL = "trials.journal.jsonl"
SEQ_ATTR = "qsfl_journal_seq"   # trials.parquet's attrs: journal lines with a smaller seq are in the file


def fitness_columns(n_objectives: int) -> list[str]:
    """``["fitness"]`` for one objective, else ``["fitness_0", "fitness_1", ...]``."""
    return ["fitness"] if n_objectives == 1 else [f"fitness_{i}" for i in range(n_objectives)]


def columns(param_names: Sequence[str], n_objectives: int) -> list[str]:
    """The table's columns in order (the documented ones plus ``repair`` and ``per_seed``)."""
    cols = ["study", "engine", "generation", "trial", "individual"]
    cols += [f"param_{p}" for p in param_names]
    cols += ["repair", "seeds", "n_seeds", "rounds", "rung"]
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
    row["n_seeds"] = len(ev.seeds)
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
    """The rows of one study: in memory, in an fsync'd append-only journal, and compacted into parquet + CSV."""

    def __init__(self, out_dir: str | Path, param_names: Sequence[str], n_objectives: int,
                 param_types: Mapping[str, str] | None = None, *, compact_ratio: float = 0.1,
                 compact_every_s: float = 60.0) -> None:
        self.out_dir = Path(out_dir)
        self.param_names = list(param_names)
        self.n_objectives = n_objectives
        self.param_types = dict(param_types or {})
        self.columns = columns(self.param_names, n_objectives)
        self.compact_ratio = compact_ratio
        self.compact_every_s = compact_every_s
        self._rows: list[dict[str, Any]] = []
        self._seq = 0               # the sequence number of the next journal line
        self._compacted = 0         # rows in the files at the last compaction
        self._tail = 0              # journal lines since then
        self._last_compaction = time.monotonic()
        self._fd: int | None = None

    # ----- rows in memory ----------------------------------------------------------------------------------
    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row, in the order they were appended (or loaded)."""
        return self._rows

    @rows.setter
    def rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Set the rows in memory; when that adds, drops or changes a row, the files are rewritten now (a journal
        only adds rows; an Optuna study's rows come from its storage, possibly from other processes)."""
        new = [dict(r) for r in rows]
        changed = _keys(new) != _keys(self._rows)
        self._rows = new
        if changed and (new or self._compacted or self._tail or (self.out_dir / PARQUET).exists()):
            self.compact()

    # ----- writing ----------------------------------------------------------------------------------------
    def append(self, row: Mapping[str, Any]) -> None:
        """Add one finished evaluation: one fsync'd journal line (O(1)); compact when due."""
        row = dict(row)
        line = json.dumps({"seq": self._seq, "row": row}, default=_py, allow_nan=True) + "\n"
        self._journal_write(line.encode("utf-8"))
        self._rows.append(row)
        self._seq += 1
        self._tail += 1
        if self._due():
            self.compact()

    def replace(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace every row (Optuna rebuilds the table from its storage) and rewrite the files (O(rows))."""
        self._rows = [dict(r) for r in rows]
        self.compact()

    def _due(self) -> bool:
        return (self._tail >= max(1.0, self.compact_ratio * self._compacted)
                or time.monotonic() - self._last_compaction >= self.compact_every_s)

    def compact(self) -> None:
        """Atomically rewrite trials.parquet and trials.csv from the rows, then empty the journal (a crash
        leaves the previous complete files, and the journal lines they lack)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        df = self.frame()
        df.attrs[SEQ_ATTR] = self._seq
        atomic_write(self.out_dir / PARQUET, lambda p: df.to_parquet(p, index=False))
        atomic_write(self.out_dir / CSV, lambda p: df.to_csv(p, index=False))
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        elif (self.out_dir / JOURNAL).exists():
            os.truncate(self.out_dir / JOURNAL, 0)
        self._compacted = len(self._rows)
        self._tail = 0
        self._last_compaction = time.monotonic()

    write = compact   # the name callers used before the journal

    def close(self) -> None:
        """Compact what the journal holds beyond the files, and close the journal."""
        try:
            if self._tail:
                self.compact()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _journal_write(self, data: bytes) -> None:
        if self._fd is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / JOURNAL
            new = not path.exists()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if new:
                fsync_dir(self.out_dir)    # the journal's directory entry survives a power loss too
        view = memoryview(data)
        while view:                       # a regular file takes the whole line in one write, but be sure
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    # ----- reading ----------------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with the documented columns and dtypes, sorted by trial."""
        df = pd.DataFrame(self._rows, columns=self.columns)
        if df["n_seeds"].isna().any():   # rows of an older version: count the seeds column
            df["n_seeds"] = df["n_seeds"].fillna(df["seeds"].astype(str).str.count(",") + 1)
        for col, default in (("rounds", 0), ("rung", 0), ("simulated_rounds", 0)):
            df[col] = df[col].fillna(default)
        for col in ("generation", "trial", "n_seeds", "rounds", "rung", "simulated_rounds"):
            df[col] = df[col].astype("int64")
        for p in self.param_names:
            col = f"param_{p}"
            if self.param_types.get(p) == "int" and df[col].notna().all():
                df[col] = df[col].astype("int64")
            elif self.param_types.get(p) == "categorical":   # the chosen value's name
                df[col] = df[col].astype("object").where(df[col].notna(), "").astype(str)
            else:
                df[col] = df[col].astype("float64")
        for col in self.columns:
            if col.startswith(("metric_", "fitness")) or col == "duration_s":
                df[col] = df[col].astype("float64")
        for col in ("study", "engine", "individual", "repair", "seeds", "state", "reason", "simulation",
                    "finished_at", "per_seed"):
            df[col] = df[col].astype("object").where(df[col].notna(), "").astype(str)
        # completion order depends on the workers' timing: the files do not
        return df.sort_values("trial", kind="stable").reset_index(drop=True)

    def load(self) -> list[dict[str, Any]]:
        """Read the rows written by an earlier run of the study (files + journal tail); [] if none.

        A torn last journal line is cut off here (with a warning), so the next append starts a clean line.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        df, seq = _read_files(self.out_dir)
        rows = [] if df is None else [{c: _py(v) for c, v in r.items()} for r in df.to_dict("records")]
        tail, good_bytes, torn = _read_journal(self.out_dir / JOURNAL, seq, rows if seq is None else None)
        if torn:
            os.truncate(self.out_dir / JOURNAL, good_bytes)
        self._rows = rows + [row for _, row in tail]
        self._compacted = len(rows)
        self._tail = len(tail)
        self._seq = max([seq or 0] + [s + 1 for s, _ in tail])
        self._last_compaction = time.monotonic()
        return self._rows


def _keys(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    return [(int(r["trial"]), r.get("individual"), r.get("finished_at")) for r in rows]


def _read_files(out_dir: Path) -> tuple[pd.DataFrame | None, int | None]:
    """(trials.parquet, else trials.csv, or None; the journal sequence number the parquet file holds up to,
    None when unknown: a CSV, or a parquet file written before the journal)."""
    for name, read in ((PARQUET, pd.read_parquet),
                       (CSV, lambda p: pd.read_csv(p, keep_default_na=False, na_values=[""]))):
        if (out_dir / name).is_file():
            try:
                # one read of the whole file, then parse: a reader racing a compaction's rename sees one
                # complete version (pyarrow opens a path more than once)
                df = read(io.BytesIO((out_dir / name).read_bytes()))
            except FileNotFoundError:
                continue
            except Exception as exc:   # noqa: BLE001 - any parser error means a damaged table
                raise ConfigError(f"{out_dir / name}: damaged trials table ({type(exc).__name__}: {exc}); "
                                  f"restore it or start the study in a new --out directory") from None
            seq = df.attrs.get(SEQ_ATTR)
            return df, (int(seq) if name == PARQUET and seq is not None else None)
    return None, None


def _read_journal(path: Path, seq: int | None,
                  known: Sequence[Mapping[str, Any]] | None) -> tuple[list[tuple[int, dict[str, Any]]], int, bool]:
    """(seq, row) of the journal lines the files lack, the byte length of its whole lines, and whether a torn
    last line was dropped (with a warning)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, False
    return _parse_journal(data, path, seq, known, warn=True)


def _parse_journal(data: bytes, path: Path, seq: int | None, known: Sequence[Mapping[str, Any]] | None, *,
                   warn: bool) -> tuple[list[tuple[int, dict[str, Any]]], int, bool]:
    """See :func:`_read_journal`. Lines the files hold are those below ``seq``; without it (a CSV), those equal
    to a row of ``known`` (trial, individual, finish time). ``warn``: log a torn last line."""
    have = set(_keys(known)) if seq is None and known else set()
    out: list[tuple[int, dict[str, Any]]] = []
    pos = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and not line:
            break
        try:
            if last:      # no newline: the write was cut short
                raise ValueError("no end of line")
            entry = json.loads(line)
            n, row = int(entry["seq"]), dict(entry["row"])
        except (ValueError, KeyError, TypeError) as exc:
            if last or all(not rest.strip() for rest in lines[i + 1:]):
                if warn:
                    log.warning("%s: ignoring a torn last line (%d bytes; the process writing it was killed): %s",
                                path, len(line), exc)
                return out, pos, True
            raise ConfigError(f"{path}: damaged trials journal at line {i + 1} ({exc}); restore it or start "
                              f"the study in a new --out directory") from None
        pos += len(line) + 1
        if (seq is not None and n < seq) or (seq is None and _keys([row])[0] in have):
            continue
        out.append((n, row))
    return out, pos, False


def read_trials(out_dir: str | Path) -> pd.DataFrame | None:
    """The trials table of a study directory (files + journal tail, sorted by trial), or None when there is
    none yet. Read-only: safe while a study is writing it."""
    d = Path(out_dir)
    # the journal first: a compaction between the two reads then leaves no row out (it is in the new files)
    try:
        journal = (d / JOURNAL).read_bytes()
    except FileNotFoundError:
        journal = b""
    df, seq = _read_files(d)
    if not journal:
        return df
    tmp_rows = [] if df is None or seq is not None else df.to_dict("records")
    # a line being written right now looks torn: not an error for a reader
    tail, _, _ = _parse_journal(journal, d / JOURNAL, seq, tmp_rows, warn=False)
    if not tail:
        return df
    rows = [] if df is None else [{c: _py(v) for c, v in r.items()} for r in df.to_dict("records")]
    rows += [row for _, row in tail]
    # the table as TrialsTable.frame() writes it: columns, dtypes and order
    names = [c[len("param_"):] for c in rows[0] if c.startswith("param_")]
    if df is not None:
        types = {n: "int" if pd.api.types.is_integer_dtype(df[f"param_{n}"]) else "float" for n in names}
    else:
        types = {n: "int" if all(isinstance(r.get(f"param_{n}"), int) for r in rows) else "float" for n in names}
    n_objectives = max(1, sum(1 for c in rows[0] if c.startswith("fitness_")))
    table = TrialsTable(d, names, n_objectives, types)
    table._rows = rows
    return table.frame()
