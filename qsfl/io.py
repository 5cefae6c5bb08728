"""Small file helpers shared by the simulator and the tuning code: atomic writes and TOML (no torch: the CLI
reads a spec with them before it imports the simulator)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qsfl.errors import ConfigError


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that a rename or a new file in it survives a power loss (POSIX; a no-op where
    directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:   # some file systems refuse fsync on a directory; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path``, fsync it, rename it over ``path``, fsync the directory.

    A reader (or a crash) never sees a half-written file: it sees the old file or the new one; once this
    returns, the new file survives a power loss.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


# ----- TOML -------------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value (bare words stay strings)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """Turn ["a.b=1", "c=x"] into {"a.b": 1, "c": "x"}; a malformed item raises ConfigError."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        out[key.strip()] = parse_value(text.strip())
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing file or bad syntax raises ConfigError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return data


def dump_toml(data: Mapping[str, Any]) -> str:
    """Serialise a nested dict as TOML text."""
    import tomli_w

    return tomli_w.dumps(dict(data))
