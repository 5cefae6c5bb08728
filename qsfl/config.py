"""Validated, frozen simulation configs (SimConfig; each strategy's config in qsfl.strategy_config) and their
TOML/dict round trip.

Every error raised here is a :class:`ConfigError` whose message names the field, the value received
and the allowed range, so a CLI can print it and exit with code 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsfl.errors import (
    ConfigError,
    check_choice,
    check_options,
    check_range,
    check_table,
    reject_unknown,
)
from qsfl.io import dump_toml, load_toml, parse_assignments, parse_value  # the TOML helpers, re-exported
from qsfl.strategy_config import (
    AGGREGATES,
    AUTHORS_DEFAULTS,
    INDEX_ENCODINGS,
    RELEVANCES,
    SELECTIONS,
    FedAvgConfig,
    QSFLConfig,
    StrategyConfig,
    TopKConfig,
    config_class,
    strategy_config,
    strategy_fields,
    strategy_names,
)
from qsfl.system import SystemConfig, system_from_config

STRATEGIES = strategy_names()   # the built-in strategies (a user's registered later: strategy_names())
ENGINES = ("auto", "batched", "sequential")
DEVICES = ("auto", "cpu", "cuda")

__all__ = ["AGGREGATES", "AUTHORS_DEFAULTS", "DEVICES", "ENGINES", "INDEX_ENCODINGS", "RELEVANCES", "SELECTIONS",
           "STRATEGIES", "FedAvgConfig", "QSFLConfig", "SimConfig", "StrategyConfig", "TopKConfig", "dump_toml",
           "load_config", "load_toml", "parse_assignments", "parse_value", "set_dotted", "strategy_fields",
           "strategy_names"]


def _check_options(field: str, kind: str, name: str, options: Any, valid: list[str]) -> None:
    """:func:`qsfl.errors.check_options`, with a hint naming the other ``kind`` that takes an unknown option."""
    unknown = sorted(set(check_table(field, options, "a table of options")) - set(valid))
    check_options(field, kind, name, options, valid, hint=_elsewhere(kind, unknown))


def _elsewhere(kind: str, names: list[str]) -> str:
    """Which other registered ``kind`` (dataset, partition, model) takes the first of ``names``, if any."""
    if not names:
        return ""
    from qsfl.data.datasets import DATASETS, dataset_options
    from qsfl.data.partition import PARTITIONS, partition_options
    from qsfl.models import MODELS, model_options

    registries: dict[str, tuple[Mapping[str, Any], Callable[[str], list[str]]]] = {
        "dataset": (DATASETS, dataset_options), "partition": (PARTITIONS, partition_options),
        "model": (MODELS, model_options)}
    registry, options = registries[kind]
    owners = [other for other in sorted(registry) if names[0] in options(other)]
    if not owners:
        return ""
    return f"{names[0]!r} is an option of {kind} {', '.join(owners)}"


@dataclass(frozen=True)
class SimConfig:
    """One federated simulation: data, model, local training, strategy, seed."""

    dataset: str = "digits"
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    model: str = "mlp"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    partition: str = "iid"
    partition_options: Mapping[str, Any] = field(default_factory=dict)
    clients: int = 20
    client_fraction: float = 1.0   # share of clients sampled each round (cohort size C)
    rounds: int = 20
    local_epochs: int = 1
    batch_size: int = 10
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"         # local optimizer: "sgd" (momentum, weight_decay) or "adam" (adam_*, weight_decay)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    prox_mu: float = 0.0           # FedProx: prox_mu/2 * ||w - w_start||^2 added to the local loss (0 = off)
    loss_report: str = "last_epoch"  # a client's reported loss: "last_epoch" or "all_batches" (authors' code)
    seed: int = 0
    eval_every: int = 1
    target_accuracy: float = 0.85
    engine: str = "auto"
    device: str = "auto"
    max_chunk_mb: float = 1024.0   # memory budget of one vectorised cohort chunk (batched engine)
    divergence_loss: float = 1000.0  # a mean training loss above this (or NaN) stops the run as diverged
    system: SystemConfig | None = None  # [system]: per-client bandwidth/compute -> simulated time (None: off)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)

    def __post_init__(self) -> None:
        from qsfl.data.datasets import DATASETS, resolve_dataset
        from qsfl.data.partition import PARTITIONS
        from qsfl.models import MODELS, resolve_model

        resolve_dataset(self.dataset)   # "mypkg.data:load_mine" / "mypkg.models:MyNet": imported, registered
        resolve_model(self.model)
        check_choice("dataset", self.dataset, sorted(DATASETS))
        check_choice("model", self.model, sorted(MODELS))
        check_choice("partition", self.partition, sorted(PARTITIONS))
        from qsfl.data.datasets import dataset_options
        from qsfl.data.partition import partition_options
        from qsfl.models import model_options

        _check_options("dataset_options", "dataset", self.dataset, self.dataset_options, dataset_options(self.dataset))
        _check_options("model_options", "model", self.model, self.model_options, model_options(self.model))
        _check_options("partition_options", "partition", self.partition, self.partition_options,
                      partition_options(self.partition))
        check_range("clients", self.clients, 1, None, integer=True)
        check_range("client_fraction", self.client_fraction, 0.0, 1.0, lo_open=True)
        check_range("rounds", self.rounds, 1, None, integer=True)
        check_range("local_epochs", self.local_epochs, 1, None, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("lr", self.lr, 0.0, None, lo_open=True)
        check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, None)
        from qsfl.engine.local import check_local_options
        check_local_options(self)
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check_range("eval_every", self.eval_every, 1, None, integer=True)
        check_range("target_accuracy", self.target_accuracy, 0.0, 1.0)
        check_choice("engine", self.engine, ENGINES)
        check_choice("device", self.device, DEVICES)
        check_range("max_chunk_mb", self.max_chunk_mb, 0.0, None, lo_open=True)
        check_range("divergence_loss", self.divergence_loss, 0.0, None, lo_open=True)
        object.__setattr__(self, "system", system_from_config(self.system))   # a table becomes a SystemConfig
        if not isinstance(self.strategy, StrategyConfig):
            raise ConfigError(f"strategy: expected a StrategyConfig, got {self.strategy!r}")
        self.strategy.check_simulation(self.clients, self.system)

    @property
    def cohort_size(self) -> int:
        """Number of clients sampled per round: max(1, round(client_fraction * clients))."""
        return max(1, int(round(self.client_fraction * self.clients)))

    # ----- dict / TOML round trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML-serialisable: None values are dropped)."""
        out = dataclasses.asdict(self)
        out["strategy"] = {k: v for k, v in out["strategy"].items() if v is not None}
        for key in ("dataset_options", "model_options", "partition_options"):
            out[key] = dict(out[key])
        if self.system is None:
            del out["system"]
        else:
            out["system"] = self.system.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimConfig:
        """Build from a nested dict; unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a table, got {type(data).__name__}")
        data = dict(data)
        strategy = data.pop("strategy", {})
        if isinstance(strategy, str):
            strategy = {"name": strategy}
        if not isinstance(strategy, Mapping):
            raise ConfigError(f"strategy: expected a table or a name, got {strategy!r}")
        _reject_unknown(cls, data, "")
        return cls(**data, strategy=strategy_config(strategy))

    def replace(self, **changes: Any) -> SimConfig:
        """Copy with top-level fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: Mapping[str, Any]) -> SimConfig:
        """Copy with dotted-key overrides, e.g. {"strategy.beta": 0.5, "lr": 0.1}.

        Overriding ``strategy.name`` keeps the fields of this config's strategy that the new one also has
        and drops the others (an explicitly overridden field that does not apply stays an error).
        """
        data = self.to_dict()
        for key, value in overrides.items():
            set_dotted(data, key, value)
        new_name = data["strategy"].get("name", "fedavg")
        if new_name != self.strategy.name and new_name in strategy_names():
            keep = set(_field_names(config_class(new_name))) | {k.split(".", 1)[1] for k in overrides
                                                                 if k.startswith("strategy.")}
            data["strategy"] = {k: v for k, v in data["strategy"].items() if k in keep}
        return SimConfig.from_dict(data)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _reject_unknown(cls: type, data: Mapping[str, Any], prefix: str) -> None:
    reject_unknown(prefix.rstrip("."), data, _field_names(cls))


