"""The search space: named parameters with bounds, types and log scale, their [0,1] gene encoding, and
the repair of the NS <= K constraint.

Every parameter is encoded as one gene in [0, 1] so DEAP's bounded operators (SBX, polynomial mutation)
treat real, integer and log-scale parameters alike:

* real: ``low + g * (high - low)`` (then rounded to ``step`` when given);
* log real: ``exp(log low + g * (log high - log low))``;
* integer: ``high - low + 1`` equal-width bins over [0, 1] (so every integer is equally likely under a
  uniform gene), log integers bin the log-scaled value;
* categorical (``choices = [...]``, e.g. ``segmentation``, ``optimizer``): one equal-width bin per choice, in the
  listed order; Optuna asks ``suggest_categorical``. Its ``low``/``high`` are the first and last choice's index.

**Constraint NS <= K.** QSFL refreshes every segment in a round only if the K qualified clients' cyclic
segment ids cover 0..NS-1, so NS > K wastes segments. With ``constraint = "repair"`` (default) a point with
NS > K is evaluated with NS := K and the row records the repair (``repair = "ns 8->5"``); with
``constraint = "penalty"`` the point is not simulated at all: it is recorded as failed with the reason and
gets the worst fitness. Nothing invalid is ever evaluated silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qsfl.config import AUTHORS_DEFAULTS, QSFLConfig, SimConfig, strategy_fields
from qsfl.engine.local import OPTIMIZERS
from qsfl.errors import (
    ConfigError,
    check_bool,
    check_choice,
    check_range,
    reject_unknown,
)
from qsfl.segments import ceil_fraction
from qsfl.strategy_config import SEGMENTATIONS

PARAM_TYPES = ("float", "int", "categorical")
CONSTRAINT_MODES = ("repair", "penalty")


# Short names of config fields. A parameter's type comes from the field's annotation and its limits from the
# config's own validation (SimConfig and the strategy's config dataclass), never from a copy kept here.
KNOWN_PARAMS: dict[str, str] = {
    "beta": "strategy.beta", "k": "strategy.k", "alpha": "strategy.alpha", "ns": "strategy.ns", "p": "strategy.p",
    "lr": "lr", "local_epochs": "local_epochs", "batch_size": "batch_size", "momentum": "momentum",
    "weight_decay": "weight_decay", "downlink_p": "strategy.downlink_p", "prox_mu": "prox_mu",
    "segmentation": "strategy.segmentation", "optimizer": "optimizer",
}

# Categorical (str) config fields and their allowed values: the very tuples the config's validation checks
# against (check_choice in StrategyConfig/check_local_options), so a new segmentation or optimizer is searchable
# as soon as the config accepts it.
CATEGORICAL_FIELDS: dict[str, tuple[str, ...]] = {
    "strategy.segmentation": SEGMENTATIONS,
    "optimizer": OPTIMIZERS,
}

PARAM_KEYS = ("low", "high", "type", "log", "step", "key", "choices")

Value = float | int | str   # a searched parameter's value


@dataclass(frozen=True)
class Param:
    """One searched parameter: bounds, type, log scale, optional step, and its SimConfig key."""

    name: str
    key: str
    low: float
    high: float
    type: str = "float"
    log: bool = False
    step: float | None = None
    choices: tuple[str, ...] = ()   # categorical: the values, in gene order

    @property
    def is_int(self) -> bool:
        return self.type == "int"

    @property
    def is_categorical(self) -> bool:
        return self.type == "categorical"

    def values_to_check(self) -> list[Value]:
        """The values whose simulation proves the whole range valid: the bounds, or every choice."""
        return list(self.choices) if self.is_categorical else [self.low, self.high]

    def check_value(self, where: str, value: Any) -> None:
        """ConfigError naming ``where`` unless ``value`` is inside this parameter's range (or one of its choices)."""
        if self.is_categorical:
            check_choice(where, value, self.choices)
        else:
            check_range(where, value, self.low, self.high, integer=self.is_int)

    def decode(self, gene: float) -> Value:
        """Map a gene in [0, 1] to a value inside [low, high] (a choice for a categorical parameter)."""
        g = min(max(float(gene), 0.0), 1.0)
        if self.is_categorical:
            return self.choices[min(int(g * len(self.choices)), len(self.choices) - 1)]
        if self.is_int:
            if self.log:
                lo, hi = math.log(self.low), math.log(self.high + 1)
                return int(min(max(math.floor(math.exp(lo + g * (hi - lo))), self.low), self.high))
            n = int(self.high - self.low + 1)
            return int(self.low + min(int(g * n), n - 1))
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            value = math.exp(lo + g * (hi - lo))
        else:
            value = self.low + g * (self.high - self.low)
        if self.step:
            value = self.low + round((value - self.low) / self.step) * self.step
            value = round(value, 12)
        # 12 significant digits: encode/decode round trips exactly (a start point such as p = 0.4 stays 0.4)
        value = float(f"{value:.12g}")
        return float(min(max(value, self.low), self.high))

    def encode(self, value: Any) -> float:
        """The gene (in [0, 1]) whose decoding is ``value`` (the bin centre for integers and choices)."""
        if self.is_categorical:
            return (self.choices.index(value) + 0.5) / len(self.choices)
        if self.high == self.low:
            return 0.5
        if self.is_int and not self.log:
            n = int(self.high - self.low + 1)
            return (int(value) - self.low + 0.5) / n
        if self.log:
            if self.is_int:
                lo, hi, v = math.log(self.low), math.log(self.high + 1), math.log(int(value) + 0.5)
            else:
                lo, hi, v = math.log(self.low), math.log(self.high), math.log(value)
            return min(max((v - lo) / (hi - lo), 0.0), 1.0)
        return min(max((value - self.low) / (self.high - self.low), 0.0), 1.0)

    def suggest(self, trial: Any) -> Value:
        """Ask an Optuna trial for this parameter."""
        if self.is_categorical:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.step and not self.log:
            return trial.suggest_float(self.name, self.low, self.high, step=self.step)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """The ordered parameters of a study and how constraint violations are handled."""

    params: tuple[Param, ...]
    constraint: str = "repair"

    @property
    def dim(self) -> int:
        return len(self.params)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def decode(self, genes: list[float]) -> dict[str, Value]:
        """Genes in [0, 1]^d -> a params dict (before repair)."""
        return {p.name: p.decode(g) for p, g in zip(self.params, genes)}

    def encode(self, params: Mapping[str, Any]) -> list[float]:
        """A params dict -> genes (inverse of decode up to binning)."""
        return [p.encode(params[p.name]) for p in self.params]

    def suggest(self, trial: Any, base: SimConfig | None = None) -> dict[str, Value]:
        """Ask an Optuna trial for every parameter. With ``base`` and the NS <= K repair, ``ns`` is asked last,
        define-by-run in ``[min(low, K), min(high, K)]`` (K from the point's k or alpha): the trial's params are
        then the values evaluated, never an NS that the repair would change."""
        out: dict[str, Value] = {}
        ns = next((p for p in self.params if p.name == "ns"), None)
        bounded = ns is not None and base is not None and self.constraint == "repair" and ns_limited(base)
        k_source = next((p.name for p in self.params if p.name in ("k", "alpha")), None)
        deferred = False
        for p in self.params:   # in the space's order (a sampler's stream follows it); ns right after its K
            if bounded and p is ns:
                if k_source is not None and k_source not in out:
                    deferred = True
                    continue
                out["ns"] = self._suggest_ns(trial, out, base)
            else:
                out[p.name] = p.suggest(trial)
            if deferred and p.name == k_source:
                out["ns"] = self._suggest_ns(trial, out, base)
                deferred = False
        return {p.name: out[p.name] for p in self.params}

    def _suggest_ns(self, trial: Any, chosen: Mapping[str, Any], base: SimConfig | None) -> int:
        """ns define-by-run in [min(low, K), min(high, K)] for the K of the params chosen so far."""
        ns = next(p for p in self.params if p.name == "ns")
        assert base is not None
        k = effective_k(chosen, base)
        return int(trial.suggest_int("ns", int(min(ns.low, k)), int(min(ns.high, k)), log=ns.log))

    def overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """params -> dotted SimConfig overrides."""
        keys = {p.name: p.key for p in self.params}
        return {keys.get(name, KNOWN_PARAMS.get(name, name)): value for name, value in params.items()}

    def repair(self, params: Mapping[str, Any], base: SimConfig) -> tuple[dict[str, Any], str, str]:
        """Apply the NS <= K constraint: returns (params, repair note, penalty reason); see module doc."""
        params = dict(params)
        strategy = base.strategy
        if not isinstance(strategy, QSFLConfig) or not ns_limited(base):
            return params, "", ""
        k = effective_k(params, base)
        ns = int(params.get("ns", strategy.ns))
        if ns <= k:
            return params, "", ""
        if self.constraint == "penalty":
            return params, "", f"constraint ns <= k violated (ns={ns}, k={k}); not simulated"
        params["ns"] = k
        return params, f"ns {ns}->{k}", ""

    def defaults(self, base: SimConfig) -> dict[str, Any]:
        """The searched parameters' values at the study's baseline: the strategy's own defaults (for QSFL the
        authors', K from their alpha) for its parameters, the base config's values for the others."""
        config = base.with_overrides(baseline_overrides(base, self))
        out = {p.name: effective_k({}, config) if p.key == "strategy.k" else _get_dotted(config, p.key)
               for p in self.params}
        return {k: v for k, v in out.items() if v is not None}   # an option the base leaves unset has no default

    def strategy_fields(self) -> list[str]:
        """The strategy fields this space searches (``strategy.<field>`` keys)."""
        return [p.key.split(".", 1)[1] for p in self.params if p.key.startswith("strategy.")]

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Are all of the space's params given and inside their bounds?"""
        return all(p.name in params and (params[p.name] in p.choices if p.is_categorical else
                                         p.low <= params[p.name] <= p.high) for p in self.params)


