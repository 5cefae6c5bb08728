"""ConfigError and the checks every module uses to validate its inputs.

Every message names the field, the value received and what is allowed, so a CLI can print it as one line and
exit with code 2. This module imports nothing from the project: the config, the registries (datasets,
partitions, models, strategies) and the tuning layer all import their checks from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and the allowed range."""


def _check_number(name: str, value: Any, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}: expected {kind}, got {value!r} ({type(value).__name__})")
    if not integer and not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")


def format_range(lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False) -> str:
    """An interval as the messages write it: ``[0.0, 1.0]``, ``(0.0, inf]``."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    lo_s = "-inf" if lo is None else repr(lo)
    hi_s = "inf" if hi is None else repr(hi)
    return f"{left}{lo_s}, {hi_s}{right}"


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                integer: bool = False, lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a number (integer if asked) inside the given interval."""
    _check_number(name, value, integer=integer)
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        raise ConfigError(f"{name}: {value!r} is out of range; allowed "
                          f"{format_range(lo, hi, lo_open=lo_open, hi_open=hi_open)}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name}: unknown value {value!r}; valid: {', '.join(choices)}")


def check_bool(name: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is a bool (TOML true/false)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")


def check_table(name: str, value: Any, what: str = "a table") -> Mapping[str, Any]:
    """``value`` if it is a table (a mapping), else ConfigError."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected {what}, got {value!r}")
    return value


def reject_unknown(where: str, keys: Iterable[str], valid: Sequence[str], *, what: str = "key",
                   owner: str = "", hint: str = "", qualify: bool = True) -> None:
    """Raise ConfigError for the first of ``keys`` not in ``valid``: the one message of every unknown-name check.

    ``where`` prefixes the names (``"strategy"`` -> ``strategy.gamma``), ``what`` says what they are (key,
    option, metric), ``owner`` whose they are (``"of partition 'iid'"``) and ``hint`` what to do instead;
    ``qualify`` lists the valid names with the ``where`` prefix (keys) or bare (options).
    Example: ``strategy.gamma: unknown key; valid keys: strategy.name, strategy.beta, ...``.
    """
    prefix = f"{where}." if where else ""
    for key in keys:
        if key not in valid:
            listed = ", ".join((prefix if qualify else "") + v for v in valid) or "none"
            about = f" {owner}" if owner else ""
            raise ConfigError(f"{prefix}{key}: unknown {what}{about}; valid {what}s: {listed}"
                              + (f"; {hint}" if hint else ""))


def check_options(field: str, kind: str, name: str, options: Any, valid: Sequence[str], hint: str = "") -> None:
    """Raise ConfigError unless ``options`` is a table whose names (the options of ``kind`` ``name``) are ``valid``."""
    names = sorted(check_table(field, options, "a table of options"))
    reject_unknown(field, names, valid, what="option", owner=f"of {kind} {name!r}", hint=hint, qualify=False)
