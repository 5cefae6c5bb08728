"""Opening a storage under concurrency (tuning.storage): the retry loop and the error classification.

The race itself, four processes released at one instant on fresh PostgreSQL schemas, is in test_postgres.py.
"""

from __future__ import annotations

import random

import pytest
import sqlalchemy.exc

from tuning import storage


def _integrity() -> sqlalchemy.exc.IntegrityError:
    return sqlalchemy.exc.IntegrityError("CREATE TYPE studydirection", {}, Exception("duplicate key value"))


def test_open_serialised_retries_a_concurrent_creation_then_succeeds(monkeypatch):
    monkeypatch.setattr(storage, "FIRST_DELAY_S", 0.0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _integrity()
        return "study"

    assert storage.open_serialised("sqlite:///x.db", flaky, rng=random.Random(0)) == "study"
    assert len(calls) == 3


def test_open_serialised_gives_up_after_its_attempts(monkeypatch):
    monkeypatch.setattr(storage, "FIRST_DELAY_S", 0.0)
    calls = []

    def always() -> None:
        calls.append(1)
        raise _integrity()

    with pytest.raises(sqlalchemy.exc.IntegrityError):
        storage.open_serialised("sqlite:///x.db", always, attempts=4)
    assert len(calls) == 4


def test_other_errors_are_not_retried():
    calls = []

    def unreachable() -> None:
        calls.append(1)
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("could not connect to server"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        storage.open_serialised("sqlite:///x.db", unreachable)
    assert len(calls) == 1


def test_wrapped_creation_errors_are_recognised():
    try:
        try:
            raise _integrity()
        except sqlalchemy.exc.IntegrityError as inner:
            raise RuntimeError("optuna wrapper") from inner
    except RuntimeError as outer:
        assert storage.concurrent_creation_error(storage._root(outer))
    table = sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
    assert storage.concurrent_creation_error(table)
    assert not storage.concurrent_creation_error(ValueError("no"))


@pytest.mark.parametrize("url, expected", [
    ("postgresql+psycopg2://u:secret@127.0.0.1:5432/db", True),
    ("postgresql://u@host/db", True),
    ("sqlite:///study.db", False),
    ("mysql+pymysql://u:p@h/db", False),
])
def test_is_postgres(url, expected):
    assert storage.is_postgres(url) is expected


def test_redact_hides_the_password():
    assert storage.redact("postgresql://qsfl:secret@127.0.0.1:1/qsfl") == "postgresql://qsfl:***@127.0.0.1:1/qsfl"
    assert storage.redact("sqlite:///a.db") == "sqlite:///a.db"
    assert storage.redact("postgresql://qsfl@h/db and http://h:8786/x") == "postgresql://qsfl@h/db and http://h:8786/x"
    text = "qsfl tune s.toml --storage postgresql+psycopg2://u:p:w!d@h:5432/db --set optuna.storage=mysql://a:b@h/d"
    assert storage.redact(text) == ("qsfl tune s.toml --storage postgresql+psycopg2://u:***@h:5432/db "
                                    "--set optuna.storage=mysql://a:***@h/d")


def test_resolve_url_reads_env_and_remembers_the_password_for_redact(monkeypatch):
    from qsfl.errors import ConfigError

    monkeypatch.setattr(storage, "_secrets", set())
    monkeypatch.setenv("QSFL_T_URL", "postgresql://u:S3CR%40T@h/db")
    assert storage.resolve_url("env:QSFL_T_URL") == "postgresql://u:S3CR%40T@h/db"
    assert storage.redact("the driver said: password S3CR@T rejected") == "the driver said: password *** rejected"
    assert storage.resolve_url("sqlite:///a.db") == "sqlite:///a.db"
    monkeypatch.delenv("QSFL_T_URL")
    with pytest.raises(ConfigError, match="--storage: 'env:QSFL_T_URL' names the environment variable"):
        storage.resolve_url("env:QSFL_T_URL")