_OPTION_TABLES = ("dataset_options", "model_options", "partition_options")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b] = value`` for key "a.b"; unknown keys raise ConfigError."""
    parts = key.split(".")
    if len(parts) == 1:
        reject_unknown("", [key], _field_names(SimConfig), hint=f"or strategy.<{'|'.join(strategy_fields())}>")
        data[key] = value
        return
    head, rest = parts[0], ".".join(parts[1:])
    if head == "system" and len(parts) == 2:
        reject_unknown("system", [rest], _field_names(SystemConfig))
        data.setdefault("system", {})[rest] = value
        return
    if head == "strategy" and len(parts) == 2:
        reject_unknown("strategy", [rest], list(strategy_fields()))
        data.setdefault("strategy", {})[rest] = value
        return
    if head in _OPTION_TABLES and len(parts) == 2:
        data.setdefault(head, {})[rest] = value
        return
    raise ConfigError(f"{key}: unknown key; use a top-level field, strategy.<field>, system.<field> or "
                      f"{'/'.join(_OPTION_TABLES)}.<option>")


def load_config(path: str | Path) -> SimConfig:
    """Read a SimConfig from TOML (top-level fields plus a [strategy] table); an empty file is an error."""
    data = load_toml(path)
    if not data:
        raise ConfigError(f"{path}: the config file holds no settings (empty TOML)")
    return SimConfig.from_dict(data)


