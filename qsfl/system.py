"""Device heterogeneity: per-client bandwidth and compute speed, and the simulated duration of a round.

A :class:`SystemConfig` (the ``[system]`` table of a simulation config) gives every client an uplink and a
downlink bandwidth (bytes/s) and a compute speed (training samples/s), from one of four sources:

``fixed``      every client has ``uplink``, ``downlink`` and ``compute``.
``lognormal``  each quantity is drawn per client, independently, from a lognormal distribution whose median
               is that value and whose spread is ``sigma`` (the standard deviation of its natural log;
               ``uplink_sigma``/``downlink_sigma``/``compute_sigma`` override it per quantity), seeded.
``tiers``      device classes, each a share of the clients (exactly ``round(share * clients)`` of them,
               largest remainder) with its own values (a tier's missing values are ``scale`` times the base
               values); which clients fall in which tier is a seeded permutation.
``trace``      a CSV file with a header ``uplink,downlink,compute`` (bytes/s, bytes/s, samples/s) and
               optionally ``client`` (0-based id; without it row i describes client i); every client of the
               simulation must have a row; rows for ids beyond the clients and other columns are ignored.

Time model (FedScale-style, with no waiting for stragglers beyond the round): a participating client's
round takes ``download bytes / downlink + samples processed / compute + upload bytes / uplink``, and the
round ends when its slowest participant is done (:func:`round_duration`). Pure functions, unit-tested by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qsfl.errors import ConfigError, check_choice, check_range, check_table, reject_unknown

SOURCES = ("fixed", "lognormal", "tiers", "trace")
QUANTITIES = ("uplink", "downlink", "compute")
_SALT = 0x5157   # keeps the profiles' random stream apart from the partition's and the cohort sampler's


@dataclass(frozen=True)
class Tier:
    """One device class of ``source = "tiers"``: a share of the clients and their speeds."""

    share: float
    uplink: float | None = None      # bytes/s; None -> scale * the base uplink
    downlink: float | None = None    # bytes/s; None -> scale * the base downlink
    compute: float | None = None     # samples/s; None -> scale * the base compute
    scale: float = 1.0

    def check(self, where: str) -> None:
        """Raise ConfigError naming ``where`` (e.g. ``system.tiers[1]``) for a bad value."""
        check_range(f"{where}.share", self.share, 0.0, 1.0)
        check_range(f"{where}.scale", self.scale, 0.0, None, lo_open=True)
        for name in QUANTITIES:
            value = getattr(self, name)
            if value is not None:
                check_range(f"{where}.{name}", value, 0.0, None, lo_open=True)


@dataclass(frozen=True)
class SystemConfig:
    """Per-client uplink/downlink bandwidth (bytes/s) and compute speed (samples/s) for simulated time."""

    source: str = "fixed"
    uplink: float = 1.25e6          # bytes/s (10 Mbit/s); the median for "lognormal", the base for "tiers"
    downlink: float = 5.0e6         # bytes/s (40 Mbit/s)
    compute: float = 500.0          # training samples per second
    sigma: float = 1.0              # lognormal: spread (std of the natural log) of every quantity
    uplink_sigma: float | None = None
    downlink_sigma: float | None = None
    compute_sigma: float | None = None
    tiers: tuple[Tier, ...] = ()
    trace: str | None = None        # CSV path (relative paths: to the working directory)

    def __post_init__(self) -> None:
        check_choice("system.source", self.source, SOURCES)
        for name in QUANTITIES:
            check_range(f"system.{name}", getattr(self, name), 0.0, None, lo_open=True)
        check_range("system.sigma", self.sigma, 0.0, None)
        for name in QUANTITIES:
            value = getattr(self, f"{name}_sigma")
            if value is not None:
                check_range(f"system.{name}_sigma", value, 0.0, None)
        if not isinstance(self.tiers, tuple) or not all(isinstance(t, Tier) for t in self.tiers):
            raise ConfigError(f"system.tiers: expected a list of tier tables, got {self.tiers!r}")
        for i, tier in enumerate(self.tiers):
            tier.check(f"system.tiers[{i}]")
        if self.source == "tiers":
            if not self.tiers:
                raise ConfigError("system.tiers: source 'tiers' needs at least one tier table (share, ...)")
            total = sum(t.share for t in self.tiers)
            if not math.isclose(total, 1.0, abs_tol=1e-9):
                raise ConfigError(f"system.tiers: the shares sum to {total!r}; allowed: 1.0")
        elif self.tiers:
            raise ConfigError(f"system.tiers: applies to source 'tiers' only, not {self.source!r}")
        if self.source == "trace":
            if not isinstance(self.trace, str) or not self.trace:
                raise ConfigError(f"system.trace: source 'trace' needs a CSV path, got {self.trace!r}")
        elif self.trace is not None:
            raise ConfigError(f"system.trace: applies to source 'trace' only, not {self.source!r}")

    def spread(self, name: str) -> float:
        """The lognormal spread of quantity ``name``."""
        own = getattr(self, f"{name}_sigma")
        return self.sigma if own is None else float(own)

    # ----- dict / TOML round trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML-serialisable: None values are dropped)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        out["tiers"] = [{k: v for k, v in t.items() if v is not None} for t in out["tiers"]]
        if not out["tiers"]:
            del out["tiers"]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> SystemConfig:
        """Build from the ``[system]`` table; unknown keys are errors."""
        table = dict(check_table("system", data))
        reject_unknown("system", table, [f.name for f in dataclasses.fields(cls)])
        tiers = table.pop("tiers", ())
        if not isinstance(tiers, (list, tuple)):
            raise ConfigError(f"system.tiers: expected a list of tier tables, got {tiers!r}")
        parsed = []
        for i, tier in enumerate(tiers):
            where = f"system.tiers[{i}]"
            tier = check_table(where, tier)
            reject_unknown(where, tier, [f.name for f in dataclasses.fields(Tier)])
            if "share" not in tier:
                raise ConfigError(f"{where}.share: missing; every tier needs its share of the clients")
            parsed.append(Tier(**tier))
        return cls(**table, tiers=tuple(parsed))


@dataclass(frozen=True)
class Profiles:
    """Every client's uplink and downlink bandwidth (bytes/s) and compute speed (samples/s), by client id."""

    uplink: np.ndarray
    downlink: np.ndarray
    compute: np.ndarray

    def __len__(self) -> int:
        return len(self.uplink)


