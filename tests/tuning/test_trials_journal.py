"""The trials journal (tuning/trials.py): O(1) appends to an fsync'd journal, compaction into parquet + CSV,
resume = files + journal tail, a torn last line ignored, nothing lost or duplicated when the writer is killed
between a journal append and a compaction (or inside either)."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from qsfl.errors import ConfigError
from tuning.trials import CSV, JOURNAL, PARQUET, TrialsTable, read_trials

REPO = Path(__file__).resolve().parents[2]


def row(trial: int, **extra) -> dict:
    """A trials-table row as make_row writes it (NaN metrics, one param of each type)."""
    r = {"study": "s", "engine": "ga", "generation": trial // 4, "trial": trial, "individual": f"id{trial}",
         "param_beta": 0.1 * trial, "param_k": trial % 5 + 1, "repair": "", "seeds": "0",
         "metric_final_accuracy": 0.5 + trial / 1000, "metric_final_accuracy_std": 0.0, "fitness": trial / 7,
         "state": "complete", "reason": "", "duration_s": 1.25, "finished_at": f"2026-01-01T00:00:{trial % 60:02d}+00:00",
         "per_seed": json.dumps([{"seed": 0, "duration_s": 1.0}])}
    r.update(extra)
    return r


def table(out: Path, **kw) -> TrialsTable:
    return TrialsTable(out, ["beta", "k"], 1, {"beta": "float", "k": "int"}, **kw)


def parquet_rows(out: Path) -> int:
    return len(pd.read_parquet(out / PARQUET)) if (out / PARQUET).is_file() else 0


def journal_lines(out: Path) -> int:
    p = out / JOURNAL
    return p.read_bytes().count(b"\n") if p.is_file() else 0


# ----- appends and compaction -----------------------------------------------------------------------------------
def test_append_writes_one_fsynced_journal_line_and_compacts_on_the_ratio(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    t = table(tmp_path, compact_ratio=0.5, compact_every_s=math.inf)
    compacted_at = []
    for i in range(12):
        before = len(synced)
        t.append(row(i))
        assert len(synced) > before                        # the line is on disk before append returns
        if parquet_rows(tmp_path) == i + 1:
            compacted_at.append(i + 1)
            assert journal_lines(tmp_path) == 0            # compaction empties the journal
    # tail >= max(1, 0.5 * compacted): after 1, 2, 3, then 3 + 2, 5 + 3, 8 + 4 rows
    assert compacted_at == [1, 2, 3, 5, 8, 12]


def test_between_compactions_only_the_journal_grows(tmp_path):
    t = table(tmp_path, compact_ratio=1.0, compact_every_s=math.inf)
    for i in range(4):
        t.append(row(i))
    assert parquet_rows(tmp_path) == 4 and journal_lines(tmp_path) == 0
    parquet = (tmp_path / PARQUET).read_bytes()
    csv = (tmp_path / CSV).read_text()
    for i in range(4, 7):                                  # 3 < 1.0 * 4: not due
        t.append(row(i))
    assert (tmp_path / PARQUET).read_bytes() == parquet and (tmp_path / CSV).read_text() == csv
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    assert [json.loads(x)["row"]["trial"] for x in lines] == [4, 5, 6]
    assert [json.loads(x)["seq"] for x in lines] == [4, 5, 6]
    # readers see every row anyway: files + journal tail
    assert read_trials(tmp_path)["trial"].tolist() == list(range(7))
    t.close()                                              # the end of a study: everything compacted
    assert parquet_rows(tmp_path) == 7 and journal_lines(tmp_path) == 0


def test_time_rule_compacts_after_compact_every_s(tmp_path, monkeypatch):
    import tuning.trials as trials

    now = [1000.0]
    monkeypatch.setattr(trials.time, "monotonic", lambda: now[0])
    t = table(tmp_path, compact_ratio=100.0, compact_every_s=30.0)
    t.append(row(0))                                       # the first row: tail 1 >= max(1, 0)
    t.append(row(1))
    now[0] += 29.0
    t.append(row(2))
    assert parquet_rows(tmp_path) == 1
    now[0] += 1.0
    t.append(row(3))
    assert parquet_rows(tmp_path) == 4 and journal_lines(tmp_path) == 0


def test_resume_reads_files_plus_journal_tail_with_the_same_values_and_types(tmp_path):
    t = table(tmp_path, compact_ratio=1.0, compact_every_s=math.inf)
    rows = [row(i) for i in range(4)] + [row(4, state="failed", reason="diverged", fitness=math.nan,
                                                metric_final_accuracy=math.nan, param_beta=0.30000000000000004)]
    for r in rows:
        t.append(r)
    assert journal_lines(tmp_path) == 1                    # rows 0-3 compacted, row 4 only in the journal
    expected = t.frame()
    loaded = table(tmp_path)
    assert len(loaded.load()) == 5
    pd.testing.assert_frame_equal(loaded.frame(), expected)
    pd.testing.assert_frame_equal(read_trials(tmp_path), expected, check_like=False)
    # appending after a resume continues the sequence: nothing the files hold comes back twice
    loaded.append(row(5))
    loaded.close()
    again = table(tmp_path)
    assert [r["trial"] for r in again.load()] == [0, 1, 2, 3, 4, 5]


def test_files_are_sorted_by_trial_whatever_the_completion_order(tmp_path):
    t = table(tmp_path)
    for i in (2, 0, 3, 1):
        t.append(row(i))
    t.close()
    assert pd.read_parquet(tmp_path / PARQUET)["trial"].tolist() == [0, 1, 2, 3]
    assert pd.read_csv(tmp_path / CSV)["trial"].tolist() == [0, 1, 2, 3]
    assert [r["trial"] for r in t.rows] == [2, 0, 3, 1]    # memory keeps the completion order


def test_dropping_a_row_rewrites_the_files(tmp_path):
    """The evaluator drops a row that a resumed run does not reproduce; a journal only adds rows, so the files
    are rewritten at once and the dropped row does not come back on the next resume."""
    t = table(tmp_path, compact_ratio=10.0, compact_every_s=math.inf)
    for i in range(3):
        t.append(row(i))
    t.rows = [r for r in t.rows if r["trial"] != 1]
    assert pd.read_parquet(tmp_path / PARQUET)["trial"].tolist() == [0, 2] and journal_lines(tmp_path) == 0
    t.append(row(1, individual="other"))
    loaded = table(tmp_path).load()
    assert sorted((r["trial"], r["individual"]) for r in loaded) == [(0, "id0"), (1, "other"), (2, "id2")]


def test_setting_rows_on_a_fresh_table_writes_the_files(tmp_path):
    """A new --out joining an Optuna study that already has trials (rows from its storage) gets its table at
    once, even when no new trial runs (regression: tests/e2e/test_readme.py's PostgreSQL command)."""
    t = table(tmp_path)
    t.rows = []
    assert not (tmp_path / PARQUET).exists()               # nothing to write
    t.rows = [row(0), row(1)]
    assert pd.read_parquet(tmp_path / PARQUET)["trial"].tolist() == [0, 1]
    assert pd.read_csv(tmp_path / CSV)["trial"].tolist() == [0, 1]


def test_setting_the_same_rows_writes_nothing(tmp_path):
    t = table(tmp_path, compact_ratio=10.0, compact_every_s=math.inf)
    for i in range(3):
        t.append(row(i))
    mtime = (tmp_path / PARQUET).stat().st_mtime_ns
    t.rows = [dict(r) for r in t.rows]
    assert (tmp_path / PARQUET).stat().st_mtime_ns == mtime and journal_lines(tmp_path) == 2


def test_replace_rewrites_everything_and_empties_the_journal(tmp_path):
    t = table(tmp_path, compact_ratio=10.0, compact_every_s=math.inf)
    for i in range(3):
        t.append(row(i))
    t.replace([row(5), row(6)])
    assert pd.read_parquet(tmp_path / PARQUET)["trial"].tolist() == [5, 6] and journal_lines(tmp_path) == 0
    assert [r["trial"] for r in table(tmp_path).load()] == [5, 6]


# ----- torn and damaged journals ----------------------------------------------------------------------------------
def test_torn_last_line_is_ignored_with_a_warning_and_cut_before_the_next_append(tmp_path, caplog):
    t = table(tmp_path, compact_ratio=10.0, compact_every_s=math.inf)
    for i in range(3):
        t.append(row(i))
    t.close = lambda: None                                 # the writer dies: no final compaction
    full = json.dumps({"seq": 3, "row": row(3)}).encode()
    with open(tmp_path / JOURNAL, "ab") as fh:
        fh.write(full[: len(full) // 2])                   # killed inside its write
    assert [r["trial"] for r in read_trials(tmp_path).to_dict("records")] == [0, 1, 2]   # a reader: no error
    resumed = table(tmp_path, compact_ratio=10.0, compact_every_s=math.inf)
    with caplog.at_level(logging.WARNING, logger="tuning.trials"):
        rows = resumed.load()
    assert [r["trial"] for r in rows] == [0, 1, 2]
    assert "torn last line" in caplog.text
    assert (tmp_path / JOURNAL).read_bytes().endswith(b"\n")   # cut at the last whole line
    resumed.append(row(3))
    assert [r["trial"] for r in table(tmp_path).load()] == [0, 1, 2, 3]


def test_damaged_line_inside_the_journal_is_a_config_error(tmp_path):
    t = table(tmp_path, compact_ratio=10.0, compact_every_s=math.inf)
    for i in range(3):
        t.append(row(i))
    lines = (tmp_path / JOURNAL).read_bytes().split(b"\n")
    lines[0] = b"{not json"
    (tmp_path / JOURNAL).write_bytes(b"\n".join(lines))
    with pytest.raises(ConfigError, match="damaged trials journal at line 1"):
        table(tmp_path).load()


# ----- killed writers ------------------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import qsfl.io, tuning.trials as trials
    from tests.tuning.test_trials_journal import row, table

    where, at = sys.argv[1], int(sys.argv[2])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    calls = {{"n": 0}}
    if where == "before_compaction":              # the row is in the journal, the compaction never starts
        real = trials.TrialsTable.compact
        def compact(self):
            calls["n"] += 1
            if calls["n"] == at:
                die()
            real(self)
        trials.TrialsTable.compact = compact
    elif where == "before_truncation":            # new parquet and CSV written, the journal not yet emptied
        real_ftruncate = os.ftruncate
        def ftruncate(fd, n):
            calls["n"] += 1
            if calls["n"] == at:
                die()
            real_ftruncate(fd, n)
        trials.os.ftruncate = ftruncate
    elif where == "inside_append":                # half a journal line written
        real_write = os.write
        def write(fd, data):
            calls["n"] += 1
            if calls["n"] == at:
                real_write(fd, bytes(data[: len(data) // 2]))
                die()
            return real_write(fd, data)
        trials.os.write = write
    t = table(sys.argv[3], compact_ratio=0.5, compact_every_s=float("inf"))
    if len(sys.argv) > 4:
        t.load()
    for i in range(int(sys.argv[4]) if len(sys.argv) > 4 else 0, 40):
        t.append(row(i))
        print(i, flush=True)                       # appended (journal fsync'd) before this line
    """)


def run_child(tmp_path: Path, where: str, at: int, out: Path, start: int | None = None) -> list[int]:
    """Run the writer until it kills itself at the ``at``-th call of ``where``; the trials it reported done."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    args = [sys.executable, str(script), where, str(at), str(out)] + ([str(start)] if start is not None else [])
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return [int(x) for x in proc.stdout.split()]


@pytest.mark.parametrize("where,at", [("before_compaction", 6), ("before_truncation", 6), ("inside_append", 9)])
def test_killed_writer_loses_and_duplicates_nothing(tmp_path, where, at):
    out = tmp_path / "out"
    done = run_child(tmp_path, where, at, out)
    rows = table(out).load()
    trials = [r["trial"] for r in rows]
    assert len(trials) == len(set(trials)), trials                 # no duplicate
    assert set(done) <= set(trials)                                # every reported append survived
    assert trials == list(range(len(trials)))                      # and nothing else
    if where == "inside_append":
        assert len(trials) == len(done)                            # the torn row is not there
    else:
        assert len(trials) >= len(done)                            # maybe one appended but not yet reported
    # resumed and killed again, then finished: still each trial exactly once
    done2 = run_child(tmp_path, "before_truncation", 2, out, start=len(trials))
    assert set(done2) <= {r["trial"] for r in table(out).load()}
    final = table(out)
    final.load()
    for i in range(len(final.rows), 40):
        final.append(row(i))
    final.close()
    df = pd.read_parquet(out / PARQUET)
    assert df["trial"].tolist() == list(range(40))
    pd.testing.assert_frame_equal(df, read_trials(out))


def test_read_trials_while_a_writer_appends_and_compacts_sees_whole_tables(tmp_path):
    """A reader (qsfl report, a test polling a running study) never sees a damaged or shrinking table."""
    import threading

    t = table(tmp_path, compact_ratio=0.2, compact_every_s=math.inf)
    t.append(row(0))
    done = threading.Event()

    def write():
        for i in range(1, 100):
            t.append(row(i))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen = [1]
    while not done.is_set():
        df = read_trials(tmp_path)
        assert df["trial"].tolist() == list(range(len(df)))       # whole rows, in order, none twice
        assert len(df) >= seen[-1]                                  # never fewer than a previous read
        seen.append(len(df))
    writer.join()
    assert len(read_trials(tmp_path)) == 100 and len(seen) > 2


# ----- directories ---------------------------------------------------------------------------------------------
def test_atomic_write_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    from qsfl.io import atomic_write_text

    kinds: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert kinds == ["file", "dir"]


def test_a_new_study_refuses_a_directory_holding_only_a_journal(tmp_path):
    from tuning.study import MARKERS

    assert JOURNAL in MARKERS    # a writer killed before its first compaction leaves only the journal
