"""Several `qsfl tune` workers on one Optuna study in a real PostgreSQL server (marked ``postgres``).

CI starts the server with ``scripts/postgres.sh start`` and exports ``QSFL_TEST_POSTGRES_URL=$(scripts/postgres.sh
url)``; locally do the same, then ``pytest -m postgres``. Each test uses its own study name and deletes it after.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import qsfl_cmd
from test_reliability_studies import (
    OPTUNA_SPEC,
    REPO,
    kill_when,
    read_table,
    run_tune,
    tune_cmd,
    write_spec,
)

pytestmark = pytest.mark.postgres

URL_ENV = "QSFL_TEST_POSTGRES_URL"


@pytest.fixture(scope="module")
def pg_url() -> str:
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.skip(f"{URL_ENV} is not set: run scripts/postgres.sh start and "
                    f"export {URL_ENV}=$(scripts/postgres.sh url)")
    return url


@pytest.fixture
def study_name(pg_url):
    """A fresh study name; the study is deleted from the server afterwards."""
    import optuna

    name = f"reliability_{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=pg_url)


def pg_study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def counted(trial) -> bool:
    """Trials that count toward n_trials (tuning.search.optuna.counted)."""
    from tuning.search.optuna import counted as tuning_counted

    return tuning_counted(trial)


def test_postgres_script_serves_the_url(pg_url):
    import sqlalchemy

    script = REPO / "scripts" / "postgres.sh"
    assert re.fullmatch(r"postgresql\+psycopg2://\w+:[^@]+@127\.0\.0\.1:\d+/qsfl", pg_url)
    if script.is_file():   # the server this run uses is the script's: its url and status agree
        status = subprocess.run([str(script), "status"], capture_output=True, text=True, timeout=60)
        if status.returncode == 0:
            url = subprocess.run([str(script), "url"], capture_output=True, text=True, timeout=60).stdout.strip()
            assert url == pg_url
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as con:
            assert con.execute(sqlalchemy.text("SELECT current_database()")).scalar() == "qsfl"
    finally:
        engine.dispose()


def test_two_tune_processes_finish_the_budget_together_without_duplicate_or_lost_trial(pg_url, study_name,
                                                                                       tmp_path):
    spec = write_spec(tmp_path, OPTUNA_SPEC, study_name)         # n_trials = 8, TPE
    outs = [tmp_path / "machine_a", tmp_path / "machine_b"]      # as on two machines: their own --out
    procs = [subprocess.Popen(tune_cmd(spec, out, "--storage", pg_url), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for out in outs]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        errors.append(err)
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    study = pg_study(pg_url, study_name)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))                               # no duplicate trial
    done = [t for t in study.trials if counted(t)]
    assert len(done) == 8                                                  # the budget, not more, not less
    assert all(t.state.name == "COMPLETE" for t in done)
    evaluated = [t.user_attrs["params_evaluated"] for t in done]
    assert len({tuple(sorted(p.items())) for p in evaluated}) == 8          # no config evaluated twice
    tables = [read_table(out) for out in outs]
    for df in tables:
        assert df["trial"].is_unique and set(df["trial"]) <= {t.number for t in done}
    union = pd.concat(tables).drop_duplicates("trial")
    assert sorted(union["trial"]) == sorted(t.number for t in done)        # no lost trial
    assert max(len(df) for df in tables) == 8      # the last worker to finish rebuilt the whole table
    # rows describe the same trial identically, whichever worker wrote the table
    a, b = (df.set_index("trial").drop(columns=["duration_s", "finished_at"]) for df in tables)
    common = sorted(set(a.index) & set(b.index))
    pd.testing.assert_frame_equal(a.loc[common], b.loc[common])


def test_a_study_on_postgres_writes_its_password_nowhere(pg_url, study_name, tmp_path):
    """The server's generated password (scripts/postgres.sh) given as --storage appears in no output."""
    from sqlalchemy.engine import make_url

    password = make_url(pg_url).password
    assert password, "scripts/postgres.sh url has a password"
    spec = write_spec(tmp_path, OPTUNA_SPEC.replace("n_trials = 8", "n_trials = 2"), study_name)
    out = tmp_path / "out"
    proc = subprocess.run(qsfl_cmd("tune", str(spec), "--out", str(out), "-v", "--storage", pg_url), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert password not in proc.stdout + proc.stderr
    assert not [f for f in out.rglob("*") if f.is_file() and password.encode() in f.read_bytes()]


# Regression (fixed in e3fbac3): two `qsfl tune --storage URL` processes started together were both worker 0 of a
# study without trials, got the same sampler seed and proposed the same params in lockstep (measured: 8 trials,
# 4 distinct configs, each simulated twice).
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_two_fresh_workers_propose_different_params(pg_url, study_name, tmp_path):
    from tuning.search.optuna import open_study
    from tuning.spec import load_spec

    spec = load_spec(write_spec(tmp_path, OPTUNA_SPEC, study_name))
    first = open_study(spec, pg_url)    # what each `qsfl tune --storage URL` process does on start
    second = open_study(spec, pg_url)
    a, b = first.ask(), second.ask()
    pa, pb = spec.space.suggest(a), spec.space.suggest(b)
    first.tell(a, 0.0)
    second.tell(b, 0.0)
    assert pa != pb


def test_killed_worker_trial_is_retried_by_another_worker(pg_url, study_name, tmp_path):
    import optuna

    # 40 rounds: a trial lasts long enough that the kill lands inside the one seen running even on a busy
    # machine (with 8 rounds CI once saw the trial finish between the poll and the SIGKILL)
    text = OPTUNA_SPEC.replace("n_trials = 8", "n_trials = 6").replace("rounds = 2", "rounds = 40")
    text += "heartbeat_interval = 1\ngrace_period = 2\n"
    spec = write_spec(tmp_path, text, study_name)

    def mid_trial(out: Path) -> bool:   # worker A has finished two trials and simulates a third
        try:
            trials = pg_study(pg_url, study_name).get_trials(deepcopy=False)
        except KeyError:
            return False
        complete = sum(1 for t in trials if t.state.name == "COMPLETE")
        return complete >= 2 and any(t.state.name == "RUNNING" and len(t.params) == 4 for t in trials)

    kill_when(spec, tmp_path / "machine_a", mid_trial, "--storage", pg_url)
    time.sleep(3)   # longer than grace_period: A's RUNNING trial is stale now
    run_tune(spec, tmp_path / "machine_b", "--storage", pg_url)           # a second machine takes over
    study = pg_study(pg_url, study_name)
    trials = [(t.number, t.state.name, t.params, t.system_attrs, sorted(t.user_attrs)) for t in study.trials]
    done = [t for t in study.trials if counted(t)]
    assert len(done) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in done), trials
    stale = [t for t in study.trials if t.state.name == "FAIL" and not counted(t)]
    assert len(stale) == 1, trials
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == stale[0].number]
    assert len(retried) == 1 and counted(retried[0]), trials
    assert stale[0].params and retried[0].params == stale[0].params, trials          # re-run with its params
    table = read_table(tmp_path / "machine_b")
    assert sorted(table["trial"]) == sorted(t.number for t in done)