def authors_k(base: SimConfig) -> int:
    """The authors' K on ``base``: ceil(alpha * C) with their alpha."""
    return ceil_fraction(float(AUTHORS_DEFAULTS["alpha"]), base.cohort_size)


def baseline_overrides(base: SimConfig, space: SearchSpace | None = None) -> dict[str, Any]:
    """Dotted overrides that put the base strategy's own defaults on ``base`` (QSFL: the authors', K from their
    alpha), for its :attr:`~qsfl.strategy_config.StrategyConfig.baseline_fields` and the fields ``space`` searches."""
    return type(base.strategy).baseline_overrides(space.strategy_fields() if space is not None else ())


def baseline_params(base: SimConfig, space: SearchSpace) -> dict[str, Any]:
    """The values the baseline simulates: the strategy's baseline fields (K as the qualified count it implies),
    then every searched parameter (:meth:`SearchSpace.defaults`)."""
    config = base.with_overrides(baseline_overrides(base, space))
    fields = [f for f in type(base.strategy).baseline_fields if f != "k"]
    out: dict[str, Any] = {f: getattr(config.strategy, f) for f in fields}
    if "k" in type(base.strategy).baseline_fields:
        out["k"] = effective_k({}, config)
    return {**out, **space.defaults(base)}


def ns_limited(base: SimConfig) -> bool:
    """Does the NS <= K constraint apply (QSFL with SCSS)?"""
    return isinstance(base.strategy, QSFLConfig) and base.strategy.use_scss


