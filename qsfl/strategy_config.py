"""Each strategy's own validated config dataclass, and the registry of strategy names.

``StrategyConfig(name="qsfl", beta=0.5)`` builds the named strategy's config class (here
:class:`QSFLConfig`), so the TOML/dict form stays one ``[strategy]`` table with ``name`` plus that
strategy's fields. A field of another strategy is a ConfigError (after its value is checked, so a bad
value is reported as such); a field of no strategy is an unknown key. The registry here is the one
list of strategy names: :func:`qsfl.strategies.register_strategy` adds a user's strategy (config and
implementation) to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from qsfl.authors_code import ROUND_FUNCTION_SWITCHES, SWITCHES, VARIANTS, Options, resolve_options
from qsfl.errors import ConfigError, check_bool, check_choice, check_range, reject_unknown

SELECTIONS = ("topk", "percentile")
RELEVANCES = ("update", "weights")
AGGREGATES = ("delta", "official")
INDEX_ENCODINGS = ("auto", "int32", "bitmap")
SEGMENTATIONS = ("fixed", "count", "size")   # QSFL's dynamic segmentation (qsfl.segments)

# The QSFL authors' hyperparameters (their code's hard-coded values; the paper's defaults): the defaults of
# QSFLConfig and the baseline of every tuning study. K is ceil(alpha * cohort size).
AUTHORS_DEFAULTS: Mapping[str, float | int] = MappingProxyType({"beta": 0.9, "alpha": 0.7, "ns": 6, "p": 0.4})

_CONFIGS: dict[str, type[StrategyConfig]] = {}   # name -> config class, in registration order


@dataclass(frozen=True)
class StrategyConfig:
    """Base of every strategy's config; ``StrategyConfig(name=..., **fields)`` builds that strategy's class."""

    name: str = "fedavg"

    strategy_name: ClassVar[str] = ""   # the registered name of a concrete config class
    # Fields a tuning study's baseline ("the defaults") always resets to this class's defaults, searched or not
    # (QSFL: the authors' beta, alpha, ns and p, K from alpha); a searched field not listed is reset as well.
    baseline_fields: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> StrategyConfig:
        if cls is not StrategyConfig:
            return super().__new__(cls)
        if args:
            raise TypeError("StrategyConfig takes keyword arguments only (name=..., field=...)")
        target = config_class(kwargs.get("name", "fedavg"))
        check_keys(target, kwargs)
        return super().__new__(target)   # Python then runs target.__init__(**kwargs)

    def __post_init__(self) -> None:
        if type(self) is StrategyConfig:
            raise TypeError("StrategyConfig is abstract: give a registered strategy name")
        if self.name != self.strategy_name:
            raise ConfigError(f"strategy.name: {self.name!r} does not match {type(self).__name__} "
                              f"(strategy {self.strategy_name!r})")
        self.validate()

    def validate(self) -> None:
        """Check this strategy's own fields (ConfigError naming ``strategy.<field>``)."""

    @classmethod
    def parameters(cls) -> list[str]:
        """This strategy's own parameters (the keys of its ``[strategy]`` table after ``name``)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "name"]

    @classmethod
    def field_default(cls, field: str) -> Any:
        """The default of one of this strategy's fields; ConfigError naming the strategy if it has no such field."""
        found = next((f for f in dataclasses.fields(cls) if f.name == field and f.name != "name"), None)
        if found is None:
            raise ConfigError(f"strategy.{field}: not a parameter of strategy {cls.strategy_name!r}; its parameters: "
                              f"{', '.join(cls.parameters()) or 'none'}")
        return found.default

    @classmethod
    def baseline_overrides(cls, searched: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
        """Dotted overrides that put this strategy's defaults on a config: every :attr:`baseline_fields` field and
        every ``searched`` one back to its class default (the baseline of a tuning study)."""
        fields = dict.fromkeys([*cls.baseline_fields, *searched])
        return {f"strategy.{name}": cls.field_default(name) for name in fields}

    @classmethod
    def defaults_label(cls) -> str:
        """How tables and reports name this strategy's defaults (the baseline of a study tuning it)."""
        return f"{cls.strategy_name} with its own defaults"

    def check_simulation(self, clients: int, system: Any = None) -> None:
        """Check the fields that depend on the simulation (e.g. a count of at most ``clients``; ``system``: the
        simulation's :class:`~qsfl.system.SystemConfig` or None)."""


def register_config(cls: type[StrategyConfig]) -> type[StrategyConfig]:
    """Add a strategy's config class under ``cls.strategy_name`` (its ``name`` field default)."""
    name = cls.strategy_name
    if not name or not dataclasses.is_dataclass(cls) or not issubclass(cls, StrategyConfig):
        raise TypeError(f"{cls.__name__}: a strategy config is a dataclass subclass of StrategyConfig "
                        f"with a strategy_name")
    default = next(f.default for f in dataclasses.fields(cls) if f.name == "name")
    if default != name:
        raise TypeError(f"{cls.__name__}: its name field defaults to {default!r}, not {name!r}")
    known = _CONFIGS.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"strategy {name!r} is already registered ({known.__name__})")
    _CONFIGS[name] = cls
    return cls


