"""Opening an Optuna RDB storage safely when many processes start at the same moment.

Optuna creates its schema (tables, PostgreSQL enum types) the first time an ``RDBStorage`` opens an empty
database, and several processes doing that at once race: all but one fail with a unique-constraint error
(optuna/optuna#1092; the maintainers' answer is to create the schema once before the workers start). Every
``qsfl tune --storage URL`` process is such a first opener, so the whole open (schema creation,
``create_study(load_if_exists=True)`` and the study's user attributes) runs

* under a PostgreSQL session-level advisory lock (:data:`LOCK_KEY`) on a connection of its own, so the
  openers of one database take turns (a lock held by a killed process is released with its connection);
* inside a retry loop with jittered exponential backoff on the integrity/programming/operational errors of a
  concurrent creation, for the databases without advisory locks (SQLite, MySQL).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

LOCK_KEY = 0x5153_464C   # "QSFL": the advisory lock every qsfl-tune process takes to open a storage
ATTEMPTS = 8              # tries of an open that fails with a concurrent-creation error
FIRST_DELAY_S = 0.05      # backoff before the second try; doubles each time, with jitter

T = TypeVar("T")


def is_postgres(url: str) -> bool:
    """Does the SQLAlchemy URL name a PostgreSQL database (any driver)?"""
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock :data:`LOCK_KEY` for the block (a no-op for other databases)."""
    if not is_postgres(url):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            con.commit()   # the lock belongs to the session, not to the transaction
            try:
                yield
            finally:
                con.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                con.commit()
    finally:
        engine.dispose()


def concurrent_creation_error(exc: BaseException) -> bool:
    """Is ``exc`` what a schema or study created by another process at the same moment raises?

    Integrity and programming errors (a duplicate table, type or study row); operational errors only when they
    say so (SQLite's and MySQL's "table ... already exists", a locked database), never for an unreachable
    server, which fails at once.
    """
    import sqlalchemy.exc

    if isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)):
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        text = str(exc).lower()
        return any(word in text for word in ("already exists", "duplicate", "database is locked"))
    return False


def open_serialised(url: str, open_fn: Callable[[], T], *, attempts: int = ATTEMPTS,
                    rng: random.Random | None = None) -> T:
    """``open_fn()`` under :func:`creation_lock`, retried with backoff on a concurrent-creation error."""
    rng = rng or random.Random()
    delay = FIRST_DELAY_S
    for attempt in range(1, attempts + 1):
        try:
            with creation_lock(url):
                return open_fn()
        except Exception as exc:
            if attempt == attempts or not concurrent_creation_error(_root(exc)):
                raise
            log.info("opening %s raced with another process (%s); retry %d/%d", _redact(url),
                     type(_root(exc)).__name__, attempt, attempts - 1)
            time.sleep(delay * (1 + rng.random()))
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _root(exc: BaseException) -> BaseException:
    """The SQLAlchemy error under Optuna's wrappers (``raise ... from``), or ``exc`` itself."""
    seen = exc
    while seen.__cause__ is not None and "sqlalchemy" not in type(seen).__module__:
        seen = seen.__cause__
    return seen if "sqlalchemy" in type(seen).__module__ else exc


def _redact(url: str) -> str:
    """The URL without its password, for log lines."""
    head, sep, tail = url.partition("://")
    if "@" not in tail:
        return url
    cred, _, host = tail.rpartition("@")
    return f"{head}{sep}{cred.split(':', 1)[0]}:***@{host}"


def storage_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options: a long busy timeout for SQLite, connection checks for servers."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
