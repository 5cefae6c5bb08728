"""Hyperparameter search for QSFL: DEAP GA or Optuna over a TOML study spec (see docs/tuning.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuning.spec import StudySpec, load_spec, parse_spec

__all__ = ["StudySpec", "load_spec", "parse_spec"]


def __getattr__(name: str) -> Any:
    """The spec API, imported when first used: ``import tuning.<module>`` of a light module (the CLI's parsers,
    the forkserver start) does not import torch."""
    if name in __all__:
        from tuning import spec

        value = getattr(spec, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tuning' has no attribute {name!r}")