def effective_k(params: Mapping[str, Any], base: SimConfig) -> int:
    """The qualified count K a point implies: k, else ceil(alpha * C), capped at the cohort size C."""
    c = base.cohort_size
    if "k" in params:
        return min(int(params["k"]), c)
    if "alpha" in params:
        return min(math.ceil(float(params["alpha"]) * c), c)
    k, alpha = getattr(base.strategy, "k", QSFLConfig.k), getattr(base.strategy, "alpha", QSFLConfig.alpha)
    if k is not None:
        return min(k, c)
    return min(math.ceil(alpha * c), c)


def _get_dotted(config: SimConfig, key: str) -> Any:
    """The value of a dotted key in ``config``; None for an option the config does not set."""
    obj: Any = config
    for part in key.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part)
    return obj


def _numeric_fields() -> dict[str, str]:
    """Numeric SimConfig/StrategyConfig fields that a ``key`` may name (field -> int|float)."""
    import dataclasses

    out = {}
    for fields, prefix in ((dataclasses.fields(SimConfig), ""), (strategy_fields().values(), "strategy.")):
        for f in fields:
            t = str(f.type)
            if t in ("int", "float") or t.startswith("int |"):
                out[prefix + f.name] = "int" if t.startswith("int") else "float"
    return out


def _text_fields() -> list[str]:
    """String SimConfig/StrategyConfig fields (``optimizer``, ``strategy.selection``, ...): categorical with
    ``choices``, each choice checked by the config's own validation."""
    import dataclasses

    return [prefix + f.name for fields, prefix in ((dataclasses.fields(SimConfig), ""),
                                                   (strategy_fields().values(), "strategy."))
            for f in fields if str(f.type) in ("str", "str | None") and f.name != "name"]


