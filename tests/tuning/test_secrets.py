"""No secret leaves the command line (issue 24): a storage password planted on the command line, in the spec or in
an environment variable appears in no output of ``qsfl tune``: stdout, stderr, and every file under --out
(environment.json's recorded command, spec.toml, summary.json, study.log, the report)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import OPTUNA_SPEC, REPO, run_qsfl, write_spec

SECRET = "SECRETPW_24x"


def _assert_nowhere(proc, out: Path) -> None:
    assert SECRET not in proc.stdout and SECRET not in proc.stderr, (proc.stdout, proc.stderr)
    files = [f for f in out.rglob("*") if f.is_file()] if out.is_dir() else []
    leaks = [str(f) for f in files if SECRET.encode() in f.read_bytes()]
    assert not leaks, leaks


@pytest.mark.parametrize("how", ["argument", "env", "spec"])
def test_an_unreachable_database_fails_in_one_line_without_the_password(tmp_path, how):
    url = f"postgresql+psycopg2://qsfl:{SECRET}@127.0.0.1:1/db"
    spec = write_spec(tmp_path, OPTUNA_SPEC, "leak")
    extra: list[str] = []
    env = {"QSFL_TEST_STORAGE": url}
    if how == "argument":
        extra = ["--storage", url]
    elif how == "env":
        extra = ["--storage", "env:QSFL_TEST_STORAGE"]
    else:
        spec.write_text(spec.read_text().replace("[optuna]\n", f'[optuna]\nstorage = "{url}"\n'))
    out = tmp_path / "out"
    proc = run_qsfl("tune", str(spec), "--out", str(out), "-v", *extra, env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: --storage postgresql+psycopg2://qsfl:***@127.0.0.1:1/db: " in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    _assert_nowhere(proc, out)


def test_a_missing_environment_variable_is_named_not_guessed(tmp_path):
    spec = write_spec(tmp_path, OPTUNA_SPEC, "noenv")
    env = {k: v for k, v in os.environ.items() if k != "QSFL_NO_SUCH_URL"}
    proc = run_qsfl("tune", str(spec), "--out", str(tmp_path / "out"), "--storage", "env:QSFL_NO_SUCH_URL", env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --storage: 'env:QSFL_NO_SUCH_URL' names the environment variable"), \
        proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", ["argument", "env"])
def test_a_study_run_with_a_password_in_its_spec_and_command_writes_it_nowhere(tmp_path, how):
    """The study runs on SQLite (whose URLs carry no password) given by ``--storage`` (or ``env:NAME``), while a
    PostgreSQL URL with a password rides along in ``optuna.storage`` (from ``--set``, or in the spec file): it is
    part of the spec as run and of the recorded command, and must be masked in both, in study.log and the report."""
    pg = f"postgresql://qsfl:{SECRET}@127.0.0.1:1/db"
    spec = write_spec(tmp_path, OPTUNA_SPEC.replace("n_trials = 8", "n_trials = 3"), "ok")
    db = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    if how == "argument":
        extra = ["--storage", db, "--set", f"optuna.storage={pg}"]
    else:
        spec.write_text(spec.read_text().replace("[optuna]\n", f'[optuna]\nstorage = "{pg}"\n'))
        extra = ["--storage", "env:QSFL_TEST_STORAGE"]
    proc = run_qsfl("tune", str(spec), "--out", str(out), "-v", *extra, env={"QSFL_TEST_STORAGE": db}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.html").is_file() and (tmp_path / "study.db").is_file()
    _assert_nowhere(proc, out)
    assert "postgresql://qsfl:***@127.0.0.1:1/db" in (out / "spec.toml").read_text()
    if how == "argument":
        assert "optuna.storage=postgresql://qsfl:***@127.0.0.1:1/db" in (out / "environment.json").read_text()