def strategy_names() -> tuple[str, ...]:
    """Every registered strategy name, in registration order."""
    return tuple(_CONFIGS)


def config_class(name: Any) -> type[StrategyConfig]:
    """The config class of strategy ``name`` (ConfigError naming ``strategy.name`` if unknown)."""
    check_choice("strategy.name", name, strategy_names())
    return _CONFIGS[name]


def field_names(cls: type[StrategyConfig]) -> list[str]:
    """The keys of a strategy's ``[strategy]`` table (``name`` first)."""
    return [f.name for f in dataclasses.fields(cls)]


def strategy_fields() -> dict[str, dataclasses.Field]:
    """Every field of every registered strategy config (the first strategy's declaration of a shared one)."""
    out: dict[str, dataclasses.Field] = {}
    for cls in _CONFIGS.values():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, f)
    return out


def check_keys(cls: type[StrategyConfig], data: Mapping[str, Any]) -> None:
    """Raise ConfigError for a key of ``data`` that is no field of strategy ``cls``.

    A key of another strategy has its value checked there first (a bad value is named as such), then is
    rejected with a hint naming the strategies it belongs to.
    """
    valid = field_names(cls)
    for key in data:
        if key in valid:
            continue
        owners = [other for other in _CONFIGS.values() if key in field_names(other)]
        for other in owners:
            other(**{"name": other.strategy_name, key: data[key]})   # raises if the value itself is bad
        hint = f"{key!r} is a key of strategy {', '.join(o.strategy_name for o in owners)}" if owners else ""
        reject_unknown("strategy", [key], valid, owner=f"of strategy {cls.strategy_name!r}", hint=hint)


def strategy_config(data: Mapping[str, Any]) -> StrategyConfig:
    """The config of the ``[strategy]`` table ``data`` (name plus that strategy's fields)."""
    return StrategyConfig(**dict(data))


# ----- the built-in strategies' configs --------------------------------------------------------------------

@register_config
@dataclass(frozen=True)
class FedAvgConfig(StrategyConfig):
    """FedAvg: every sampled client uploads its dense update. No parameters of its own."""

    name: str = "fedavg"
    strategy_name: ClassVar[str] = "fedavg"


@register_config
@dataclass(frozen=True)
class TopKConfig(StrategyConfig):
    """Top-k sparsification: every sampled client sends the top-p of its whole update."""

    name: str = "topk"
    p: float = AUTHORS_DEFAULTS["p"]   # share of entries sent (the QSFL authors' p, as before the split)
    error_feedback: bool = False  # keep what was not sent and add it to the next update
    index_encoding: str = "auto"  # "auto" | "int32" | "bitmap" (see qsfl.comm)

    strategy_name: ClassVar[str] = "topk"

    def validate(self) -> None:
        check_range("strategy.p", self.p, 0.0, 1.0, lo_open=True)
        check_bool("strategy.error_feedback", self.error_feedback)
        check_choice("strategy.index_encoding", self.index_encoding, INDEX_ENCODINGS)