def client_profiles(system: SystemConfig, clients: int, seed: int) -> Profiles:
    """The profiles of clients 0..clients-1 (same system, clients and seed -> same profiles)."""
    check_range("clients", clients, 1, None, integer=True)
    base = {name: float(getattr(system, name)) for name in QUANTITIES}
    if system.source == "fixed":
        values = {name: np.full(clients, base[name]) for name in QUANTITIES}
    elif system.source == "lognormal":
        rng = np.random.default_rng([int(seed), _SALT, 1])
        # one normal draw per quantity and client, in a fixed order, so a quantity's sigma changes only its own
        z = {name: rng.standard_normal(clients) for name in QUANTITIES}
        values = {name: base[name] * np.exp(system.spread(name) * z[name]) for name in QUANTITIES}
    elif system.source == "tiers":
        rng = np.random.default_rng([int(seed), _SALT, 2])
        members = np.empty(clients, dtype=np.int64)
        members[rng.permutation(clients)] = np.repeat(np.arange(len(system.tiers)),
                                                      tier_counts([t.share for t in system.tiers], clients))
        values = {name: np.asarray([_tier_value(t, name, base[name]) for t in system.tiers])[members]
                  for name in QUANTITIES}
    else:
        values = read_trace(Path(str(system.trace)), clients)
    return Profiles(**{name: np.asarray(values[name], dtype=np.float64) for name in QUANTITIES})


