"""Grid studies (``study.engine = "grid"``): every combination of the ``[grid]`` factors, each on every seed of
``study.seeds``, through the same loop as the searchers (lockstep batches, ``--workers`` / ``--cluster``, the trials
journal, kill -9 and ``--resume``).

A factor is any config key, dotted as in ``--set`` (``clients``, ``partition_options.alpha``, ``strategy.ns``,
``local_epochs``), with a list of levels; the optional ``arms`` factor has labelled levels that are whole strategy
tables (each replaces ``[base.strategy]``; unset fields take that strategy's own defaults)::

    [grid]
    mode = "product"              # every combination (default); "zip": the i-th level of every factor together
    [grid.factors]
    clients = [10, 20, 30]
    "partition_options.alpha" = [0.1, 1.0]
    [grid.arms]
    FedAvg = { name = "fedavg" }
    QSFL = { name = "qsfl" }

Points are ordered as :func:`itertools.product` orders them, the factors in the order written and the arms last
(fastest varying). A point's params are ``{key: level, ..., "arm": label}``; the trials table has a ``param_<key>``
column per factor and ``param_arm``. Nothing is repaired (a grid evaluates what it is given: NS > K is a valid,
if incompletely covered, QSFL config) and there is nothing to choose: no baseline and no validation stage.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qsfl.config import SimConfig
from qsfl.errors import ConfigError, check_choice, check_range, check_table, reject_unknown
from qsfl.sim import PER_CONFIG_FIELDS
from qsfl.strategy_config import strategy_config
from tuning.objective import Evaluation
from tuning.search.base import Candidate, SearchContext, Searcher, register
from tuning.space import Param, SearchSpace

MODES = ("product", "zip")
GRID_KEYS = ("mode", "factors", "arms", "batch_size")
ARM = "arm"          # the param name of the arms factor (trials column param_arm)
PER_CONFIG_PREFIXES = tuple(f"{f}." for f in PER_CONFIG_FIELDS)   # e.g. strategy.ns
Level = int | float | str | bool


@dataclass(frozen=True)
class GridSettings:
    """The ``[grid]`` table, checked for its shape (the levels are checked against the base config by
    :func:`build_grid_space`)."""

    mode: str = "product"
    factors: tuple[tuple[str, tuple[Level, ...]], ...] = ()
    arms: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    batch_size: int = 0           # points asked at once; 0: consecutive points of one simulation shape


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"partition_options": {"alpha": [...]}}`` and ``{"partition_options.alpha": [...]}`` both give the dotted
    key ``partition_options.alpha`` (TOML's dotted keys are nested tables)."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, dotted + ".")
        else:
            out.append((dotted, value))
    return out


def parse_grid_settings(table: Any) -> GridSettings:
    """Validate the shape of ``[grid]``: factors are lists of distinct scalar levels, arms strategy tables."""
    t = check_table("grid", table)
    reject_unknown("grid", t, GRID_KEYS)
    mode = t.get("mode", "product")
    check_choice("grid.mode", mode, MODES)
    batch = t.get("batch_size", 0)
    check_range("grid.batch_size", batch, 0, None, integer=True)
    factors = []
    keys: set[str] = set()
    for key, levels in _flatten(check_table("grid.factors", t.get("factors", {}))):
        where = f"grid.factors.{key}"
        if key == ARM:
            raise ConfigError(f"{where}: {ARM!r} is the arms factor; give the arms as [grid.arms] tables")
        if key in keys:
            raise ConfigError(f"{where}: given twice (as a dotted key and as a table)")
        keys.add(key)
        if not isinstance(levels, list) or not levels:
            raise ConfigError(f"{where}: expected a non-empty list of levels, e.g. [10, 20, 30], got {levels!r}")
        for i, level in enumerate(levels):
            if not isinstance(level, int | float | str | bool):
                raise ConfigError(f"{where}[{i}]: expected a number, a string or true/false, got {level!r}; "
                                  "whole strategy tables are [grid.arms]")
        if len({repr(v) for v in levels}) != len(levels):
            raise ConfigError(f"{where}: {levels!r} repeats a level")
        factors.append((key, tuple(levels)))
    arms = []
    for label, arm in check_table("grid.arms", t.get("arms", {})).items():
        where = f"grid.arms.{label}"
        check_table(where, arm, "a strategy table such as { name = \"qsfl\", use_scss = false }")
        if "name" not in arm:
            raise ConfigError(f"{where}.name: missing; an arm is a whole strategy table with its name")
        arms.append((str(label), dict(arm)))
    if not factors and not arms:
        raise ConfigError("grid: no factors; give [grid.factors] (key = [levels]) and/or [grid.arms] (label = "
                          "strategy table)")
    if mode == "zip":
        sizes = {key: len(levels) for key, levels in factors} | ({ARM: len(arms)} if arms else {})
        if len(set(sizes.values())) > 1:
            raise ConfigError(f"grid.mode: 'zip' needs every factor with the same number of levels; got "
                              f"{', '.join(f'{k}: {n}' for k, n in sizes.items())}")
    return GridSettings(mode=mode, factors=tuple(factors), arms=tuple(arms), batch_size=int(batch))


@dataclass(frozen=True)
class GridSpace(SearchSpace):
    """The points of a grid as a search space: the loop and the Evaluator ask it for a point's overrides and the
    trials table for its param names and types; there is no repair and no default point."""

    settings: GridSettings = GridSettings()

    @property
    def has_arms(self) -> bool:
        return bool(self.settings.arms)

    def points(self) -> list[dict[str, Any]]:
        """Every grid point's params, in order (see the module docstring)."""
        s = self.settings
        axes: list[tuple[str, Sequence[Any]]] = [(k, v) for k, v in s.factors]
        if s.arms:
            axes.append((ARM, [label for label, _ in s.arms]))
        names = [k for k, _ in axes]
        combos = itertools.product(*(v for _, v in axes)) if s.mode == "product" else zip(*(v for _, v in axes))
        return [dict(zip(names, combo)) for combo in combos]

    def overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A point's dotted SimConfig overrides: its arm's strategy table first, then the factors' levels."""
        out: dict[str, Any] = {}
        if ARM in params:
            out["strategy"] = dict(dict(self.settings.arms)[str(params[ARM])])
        out.update({k: v for k, v in params.items() if k != ARM})
        return out

    def repair(self, params: Mapping[str, Any], base: SimConfig) -> tuple[dict[str, Any], str, str]:
        """A grid evaluates its points as given."""
        return dict(params), "", ""

    def defaults(self, base: SimConfig) -> dict[str, Any]:
        """A grid has no default point (no baseline)."""
        return {}

    def strategy_fields(self) -> list[str]:
        return []

    def contains(self, params: Mapping[str, Any]) -> bool:
        return dict(params) in self.points()


