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

It also keeps a storage URL's password secret: :func:`redact` is the one helper every message, log line and file
of the project passes a URL or an error through, and :func:`resolve_url` reads a URL given as ``env:NAME`` from
the environment variable NAME, so that the password need not be on the command line or in the spec.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

ENV_PREFIX = "env:"       # --storage env:NAME: the URL is the value of the environment variable NAME
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
            log.info("opening %s raced with another process (%s); retry %d/%d", redact(url),
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


#: the password of a URL's user info (``scheme://user:PASSWORD@host``), wherever a URL appears in a text
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<password>[^@\s]*)(?=@)")
MASK = "***"
MIN_SECRET = 4               # a remembered password shorter than this is masked only inside its URL
_secrets: set[str] = set()   # passwords of the URLs resolved in this process, masked wherever they appear


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``, and every password of a URL that
    :func:`resolve_url` returned masked wherever else it appears (a driver's error message may quote it alone).
    The one helper for messages, log lines and files."""
    text = _PASSWORD.sub(lambda m: m["head"] + MASK, text)
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """A log formatter whose lines pass through :func:`redact` (the CLI's stderr, OUT/study.log)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def url_password(url: str) -> str | None:
    """The password of a URL, None if it has none."""
    m = _PASSWORD.search(url)
    return m["password"] if m and m["password"] else None


def resolve_url(value: str, field: str = "--storage") -> str:
    """The storage URL meant by ``value``: the value of the environment variable NAME for ``env:NAME``, else
    ``value`` itself. Its password is remembered, so that :func:`redact` masks it in any text from now on."""
    from qsfl.errors import ConfigError

    url = value
    if value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        url = os.environ.get(name, "")
        if not name or not url:
            raise ConfigError(f"{field}: {value!r} names the environment variable {name!r}, which is not set or "
                              f"empty; export {name or 'NAME'}=postgresql://user:password@host/db")
    password = url_password(url)
    if password:
        from urllib.parse import unquote

        # also as the driver sees it (percent-decoded); too short a string would mask ordinary words
        _secrets.update(p for p in {password, unquote(password)} if len(p) >= MIN_SECRET)
    return url


def storage_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options: a long busy timeout for SQLite, connection checks for servers."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