def _tier_value(tier: Tier, name: str, base: float) -> float:
    own = getattr(tier, name)
    return float(own) if own is not None else tier.scale * base


def tier_counts(shares: Sequence[float], clients: int) -> np.ndarray:
    """Clients per tier: floor(share * clients) plus one for the largest remainders (ties to the first tier)."""
    exact = np.asarray(shares, dtype=np.float64) * clients
    counts = np.floor(exact + 1e-9).astype(np.int64)
    left = clients - int(counts.sum())
    if left > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:left]] += 1
    return counts


def read_trace(path: Path, clients: int) -> dict[str, np.ndarray]:
    """Read a device trace CSV (``uplink,downlink,compute``[,``client``]) for clients 0..clients-1."""
    where = f"system.trace: {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    if not rows:
        raise ConfigError(f"{where}: no rows (expected a header uplink,downlink,compute and one row per client)")
    missing = [q for q in QUANTITIES if q not in header]
    if missing:
        raise ConfigError(f"{where}: missing column(s) {', '.join(missing)}; the header has {', '.join(header)}")
    out = {q: np.full(clients, np.nan) for q in QUANTITIES}
    seen: set[int] = set()
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        try:
            cid = int(row["client"]) if "client" in row else line - 2
        except ValueError:
            raise ConfigError(f"{where}, line {line}: client {row['client']!r} is not an integer") from None
        if cid in seen:
            raise ConfigError(f"{where}, line {line}: client {cid} appears twice")
        seen.add(cid)
        if not 0 <= cid < clients:
            continue   # a trace may describe more devices than the simulation has clients
        for q in QUANTITIES:
            try:
                value = float(row[q])
            except ValueError:
                raise ConfigError(f"{where}, line {line}: {q} {row[q]!r} is not a number") from None
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{where}, line {line}: {q} {value!r} is out of range; allowed (0.0, inf)")
            out[q][cid] = value
    absent = np.flatnonzero(np.isnan(out["uplink"]))
    if len(absent):
        raise ConfigError(f"{where}: no row for client(s) {absent[:5].tolist()}{' ...' if len(absent) > 5 else ''}; "
                          f"the trace needs one row for each of the {clients} clients")
    return out


# ------------------------------------------------------------------------------------- time model

def client_round_times(profiles: Profiles, client_ids: Sequence[int] | np.ndarray,
                       download_bytes: Sequence[float] | np.ndarray, samples: Sequence[float] | np.ndarray,
                       upload_bytes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Seconds each listed client needs for its round: download / downlink + samples / compute + upload / uplink."""
    ids = np.asarray(client_ids, dtype=np.int64)
    down = np.asarray(download_bytes, dtype=np.float64)
    work = np.asarray(samples, dtype=np.float64)
    up = np.asarray(upload_bytes, dtype=np.float64)
    if not (down.shape == work.shape == up.shape == ids.shape):
        raise ValueError(f"client_round_times: ids {ids.shape}, download {down.shape}, samples {work.shape} "
                         f"and upload {up.shape} must have one entry per client")
    return down / profiles.downlink[ids] + work / profiles.compute[ids] + up / profiles.uplink[ids]


def round_duration(profiles: Profiles, client_ids: Sequence[int] | np.ndarray,
                   download_bytes: Sequence[float] | np.ndarray, samples: Sequence[float] | np.ndarray,
                   upload_bytes: Sequence[float] | np.ndarray) -> float:
    """Seconds the round takes: its slowest participant's round time (0 when nobody participates)."""
    times = client_round_times(profiles, client_ids, download_bytes, samples, upload_bytes)
    return float(times.max()) if len(times) else 0.0


def system_from_config(value: Any) -> SystemConfig | None:
    """``SimConfig.system`` from a TOML value: None stays None, a table becomes a SystemConfig."""
    if value is None or isinstance(value, SystemConfig):
        return value
    if isinstance(value, Mapping):
        return SystemConfig.from_dict(value)
    raise ConfigError(f"system: expected a table, got {value!r}")
