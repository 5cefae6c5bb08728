"""History: the per-round DataFrame of a run plus its config and summary metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qsfl.config import SimConfig, dump_toml, load_toml
from qsfl.errors import ConfigError
from qsfl.io import atomic_write as _atomic

LIST_COLUMNS = ("sampled_clients", "qualified_clients", "segment_coverage")

COLUMNS = ("round", "test_accuracy", "test_loss", "train_loss", "n_sampled", "n_qualified",
           "sampled_clients", "qualified_clients", "segment_coverage",
           "uplink_bytes", "uplink_header_bytes", "uplink_value_bytes", "uplink_index_bytes",
           "uplink_meta_bytes", "uplink_messages", "downlink_bytes", "downlink_messages",
           "cum_uplink_bytes", "cum_downlink_bytes", "round_time_s", "cum_time_s", "wall_time_s")


class History:
    """One run's per-round table (``df``), its config and summary metrics (``summary``)."""

    def __init__(self, df: pd.DataFrame, config: dict[str, Any], *, n_params: int, fedavg_uplink_bytes: int,
                 status: str = "complete", reason: str | None = None) -> None:
        self.df = df
        self.config = config
        self.n_params = int(n_params)
        self.fedavg_uplink_bytes = int(fedavg_uplink_bytes)
        self.status = status
        self.reason = reason
        self.summary = self._summarise()
        self.df.attrs["config"] = config
        self.df.attrs["summary"] = self.summary

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], config: SimConfig | dict[str, Any], **kwargs: Any) -> History:
        """Build from the simulator's per-round dicts."""
        extra = list(dict.fromkeys(k for row in rows for k in row if k not in COLUMNS))   # strategies' metrics
        df = pd.DataFrame(rows, columns=list(COLUMNS) + extra)
        cfg = config.to_dict() if isinstance(config, SimConfig) else dict(config)
        return cls(df, cfg, **kwargs)

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def target_accuracy(self) -> float:
        return float(self.config.get("target_accuracy", 0.85))

    def _summarise(self) -> dict[str, Any]:
        df = self.df
        evaluated = df.dropna(subset=["test_accuracy"]) if len(df) else df
        total_up = int(df["cum_uplink_bytes"].iloc[-1]) if len(df) else 0
        total_down = int(df["cum_downlink_bytes"].iloc[-1]) if len(df) else 0
        reached = evaluated[evaluated["test_accuracy"] >= self.target_accuracy] if len(evaluated) else evaluated
        first = reached.iloc[0] if len(reached) else None
        return {
            "status": self.status,
            "reason": self.reason,
            "rounds_run": len(df),
            "n_params": self.n_params,
            "final_accuracy": float(evaluated["test_accuracy"].iloc[-1]) if len(evaluated) else math.nan,
            "best_accuracy": float(evaluated["test_accuracy"].max()) if len(evaluated) else math.nan,
            "final_loss": float(evaluated["test_loss"].iloc[-1]) if len(evaluated) else math.nan,
            "total_uplink_bytes": total_up,
            "total_downlink_bytes": total_down,
            "fedavg_uplink_bytes": self.fedavg_uplink_bytes,
            "compression_ratio": (self.fedavg_uplink_bytes / total_up) if total_up else math.inf,
            "target_accuracy": self.target_accuracy,
            # rounds are 0-based in the table; "rounds to target" counts rounds run, so +1
            "rounds_to_target": int(first["round"]) + 1 if first is not None else None,
            "uplink_bytes_to_target": int(first["cum_uplink_bytes"]) if first is not None else None,
            # simulated seconds (config.system): None without a system model, or when the target is not reached
            "time_to_target": _seconds(first.get("cum_time_s")) if first is not None else None,
            "simulated_time_s": _seconds(df["cum_time_s"].iloc[-1]) if len(df) and "cum_time_s" in df else None,
            "wall_time_s": float(df["wall_time_s"].sum()) if len(df) else 0.0,
        }

    # ----- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write history.parquet, history.csv (rounds from 1), config.toml and summary.json into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _atomic(out / "history.parquet", lambda p: self.df.to_parquet(p, index=False))
        csv = self.df.copy()
        csv["round"] = csv["round"] + 1   # for readers: rounds 1..R (df and parquet keep the 0-based index t)
        for col in list_columns(self.df):
            csv[col] = csv[col].map(lambda v: json.dumps(np.asarray(v).tolist()))
        _atomic(out / "history.csv", lambda p: csv.to_csv(p, index=False))
        _atomic(out / "config.toml", lambda p: Path(p).write_text(dump_toml(self.config), encoding="utf-8"))
        meta = {"summary": self.summary, "n_params": self.n_params,
                "fedavg_uplink_bytes": self.fedavg_uplink_bytes}
        _atomic(out / "summary.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2, default=_jsonable)))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> History:
        """Read a History written by :meth:`save`."""
        d = Path(directory)
        missing = [f for f in ("history.parquet", "config.toml", "summary.json") if not (d / f).is_file()]
        if missing:
            raise ConfigError(f"{d}: not a simulation output; missing {', '.join(missing)}")
        df = pd.read_parquet(d / "history.parquet")
        for col in list_columns(df):
            df[col] = df[col].map(lambda v: np.asarray(v).tolist())
        meta = json.loads((d / "summary.json").read_text())
        s = meta["summary"]
        return cls(df, load_toml(d / "config.toml"), n_params=meta["n_params"],
                   fedavg_uplink_bytes=meta["fedavg_uplink_bytes"], status=s["status"], reason=s["reason"])


def list_columns(df: pd.DataFrame) -> list[str]:
    """The columns holding a list per round: the standard ones and any list-valued strategy metric."""
    out = [c for c in LIST_COLUMNS if c in df.columns]
    for col in df.columns:
        if col not in out and df[col].dtype == object and len(df) \
                and isinstance(df[col].iloc[0], (list, tuple, np.ndarray)):
            out.append(col)
    return out


def _seconds(value: Any) -> float | None:
    """A simulated-time cell as float seconds, None when absent or NaN (no system model)."""
    if value is None or not np.isfinite(value):
        return None
    return float(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)
