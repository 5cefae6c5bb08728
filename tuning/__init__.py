"""Hyperparameter search for QSFL: DEAP GA or Optuna over a TOML study spec (see docs/tuning.md)."""

from tuning.spec import StudySpec, load_spec, parse_spec

__all__ = ["StudySpec", "load_spec", "parse_spec"]