OPTION_TABLES = ("dataset_options", "model_options", "partition_options")   # key = "<table>.<option>"


def _option_key(key: Any) -> bool:
    """Is ``key`` an option of the dataset, model or partition (``partition_options.alpha``)?"""
    return isinstance(key, str) and key.count(".") == 1 and key.split(".")[0] in OPTION_TABLES \
        and bool(key.split(".")[1])


def check_bound(where: str, value: Any, key: str, base: SimConfig, integer: bool, kind: str = "bound") -> None:
    """A bound (or a categorical choice: ``kind = "choice"``) is valid when ``base`` with ``key = value`` is a valid
    config: the config's own check decides, and its message is reported for ``where`` (e.g. ``space.p.low: 0.0 is out
    of range; allowed (0.0, 1.0]``)."""
    if kind == "bound":
        check_range(where, value, integer=integer)        # the type only
    try:
        base.with_overrides({key: value})
    except ConfigError as exc:
        text = str(exc)
        for prefix in (f"{key}: ", f"base.{key}: "):
            if text.startswith(prefix):
                raise ConfigError(f"{where}: {text[len(prefix):]}") from None
        raise ConfigError(f"{where}: {value!r} makes an invalid config: {text}") from None


def build_param(name: str, table: Any, base: SimConfig) -> Param:
    """Validate one ``[space.<name>]`` table into a Param."""
    where = f"space.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table with low/high, got {table!r}")
    reject_unknown(where, table, PARAM_KEYS)
    fields = _numeric_fields()
    texts = _text_fields()
    key = KNOWN_PARAMS.get(name)
    if "key" in table:
        key = table["key"]
        if not _option_key(key):
            check_choice(f"{where}.key", key, [*sorted(fields), *sorted(texts),
                                               *(f"{t}.<option>" for t in OPTION_TABLES)])
    if key is None:
        raise ConfigError(f"{where}: unknown parameter {name!r}; valid: {', '.join(KNOWN_PARAMS)}, "
                          f"or any name with key = \"<SimConfig field>\", \"strategy.<field>\" or "
                          f"\"<{'|'.join(OPTION_TABLES)}>.<option>\"")
    check_strategy_key(where, key, base)
    if _option_key(key):
        _check_option(where, key, base)
    if "choices" in table and key in fields:
        raise ConfigError(f"{where}.choices: only for categorical parameters (string fields and options such as "
                          f"{', '.join(_categorical_names())}); {name} is a number: give low and high")
    if key in CATEGORICAL_FIELDS or key in texts or table.get("type") == "categorical" or "choices" in table:
        return _categorical_param(name, table, key, base)
    if _option_key(key):   # an option's type is not declared anywhere: the bounds' (or the table's type) say it
        kind = "int" if all(isinstance(table.get(b), int) and not isinstance(table.get(b), bool)
                            for b in ("low", "high")) else "float"
        fields = {**fields, key: kind if "type" not in table else str(table["type"])}
    for req in ("low", "high"):
        if req not in table:
            raise ConfigError(f"{where}.{req}: missing; every [space.<param>] needs low and high")
    field_type = fields[key]
    ptype = table.get("type", field_type)
    check_choice(f"{where}.type", ptype, PARAM_TYPES)
    if field_type == "int" and ptype != "int":
        raise ConfigError(f"{where}.type: {name} is an integer parameter; allowed: int")
    log = table.get("log", False)
    check_bool(f"{where}.log", log)
    low, high = table["low"], table["high"]
    integer = ptype == "int"
    for bound, value in (("low", low), ("high", high)):
        check_bound(f"{where}.{bound}", value, key, base, integer)
        if key == "strategy.k":   # K is capped at the cohort size C: a larger k is the same point
            check_range(f"{where}.{bound}", value, 1, base.cohort_size, integer=True)
    if low > high:
        raise ConfigError(f"{where}: low {low!r} > high {high!r}; need low <= high")
    if log and low <= 0:
        raise ConfigError(f"{where}.low: {low!r} is out of range for log = true; allowed (0, inf)")
    step = table.get("step")
    if step is not None:
        check_range(f"{where}.step", step, 0.0, None, lo_open=True)
        if integer or log:
            raise ConfigError(f"{where}.step: only for linear float parameters (type = \"float\", log = false)")
    return Param(name=name, key=key, low=low, high=high, type=ptype, log=log,
                 step=float(step) if step is not None else None)