# ----- opening a storage concurrently (issue 16) ------------------------------------------------------------
RACE_SCHEMAS = 5        # fresh schemas, each an empty Optuna database
RACE_PROCESSES = 4      # processes that open each schema at the same instant


def _open_at_barrier(barrier: Any, url: str, spec_path: str, results: Any) -> None:
    """A spawned process: import everything, wait for the others, then open the study like `qsfl tune` does."""
    import traceback

    from tuning.search.optuna import open_study
    from tuning.spec import load_spec

    spec = load_spec(spec_path)
    barrier.wait(timeout=300)
    try:
        study = open_study(spec, url)
        results.put(("ok", study.study_name))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _schema_url(url: str, schema: str) -> str:
    """The URL with the connection's search_path set to ``schema`` (Optuna's tables are created there)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def test_processes_released_together_all_open_a_fresh_storage(pg_url, tmp_path):
    import multiprocessing as mp

    import sqlalchemy

    name = f"race_{uuid.uuid4().hex[:8]}"
    spec = write_spec(tmp_path, OPTUNA_SPEC, name)
    schemas = [f"qsfl_race_{uuid.uuid4().hex[:8]}" for _ in range(RACE_SCHEMAS)]
    engine = sqlalchemy.create_engine(pg_url)
    ctx = mp.get_context("spawn")
    try:
        with engine.begin() as con:
            for schema in schemas:
                con.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
        for schema in schemas:
            url = _schema_url(pg_url, schema)
            barrier = ctx.Barrier(RACE_PROCESSES)
            results = ctx.Queue()
            procs = [ctx.Process(target=_open_at_barrier, args=(barrier, url, str(spec), results))
                     for _ in range(RACE_PROCESSES)]
            for p in procs:
                p.start()
            outcomes = [results.get(timeout=600) for _ in procs]
            for p in procs:
                p.join(timeout=60)
            errors = [detail for kind, detail in outcomes if kind != "ok"]
            assert not errors, f"schema {schema}: {len(errors)} of {RACE_PROCESSES} failed:\n" + errors[0][-3000:]
            assert all(p.exitcode == 0 for p in procs)
            with engine.connect() as con:   # one study, created once, in the schema the processes shared
                count = con.execute(sqlalchemy.text(f"SELECT count(*) FROM {schema}.studies "
                                                    f"WHERE study_name = :n"), {"n": name}).scalar()
            assert count == 1
    finally:
        with engine.begin() as con:
            for schema in schemas:
                con.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()