@register_config
@dataclass(frozen=True)
class QSFLConfig(StrategyConfig):
    """QSFL: Qualification Judgment + Sparse Cyclic Sliding Segment (defaults are the QSFL authors')."""

    name: str = "qsfl"
    # Qualification Judgment
    use_qj: bool = True
    beta: float = AUTHORS_DEFAULTS["beta"]
    k: int | None = None          # qualified count; None -> ceil(alpha * cohort size)
    alpha: float = AUTHORS_DEFAULTS["alpha"]
    # Sparse Cyclic Sliding Segment
    use_scss: bool = True
    ns: int = int(AUTHORS_DEFAULTS["ns"])
    p: float = AUTHORS_DEFAULTS["p"]
    error_feedback: bool = False
    index_encoding: str = "auto"
    # "default" (this project) or "authors_code" (the authors' released code, qsfl/authors_code.py);
    # each field below left unset (None) takes the variant's value, a set one overrides it alone
    variant: str = "default"
    selection: str | None = None       # "topk": the K best scores; "percentile": scores >= (1-alpha) percentile
    relevance: str | None = None       # "update": sign(d_i) vs sign(g_{t-1}); "weights": sign(w_i) vs sign(w_t)
    aggregate: str | None = None       # "delta": base + mean sparse update; "official": mean sparse weights
    rank_by: str | None = None         # top-p of |w_i - w_t| ("update") or of |w_i| ("weights")
    k_rounding: str | None = None      # "ceil": ceil(p*size); "round": round(p*size), 0 -> whole segment
    segment_layout: str | None = None  # "array_split" or "authors" (round(n/NS) each, tail never sent)
    base: str | None = None            # unsent segments keep w_t ("global") or a fixed model ("pretrained")
    client_numbering: int | None = None  # segment (t + id + client_numbering) mod NS: 0 or 1
    tie_break: str | None = None       # equal |value| at the top-p cut: "low" or "high" index kept
    segment_mean: str | None = None    # per-segment mean "weighted" by samples or "plain"
    upload: str | None = None          # who uploads a sparse segment: "qualified" or "all" sampled clients
    # Symmetric downlink compression: 1 = the dense downlink (default); below 1 each sampled client receives the
    # top-p of its cyclic segment of the change in the global model since it last synchronised
    downlink_p: float = 1.0
    # Dynamic segmentation (qsfl.segments): "fixed" = NS segments for everyone; "count" = each client its own number
    # of segments, "size" = each client its own window length, both from r_i = clip(ns * median uplink / uplink_i,
    # ns_min, ns_max) (needs a system model for the uplink bandwidths). The downlink uses the same frames.
    segmentation: str = "fixed"
    ns_min: int = 1               # bounds of r_i (ns_min <= ns <= ns_max); "count"/"size" only
    ns_max: int | None = None     # None: no upper bound (a count is at most the parameter count)

    strategy_name: ClassVar[str] = "qsfl"
    baseline_fields: ClassVar[tuple[str, ...]] = ("k", "beta", "alpha", "ns", "p")

    @classmethod
    def defaults_label(cls) -> str:
        return "QSFL with the authors' defaults"

    def validate(self) -> None:
        check_bool("strategy.use_qj", self.use_qj)
        check_bool("strategy.use_scss", self.use_scss)
        check_bool("strategy.error_feedback", self.error_feedback)
        check_range("strategy.beta", self.beta, 0.0, 1.0)
        if self.k is not None:
            check_range("strategy.k", self.k, 1, None, integer=True)
        check_range("strategy.alpha", self.alpha, 0.0, 1.0, lo_open=True)
        check_range("strategy.ns", self.ns, 1, None, integer=True)
        check_range("strategy.p", self.p, 0.0, 1.0, lo_open=True)
        check_choice("strategy.index_encoding", self.index_encoding, INDEX_ENCODINGS)
        check_choice("strategy.variant", self.variant, VARIANTS)
        check_range("strategy.downlink_p", self.downlink_p, 0.0, 1.0, lo_open=True)
        self._check_segmentation()
        switched = self.options.round_function_switches()    # also validates every option set
        needs_ours = [what for what, used in (("error_feedback: true", self.error_feedback),
                                              (f"downlink_p: {self.downlink_p!r}", self.downlink_p < 1.0),
                                              (f"segmentation: {self.segmentation!r}", self.segmentation != "fixed"))
                      if used]
        if switched and needs_ours:
            what = needs_ours[0]
            raise ConfigError(f"strategy.{what} is not available with strategy.{switched[0]}="
                              f"{getattr(self.options, switched[0])!r}; it needs this project's "
                              f"{', '.join(f'{n}={SWITCHES[n][0]!r}' for n in ROUND_FUNCTION_SWITCHES)}")

    @property
    def options(self) -> Options:
        """The QSFL options: the variant's preset with every field set here overriding it."""
        return resolve_options(self.variant, {name: getattr(self, name) for name in SWITCHES})

    def _check_segmentation(self) -> None:
        check_choice("strategy.segmentation", self.segmentation, SEGMENTATIONS)
        check_range("strategy.ns_min", self.ns_min, 1, self.ns, integer=True)
        if self.ns_max is not None:
            check_range("strategy.ns_max", self.ns_max, self.ns, None, integer=True)
        if self.segmentation == "fixed":
            if self.ns_min != 1 or self.ns_max is not None:
                field, value = ("ns_min", self.ns_min) if self.ns_min != 1 else ("ns_max", self.ns_max)
                raise ConfigError(f"strategy.{field}: {value!r} applies to strategy.segmentation 'count' or 'size' "
                                  f"only, not 'fixed'")
        elif not self.use_scss:
            raise ConfigError(f"strategy.segmentation: {self.segmentation!r} needs strategy.use_scss = true "
                              f"(segments are SCSS's); allowed without SCSS: 'fixed'")

    def check_simulation(self, clients: int, system: Any = None) -> None:
        if self.k is not None and self.k > clients:
            raise ConfigError(f"strategy.k: {self.k} is out of range; allowed [1, {clients}] "
                              f"(at most the number of clients)")
        if self.segmentation != "fixed" and system is None:
            raise ConfigError(f"strategy.segmentation: {self.segmentation!r} needs the clients' uplink bandwidths "
                              f"from a system model: add a [system] table (SimConfig.system); allowed without "
                              f"one: 'fixed'")