def _param(key: str, levels: Sequence[Level]) -> Param:
    """The trials-table column type of a factor: int, float, or the levels' names (strings, true/false)."""
    numbers = [float(v) for v in levels if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) == len(levels):
        kind = "int" if all(isinstance(v, int) for v in levels) else "float"
        return Param(name=key, key=key, low=min(numbers), high=max(numbers), type=kind)
    return Param(name=key, key=key, low=0, high=len(levels) - 1, type="categorical",
                 choices=tuple(str(v) for v in levels))


def build_grid_space(settings: GridSettings, base: SimConfig) -> GridSpace:
    """The grid of ``settings`` on ``base``; every arm, every level and every point is checked here (a ConfigError
    naming the arm, the factor key and the level, or the point), before the first simulation."""
    arms = settings.arms or (("", {}),)
    for label, table in arms:
        arm_base = base
        if label:
            try:
                strategy_config(dict(table))     # its own fields only (with_overrides drops another's silently)
                arm_base = base.with_overrides({"strategy": dict(table)})
            except ConfigError as exc:
                raise ConfigError(f"grid.arms.{label}: {exc}") from None
        for key, levels in settings.factors:
            for i, level in enumerate(levels):
                try:
                    arm_base.with_overrides({key: level})
                except ConfigError as exc:
                    on = f" (arm {label})" if label else ""
                    raise ConfigError(f"grid.factors.{key}[{i}]{on}: {level!r}: {exc}") from None
    params = [_param(key, levels) for key, levels in settings.factors]
    if settings.arms:
        params.append(Param(name=ARM, key="strategy", low=0, high=len(settings.arms) - 1, type="categorical",
                            choices=tuple(label for label, _ in settings.arms)))
    space = GridSpace(params=tuple(params), settings=settings)
    for point in space.points():
        try:
            base.with_overrides(space.overrides(point))
        except ConfigError as exc:
            raise ConfigError(f"grid: the point {point} is not a valid config: {exc}") from None
    return space


def _shape(point: Mapping[str, Any]) -> dict[str, Any]:
    """What a point's simulation shares with the points it can run in lockstep with: every level but the arm's and
    the strategy's (:data:`qsfl.sim.PER_CONFIG_FIELDS`)."""
    return {k: v for k, v in point.items() if k != ARM and not k.startswith(PER_CONFIG_PREFIXES)
            and k not in PER_CONFIG_FIELDS}


@register
class GridSearcher(Searcher):
    """Asks the grid's points in order, each once; learns nothing."""

    name = "grid"
    section = "grid"
    settings_type = GridSettings

    def __init__(self, settings: GridSettings, ctx: SearchContext) -> None:
        super().__init__(settings, ctx)
        if not isinstance(ctx.space, GridSpace):
            raise ConfigError("study.engine: 'grid' needs a [grid] table (the study's points)")
        self.points = ctx.space.points()
        self.asked = 0

    @classmethod
    def parse_settings(cls, table: Mapping[str, Any], *, dim: int, n_objectives: int, rounds: int) -> GridSettings:
        if not table:
            return GridSettings()
        return parse_grid_settings(table)

    def ask(self, n: int) -> list[Candidate]:
        """The next ``n`` points; without ``grid.batch_size``, the next run of points that share a simulation shape
        (they differ only in the strategy: one lockstep group per seed), so their rows come batch by batch."""
        todo = self.points[self.asked:self.asked + max(n, 1)]
        if not self.settings.batch_size and todo:
            shape = _shape(todo[0])
            todo = list(itertools.takewhile(lambda p: _shape(p) == shape, todo))
        self.asked += len(todo)
        return [Candidate(dict(p)) for p in todo]

    def tell(self, candidates: Sequence[Candidate], evaluations: Sequence[Evaluation]) -> None:
        """A grid learns nothing."""

    def state(self) -> dict[str, Any]:
        return {"asked": self.asked}

    def restore(self, state: dict[str, Any]) -> None:
        self.asked = int(state["asked"])

    def finished(self) -> bool:
        return self.asked >= len(self.points)

    def batch_size(self) -> int:
        return self.settings.batch_size or len(self.points)   # 0: ask() cuts the batch at the next shape

    def expected_evaluations(self) -> int:
        return len(self.points)

    def progress(self) -> tuple[int, int | None]:
        return self.asked, len(self.points)
