"""Simulation: the federated round loop (sample, broadcast, train, select + compress, aggregate, evaluate)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from qsfl.comm import Ledger, dense_message, fedavg_uplink_bytes
from qsfl.config import SimConfig
from qsfl.data.datasets import Dataset, load_dataset
from qsfl.data.partition import partition
from qsfl.engine import LocalTraining, evaluate, flat_weights, make_engine
from qsfl.history import History
from qsfl.models import build_model
from qsfl.strategies import make_strategy

log = logging.getLogger(__name__)

_DATASET_CACHE: dict[tuple, Dataset] = {}
_DATASET_CACHE_MAX = 4


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from qsfl.errors import ConfigError
        raise ConfigError("device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def get_dataset(name: str, options: dict[str, Any]) -> Dataset:
    """Load a dataset once per process (a tuning worker reuses it across trials)."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _DATASET_CACHE:
        if len(_DATASET_CACHE) >= _DATASET_CACHE_MAX:
            _DATASET_CACHE.pop(next(iter(_DATASET_CACHE)))
        _DATASET_CACHE[key] = load_dataset(name, **options)
    return _DATASET_CACHE[key]


def divergence(losses: np.ndarray, limit: float, round_index: int) -> str | None:
    """Why the run counts as diverged (NaN/inf loss, or a loss above ``limit``), or None."""
    if not np.all(np.isfinite(losses)):
        return f"NaN/inf training loss at round {round_index}"
    worst = float(np.max(losses))
    if worst > limit:
        return f"training loss {worst:.4g} > divergence_loss {limit:g} at round {round_index}"
    return None


class Simulation:
    """One seeded federated run of ``config``; :meth:`run` returns its :class:`History`."""

    def __init__(self, config: SimConfig, dataset: Dataset | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dataset = dataset if dataset is not None else get_dataset(config.dataset, dict(config.dataset_options))
        ds = self.dataset
        labels = ds.y_train.cpu().numpy()
        self.parts = partition(config.partition, labels, config.clients, config.seed,
                               natural_ids=ds.client_ids, **dict(config.partition_options))
        self.model = build_model(config.model, ds.input_shape, ds.num_classes, seed=config.seed,
                                 **dict(config.model_options)).to(self.device)
        x, y = ds.x_train.to(self.device), ds.y_train.to(self.device)
        self.client_data = [(x[torch.as_tensor(p, device=self.device)], y[torch.as_tensor(p, device=self.device)])
                            for p in self.parts]
        self.x_test, self.y_test = ds.x_test.to(self.device), ds.y_test.to(self.device)
        self.engine = make_engine(config.engine, self.model, self.client_data, local=LocalTraining.from_config(config),
                                  seed=config.seed, max_chunk_mb=config.max_chunk_mb)
        self.n_params = int(sum(p.numel() for p in self.model.parameters()))
        self.strategy = make_strategy(config, self.n_params)

    def sample_cohorts(self) -> Iterator[np.ndarray]:
        """The sampled client ids of each round in turn (all clients when client_fraction is 1).

        A generator, so memory does not grow with the number of rounds.
        """
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 0xC0407])
        size = cfg.cohort_size
        for _ in range(cfg.rounds):
            if size == cfg.clients:
                yield np.arange(cfg.clients)
            else:
                yield np.sort(rng.choice(cfg.clients, size=size, replace=False))

    def run(self, on_round: Callable[[dict[str, Any]], None] | None = None, progress: bool = False) -> History:
        """Run every round; ``on_round(row)`` sees each finished row and may raise to stop the run."""
        cfg = self.config
        ledger = Ledger()
        weights = flat_weights(self.model).to(self.device)
        last_update: torch.Tensor | None = None
        rows: list[dict[str, Any]] = []
        status, reason = "complete", None
        cohorts = self.sample_cohorts()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.rounds, desc=f"{cfg.strategy.name} {cfg.dataset}", unit="round", leave=False)
        try:
            for t, cohort_ids in enumerate(cohorts):
                start = time.perf_counter()
                ledger.downlink(dense_message(self.n_params), count=len(cohort_ids))
                cohort = self.engine.train(weights, cohort_ids, t)
                reason = divergence(cohort.losses, cfg.divergence_loss, t)
                if reason is not None:
                    status = "diverged"
                    break
                new_weights, info = self.strategy.aggregate(t, weights, last_update, cohort_ids, cohort, ledger)
                if not bool(torch.isfinite(new_weights).all()):
                    status, reason = "diverged", f"non-finite global weights at round {t}"
                    break
                last_update, weights = new_weights - weights, new_weights
                acc = loss = float("nan")
                if (t + 1) % cfg.eval_every == 0 or t == cfg.rounds - 1:
                    acc, loss = evaluate(self.model, weights, self.x_test, self.y_test)
                counts = ledger.close_round()
                row = {"round": t, "test_accuracy": acc, "test_loss": loss,
                       "train_loss": float(np.average(cohort.losses, weights=cohort.num_samples)),
                       "n_sampled": len(cohort_ids), "n_qualified": len(info.qualified),
                       "sampled_clients": [int(c) for c in cohort_ids], "qualified_clients": info.qualified,
                       "segment_coverage": info.segment_coverage, **counts,
                       "wall_time_s": time.perf_counter() - start}
                rows.append(row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(acc=f"{acc:.3f}" if acc == acc else "-",
                                    up_MB=f"{counts['cum_uplink_bytes'] / 1e6:.2f}")
                if on_round is not None:
                    on_round(row)
        finally:
            if bar is not None:
                bar.close()
        self.final_weights = weights
        if status != "complete":
            log.warning("simulation stopped: %s", reason)
        return History.from_rows(rows, cfg, n_params=self.n_params,
                                 fedavg_uplink_bytes=fedavg_uplink_bytes(self.n_params, [r["n_sampled"] for r in rows]),
                                 status=status, reason=reason)


def simulate(config: SimConfig, *, dataset: Dataset | None = None, progress: bool = False,
             on_round: Callable[[dict[str, Any]], None] | None = None) -> History:
    """Run one federated simulation of ``config`` and return its History."""
    return Simulation(config, dataset=dataset).run(on_round=on_round, progress=progress)