@register_config
@dataclass(frozen=True)
class RandKConfig(StrategyConfig):
    """Random-k sparsification: every sampled client sends ceil(p * n) entries of its update chosen uniformly
    at random (unscaled; Stich, Cordonnier & Jaggi 2018 pair it with error feedback)."""

    name: str = "randk"
    p: float = AUTHORS_DEFAULTS["p"]
    error_feedback: bool = False
    index_encoding: str = "auto"

    strategy_name: ClassVar[str] = "randk"

    def validate(self) -> None:
        check_range("strategy.p", self.p, 0.0, 1.0, lo_open=True)
        check_bool("strategy.error_feedback", self.error_feedback)
        check_choice("strategy.index_encoding", self.index_encoding, INDEX_ENCODINGS)


@register_config
@dataclass(frozen=True)
class QSGDConfig(StrategyConfig):
    """QSGD (Alistarh et al. 2017): every entry stochastically rounded to one of ``levels`` (s) levels of the
    update's L2 norm, unbiased."""

    name: str = "qsgd"
    levels: int = 16   # s: quantisation levels per sign (1 = ternary {-norm, 0, norm})

    strategy_name: ClassVar[str] = "qsgd"

    def validate(self) -> None:
        check_range("strategy.levels", self.levels, 1, 2**16, integer=True)


@register_config
@dataclass(frozen=True)
class SignSGDConfig(StrategyConfig):
    """signSGD with error feedback (Karimireddy et al. 2019): the signs of update + residual, scaled by its
    mean magnitude; the residual keeps the rest."""

    name: str = "signsgd"
    error_feedback: bool = True

    strategy_name: ClassVar[str] = "signsgd"

    def validate(self) -> None:
        check_bool("strategy.error_feedback", self.error_feedback)


@register_config
@dataclass(frozen=True)
class STCConfig(StrategyConfig):
    """Sparse ternary compression (Sattler et al. 2019), uplink: the top-p entries of update + residual, each
    sent as +-mu (mu = their mean magnitude), with error feedback."""

    name: str = "stc"
    p: float = 0.01
    error_feedback: bool = True
    index_encoding: str = "auto"   # positions as int32 or a bitmap ("auto": the smaller)

    strategy_name: ClassVar[str] = "stc"

    def validate(self) -> None:
        check_range("strategy.p", self.p, 0.0, 1.0, lo_open=True)
        check_bool("strategy.error_feedback", self.error_feedback)
        check_choice("strategy.index_encoding", self.index_encoding, INDEX_ENCODINGS)
