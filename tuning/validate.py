"""Check a study before its first simulation: a missing dataset or a bound that cannot be simulated is one
``ConfigError`` line (exit code 2) before anything is written, not a study whose every evaluation fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qsfl.errors import ConfigError
from tuning.search.grid import GridSpace

STUDY_FILES = ("spec.toml", "trials.parquet", "trials.csv", "checkpoint.pkl", "study.db", "baseline.toml")


def validate_study(spec: Any) -> int:
    """Build the base config's simulation for every seed (dataset present and readable, partition, model, engine,
    strategy) and run the model on one test sample; check that every bound of the space gives a config the
    simulator accepts. Returns the model's parameter count; raises ConfigError naming what is wrong."""
    from qsfl.sim import Simulation
    from qsfl.strategies import make_strategy
    from tuning.space import baseline_overrides

    n_params = 0
    for seed in spec.study.seeds:
        config = spec.base.replace(seed=seed)
        try:
            sim = Simulation(config)
            with torch.no_grad():
                sim.model(sim.x_test[:1])
        except ConfigError as exc:
            raise ConfigError(f"base (seed {seed}): {exc}") from None
        except Exception as exc:  # noqa: BLE001 - anything that stops the simulation from starting
            raise ConfigError(f"base (seed {seed}): the simulation cannot start: {type(exc).__name__}: {exc}") \
                from None
        n_params = sim.n_params
        del sim
    if isinstance(spec.space, GridSpace):
        _validate_grid(spec, n_params)
        return n_params
    for p in spec.space.params:
        bounds = [f"choices[{i}]" for i in range(len(p.choices))] if p.is_categorical else ["low", "high"]
        for bound, value in zip(bounds, p.values_to_check()):
            try:
                config = spec.base.with_overrides(spec.space.overrides({p.name: value}))
                make_strategy(config, n_params)
            except ConfigError as exc:
                raise ConfigError(f"space.{p.name}.{bound}: {value!r} cannot be simulated: {exc}") from None
    label = type(spec.base.strategy).defaults_label()
    try:   # the baseline (the strategy's own defaults) is simulated first: it must be a valid config too
        make_strategy(spec.base.with_overrides(baseline_overrides(spec.base, spec.space)), n_params)
    except ConfigError as exc:
        raise ConfigError(f"baseline ({label}): cannot be simulated: {exc}") from None
    return n_params


def _validate_grid(spec: Any, n_params: int) -> None:
    """Every grid point's simulation can start on the first seed: its setting's data, partition and model (once
    per setting, e.g. per client count) and its strategy."""
    from qsfl.sim import Simulation
    from qsfl.strategies import make_strategy

    seed = spec.study.seeds[0]
    settings: set[str] = set()
    for point in spec.space.points():
        config = spec.base.with_overrides({**spec.space.overrides(point), "seed": seed})
        try:
            setting = config.with_overrides({"strategy": {"name": "fedavg"}})
            key = repr(sorted(setting.to_dict().items()))
            if key not in settings:
                settings.add(key)
                sim = Simulation(setting)
                with torch.no_grad():
                    sim.model(sim.x_test[:1])
                n_params = sim.n_params
                del sim
            make_strategy(config, n_params)
        except ConfigError as exc:
            raise ConfigError(f"grid: the point {point} cannot be simulated: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - anything that stops the simulation from starting
            raise ConfigError(f"grid: the point {point} cannot be simulated: {type(exc).__name__}: {exc}") from None


def check_resume(out_dir: Path) -> None:
    """``--resume`` needs a study in ``out_dir`` (ConfigError otherwise, rather than a silent fresh start)."""
    if not out_dir.is_dir() or not any((out_dir / name).exists() for name in STUDY_FILES):
        raise ConfigError(f"--resume: {out_dir} holds no study (no spec.toml, trials table or checkpoint); "
                          f"run without --resume to start one")