def check_strategy_key(where: str, key: str, base: SimConfig) -> None:
    """ConfigError naming ``where`` and the strategy when ``key`` is a ``strategy.<field>`` the base strategy lacks."""
    if not key.startswith("strategy."):
        return
    field = key.split(".", 1)[1]
    strategy = type(base.strategy)
    if field not in strategy.parameters():
        raise ConfigError(f"{where}: {field!r} is not a parameter of strategy {strategy.strategy_name!r} "
                          f"(base.strategy.name); its parameters: {', '.join(strategy.parameters()) or 'none'}")


def _check_option(where: str, key: str, base: SimConfig) -> None:
    """ConfigError naming ``where.key`` unless ``key`` is an option of the base's dataset, model or partition."""
    from qsfl.data.datasets import dataset_options
    from qsfl.data.partition import partition_options
    from qsfl.models import model_options

    table, option = key.split(".")
    kind = table.removesuffix("_options")
    name = getattr(base, kind)
    valid = {"dataset": dataset_options, "model": model_options, "partition": partition_options}[kind](name)
    if option not in valid:
        raise ConfigError(f"{where}.key: {key!r}: {option!r} is not an option of {kind} {name!r} (base.{kind}); "
                          f"its options: {', '.join(valid) or 'none'}")


def _categorical_names() -> list[str]:
    """The short names of the categorical parameters."""
    return [name for name, key in KNOWN_PARAMS.items() if key in CATEGORICAL_FIELDS]


def _categorical_param(name: str, table: Mapping[str, Any], key: str, base: SimConfig) -> Param:
    """A ``[space.<name>]`` table of a categorical parameter: ``choices`` (default: every value the config allows).

    A choice must be one of the config's allowed values (for a string field without a listed set, e.g.
    ``strategy.selection`` or an option, each choice must give a valid config on the base); whether it can be
    simulated on the base (e.g. segmentation = "count" needs a [system] model) is checked by ``tuning.validate``
    simulating every choice."""
    where = f"space.{name}"
    ptype = table.get("type", "categorical")
    check_choice(f"{where}.type", ptype, PARAM_TYPES)
    allowed = CATEGORICAL_FIELDS.get(key, ())
    if not allowed and "choices" in table and isinstance(table["choices"], (list, tuple)) and table["choices"]:
        for i, choice in enumerate(table["choices"]):
            if not isinstance(choice, str):
                raise ConfigError(f"{where}.choices[{i}]: {choice!r}; choices are names (strings)")
            check_bound(f"{where}.choices[{i}]", choice, key, base, integer=False, kind="choice")
        allowed = tuple(table["choices"])
    if not allowed:
        raise ConfigError(f"{where}.type: 'categorical' needs choices = [...] (given for any string field or "
                          f"option; listed by default for {', '.join(_categorical_names())})")
    if ptype != "categorical":
        raise ConfigError(f"{where}.type: {ptype!r}; {name} is a categorical parameter; allowed: categorical")
    extra = [k for k in ("low", "high", "log", "step") if k in table]
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: not for a categorical parameter; give choices = [...] "
                          f"(allowed: {', '.join(allowed)})")
    choices = table.get("choices", list(allowed))
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
    for i, choice in enumerate(choices):
        check_choice(f"{where}.choices[{i}]", choice, allowed)
    if len(set(choices)) != len(choices):
        raise ConfigError(f"{where}.choices: {choices!r} repeats a value")
    return Param(name=name, key=key, low=0, high=len(choices) - 1, type="categorical",
                 choices=tuple(choices))


def build_space(table: Any, base: SimConfig, constraint: str = "repair") -> SearchSpace:
    """Validate the ``[space]`` table (one sub-table per parameter, plus ``constraint``)."""
    if not isinstance(table, Mapping) or not table:
        raise ConfigError("space: expected at least one [space.<param>] table, e.g. [space.beta] low = 0.0 "
                          f"high = 1.0; known params: {', '.join(KNOWN_PARAMS)}")
    table = dict(table)
    constraint = table.pop("constraint", constraint)
    check_choice("space.constraint", constraint, CONSTRAINT_MODES)
    params = tuple(build_param(name, sub, base) for name, sub in table.items())
    names = [p.name for p in params]
    if "k" in names and "alpha" in names:
        raise ConfigError("space.alpha: search k or alpha, not both (k = ceil(alpha * C))")
    keys = [p.key for p in params]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"space: two parameters set the same config key ({', '.join(keys)})")
    return SearchSpace(params=params, constraint=constraint)
