"""Simulation: the federated round loop (sample, broadcast, train, select + compress, aggregate, evaluate).

A run can pause and continue: ``Simulation.run(until=r)`` stops before round ``r``, ``state()`` snapshots
everything the next round depends on (:class:`~qsfl.state.SimState`), and ``Simulation.from_state`` goes on
from it, exactly as an uninterrupted run would (bit for bit on the CPU). :func:`simulate_many` runs several
configs that differ only in their strategy in lockstep: one engine call per round trains every (config,
client) pair, and each strategy class aggregates all of its configs in one vectorised call.

Evaluation happens every ``eval_every`` rounds and at the config's last round (``rounds - 1``). A run paused
with ``until=r < rounds`` is *not* evaluated at round ``r - 1`` unless ``eval_every`` divides ``r``; to score a
run at a pause, run a config with ``rounds=r`` (it evaluates its last round) and continue it with
``from_state(config.replace(rounds=R), state)``: the continued History then holds that one extra evaluation
and is otherwise identical to an uninterrupted ``R``-round run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from qsfl.comm import Ledger, fedavg_uplink_bytes
from qsfl.config import SimConfig
from qsfl.data.datasets import Dataset, load_dataset
from qsfl.data.partition import partition
from qsfl.engine import CohortResult, Engine, LocalTraining, evaluate, flat_weights, make_engine
from qsfl.errors import ConfigError
from qsfl.history import History
from qsfl.models import build_model
from qsfl.state import CohortSampler, SimState
from qsfl.strategies import Strategy, make_strategy
from qsfl.strategies.base import AggregateJob, RoundInfo, RoundPlan
from qsfl.system import client_profiles, round_duration

log = logging.getLogger(__name__)

_DATASET_CACHE: dict[tuple, Dataset] = {}
_DATASET_CACHE_MAX = 4

# Fields in which the configs of one simulate_many batch may differ (everything else is shared: data,
# partition, model, local training, seed, engine, device).
PER_CONFIG_FIELDS = ("strategy", "rounds", "eval_every", "target_accuracy", "divergence_loss")


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
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


class Federation:
    """What every run of one (data, partition, model, local training, seed) shares: clients, model, engine."""

    def __init__(self, config: SimConfig, dataset: Dataset | None = None) -> None:
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
        self.engine: Engine = make_engine(config.engine, self.model, self.client_data,
                                          local=LocalTraining.from_config(config), seed=config.seed,
                                          max_chunk_mb=config.max_chunk_mb)
        self.n_params = int(sum(p.numel() for p in self.model.parameters()))
        self.local_epochs = config.local_epochs
        self.profiles = None if config.system is None else client_profiles(config.system, config.clients, config.seed)
        # evaluate() loads weights into the model: keep the initial weights apart
        self.initial_weights = flat_weights(self.model).to(self.device)


class _Run:
    """One config's progress through its rounds: global weights, strategy, sampler, ledger, History rows."""

    def __init__(self, fed: Federation, config: SimConfig) -> None:
        self.fed, self.config = fed, config
        self.strategy: Strategy = make_strategy(config, fed.n_params)
        self.sampler = CohortSampler(config.clients, config.cohort_size, config.seed)
        self.weights = fed.initial_weights.clone()
        self.last_update: torch.Tensor | None = None
        self.ledger = Ledger()
        self.rows: list[dict[str, Any]] = []
        self.next_round = 0
        self.status: str = "running"
        self.reason: str | None = None

    def pending(self, until: int) -> bool:
        """Whether the run still has a round to play before ``until`` (and its config's last round)."""
        return self.status == "running" and self.next_round < min(until, self.config.rounds)

    def stop(self, reason: str) -> None:
        self.status, self.reason = "diverged", reason
        log.warning("simulation stopped: %s", reason)

    def finish_round(self, t: int, sampled: np.ndarray, plan: RoundPlan, cohort: CohortResult,
                     new_weights: torch.Tensor, info: RoundInfo, shared_s: float) -> dict[str, Any] | None:
        """Take the aggregated weights, evaluate if due, close the ledger's round; the History row (None if
        the new weights are not finite: the run stops as diverged)."""
        start = time.perf_counter()
        cfg = self.config
        if not bool(torch.isfinite(new_weights).all()):
            self.stop(f"non-finite global weights at round {t}")
            return None
        self.last_update, self.weights = new_weights - self.weights, new_weights
        acc = loss = float("nan")
        if (t + 1) % cfg.eval_every == 0 or t == cfg.rounds - 1:
            acc, loss = evaluate(self.fed.model, self.weights, self.fed.x_test, self.fed.y_test)
        round_s = self.round_time(plan, cohort)
        counts = self.ledger.close_round()
        # the strategy's metrics become columns; segment_coverage is a column of every History ([] if unused)
        row = {"round": t, "test_accuracy": acc, "test_loss": loss,
               "train_loss": float(np.average(cohort.losses, weights=cohort.num_samples)),
               "n_sampled": len(sampled), "n_qualified": len(info.qualified),
               "sampled_clients": [int(c) for c in sampled], "qualified_clients": info.qualified,
               "segment_coverage": [], **plan.metrics, **info.metrics, **counts, "round_time_s": round_s,
               "cum_time_s": (self.rows[-1].get("cum_time_s", 0.0) if self.rows else 0.0) + round_s,
               "wall_time_s": shared_s + time.perf_counter() - start}
        self.rows.append(row)
        self.next_round = t + 1
        if self.next_round >= cfg.rounds:
            self.status = "complete"
        return row

    def round_time(self, plan: RoundPlan, cohort: CohortResult) -> float:
        """Simulated seconds of this round (its slowest participant: download + local epochs + upload, from the
        ledger's bytes by client and the clients' profiles); NaN without a system model."""
        profiles = self.fed.profiles
        if profiles is None:
            return float("nan")
        used = self.ledger.client_bytes()
        if used.unattributed_uplink or used.unattributed_downlink:
            raise ConfigError(f"system: strategy {self.strategy.name!r} billed {used.unattributed_uplink} uplink and "
                              f"{used.unattributed_downlink} downlink bytes without naming their clients; simulated "
                              f"time needs each message's client (Ledger.uplink/downlink(..., clients=ids))")
        samples = dict.fromkeys([*used.downlink, *used.uplink], 0)
        for cid, n in zip(np.asarray(plan.client_ids).tolist(), np.asarray(cohort.num_samples).tolist()):
            samples[int(cid)] = samples.get(int(cid), 0) + self.fed.local_epochs * int(n)
        ids = list(samples)
        return round_duration(profiles, ids, [used.downlink.get(c, 0) for c in ids], [samples[c] for c in ids],
                              [used.uplink.get(c, 0) for c in ids])

    def history(self) -> History:
        """The History of every round so far (status "complete" unless the run diverged)."""
        rows = self.rows
        status = "diverged" if self.status == "diverged" else "complete"
        return History.from_rows(rows, self.config, n_params=self.fed.n_params,
                                 fedavg_uplink_bytes=fedavg_uplink_bytes(self.fed.n_params,
                                                                         [r["n_sampled"] for r in rows]),
                                 status=status, reason=self.reason)

    def state(self) -> SimState:
        """A snapshot (copies, CPU tensors) from which :meth:`load` continues exactly."""
        return SimState(
            next_round=self.next_round, weights=self.weights.detach().cpu().clone(),
            last_update=None if self.last_update is None else self.last_update.detach().cpu().clone(),
            strategy=self.strategy.state_dict(), sampler=self.sampler.state(),
            cum_uplink_bytes=self.ledger.cum_uplink, cum_downlink_bytes=self.ledger.cum_downlink,
            rows=[dict(r) for r in self.rows], config=self.config.to_dict(),
            status="diverged" if self.status == "diverged" else "running", reason=self.reason,
            n_params=self.fed.n_params)

    def load(self, state: SimState) -> None:
        """Continue from ``state`` (checked against this run's config; copied, moved to its device)."""
        state.check_continues(self.config)
        if state.n_params != self.fed.n_params:
            raise ConfigError(f"state: {state.n_params} parameters, but the model has {self.fed.n_params}")
        device = self.fed.device
        self.next_round = int(state.next_round)
        self.weights = state.weights.detach().clone().to(device)
        self.last_update = None if state.last_update is None else state.last_update.detach().clone().to(device)
        self.strategy.load_state_dict(state.strategy, device=device)
        self.sampler.set_state(state.sampler)
        self.ledger = Ledger()
        self.ledger.cum_uplink, self.ledger.cum_downlink = int(state.cum_uplink_bytes), int(state.cum_downlink_bytes)
        self.rows = [dict(r) for r in state.rows]
        self.status, self.reason = state.status, state.reason
        if self.status == "running" and self.next_round >= self.config.rounds:
            self.status = "complete"


def _aggregate(jobs: list[AggregateJob]) -> list[tuple[torch.Tensor, RoundInfo]]:
    """Each job's aggregation; jobs of one strategy class go through one (vectorised) aggregate_many call."""
    out: list[Any] = [None] * len(jobs)
    by_class: dict[type[Strategy], list[int]] = {}
    for i, job in enumerate(jobs):
        by_class.setdefault(type(job.strategy), []).append(i)
    for cls, indices in by_class.items():
        if len(indices) == 1:   # a single config (Simulation): the instance's own aggregate
            job = jobs[indices[0]]
            out[indices[0]] = job.strategy.aggregate(job.round_index, job.global_weights, job.last_global_update,
                                                     job.client_ids, job.cohort, job.ledger)
            continue
        for i, result in zip(indices, cls.aggregate_many([jobs[i] for i in indices])):
            out[i] = result
    return out


def _play_round(fed: Federation, runs: list[_Run], t: int) -> list[dict[str, Any] | None]:
    """Round ``t`` of every run in ``runs`` (all at round t): one engine call trains all their clients."""
    start = time.perf_counter()
    sampled = [run.sampler.draw() for run in runs]
    plans = [run.strategy.configure_round(t, run.weights, ids, run.ledger) for run, ids in zip(runs, sampled)]
    if len(runs) == 1:
        trained = fed.engine.train(plans[0].start, plans[0].client_ids, t)
    else:
        starts = torch.cat([p.start.unsqueeze(0).expand(len(p.client_ids), -1) if p.start.dim() == 1 else p.start
                            for p in plans])
        trained = fed.engine.train(starts, np.concatenate([p.client_ids for p in plans]), t)
    parts, offset = [], 0
    for plan in plans:
        rows = slice(offset, offset + len(plan.client_ids))
        offset += len(plan.client_ids)
        parts.append(CohortResult(trained.weights[rows], trained.losses[rows], trained.num_samples[rows]))
    live, jobs = [], []
    for i, (run, plan, part) in enumerate(zip(runs, plans, parts)):
        reason = divergence(part.losses, run.config.divergence_loss, t)
        if reason is not None:
            run.stop(reason)
            continue
        live.append(i)
        jobs.append(AggregateJob(run.strategy, t, run.weights, run.last_update, plan.client_ids, part, run.ledger))
    results = _aggregate(jobs)
    shared = (time.perf_counter() - start) / len(runs)   # the batched work, split evenly over the runs
    out: list[dict[str, Any] | None] = [None] * len(runs)
    for i, (new_weights, info) in zip(live, results):
        out[i] = runs[i].finish_round(t, sampled[i], plans[i], parts[i], new_weights, info, shared)
    return out


class Simulation:
    """One seeded federated run of ``config``; :meth:`run` returns its :class:`History`, :meth:`state` a
    snapshot from which :meth:`from_state` continues."""

    def __init__(self, config: SimConfig, dataset: Dataset | None = None) -> None:
        self.config = config
        self.federation = Federation(config, dataset)
        fed = self.federation
        self.device, self.dataset, self.parts, self.model = fed.device, fed.dataset, fed.parts, fed.model
        self.client_data, self.x_test, self.y_test = fed.client_data, fed.x_test, fed.y_test
        self.engine, self.n_params = fed.engine, fed.n_params
        self._run = _Run(fed, config)
        self.strategy = self._run.strategy
        self.final_weights = self._run.weights

    @classmethod
    def from_state(cls, config: SimConfig, state: SimState, dataset: Dataset | None = None) -> Simulation:
        """A simulation that continues ``state`` (``config`` equal to the paused run's but for more rounds)."""
        state.check_continues(config)
        sim = cls(config, dataset=dataset)
        sim._run.load(state)
        sim.final_weights = sim._run.weights
        return sim

    @property
    def next_round(self) -> int:
        """The index of the next round to play (the number of rounds run so far)."""
        return self._run.next_round

    def state(self) -> SimState:
        """Everything the next round depends on, as a picklable snapshot (CPU tensors)."""
        return self._run.state()

    def run(self, until: int | None = None, on_round: Callable[[dict[str, Any]], None] | None = None,
            progress: bool = False) -> History:
        """Play the rounds before ``until`` (0-based, exclusive; default: all) and return the History of every
        round so far. ``on_round(row)`` sees each finished row and may raise to stop the run (the rounds done
        so far stay done)."""
        cfg, run = self.config, self._run
        limit = cfg.rounds if until is None else int(until)
        if limit < 0:
            raise ValueError(f"until: {until} is negative")
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.rounds, initial=run.next_round, desc=f"{cfg.strategy.name} {cfg.dataset}",
                       unit="round", leave=False)
        try:
            while run.pending(limit):
                row = _play_round(self.federation, [run], run.next_round)[0]
                self.final_weights = run.weights
                if row is None:
                    break
                if bar is not None:
                    acc = row["test_accuracy"]
                    bar.update(1)
                    bar.set_postfix(acc=f"{acc:.3f}" if acc == acc else "-",
                                    up_MB=f"{row['cum_uplink_bytes'] / 1e6:.2f}")
                if on_round is not None:
                    on_round(row)
        finally:
            if bar is not None:
                bar.close()
        return run.history()


def simulate(config: SimConfig, *, dataset: Dataset | None = None, progress: bool = False,
             on_round: Callable[[dict[str, Any]], None] | None = None) -> History:
    """Run one federated simulation of ``config`` and return its History."""
    return Simulation(config, dataset=dataset).run(on_round=on_round, progress=progress)


def check_compatible(configs: Sequence[SimConfig]) -> None:
    """Raise ConfigError unless ``configs`` differ only in :data:`PER_CONFIG_FIELDS` (one batch of simulate_many)."""
    if not configs:
        return
    first = configs[0].to_dict()
    for i, cfg in enumerate(configs):
        if not isinstance(cfg, SimConfig):
            raise ConfigError(f"configs[{i}]: expected a SimConfig, got {type(cfg).__name__}")
        data = cfg.to_dict()
        for key in data:
            if key not in PER_CONFIG_FIELDS and data[key] != first[key]:
                raise ConfigError(f"configs[{i}].{key}: {data[key]!r} differs from configs[0].{key} = {first[key]!r}; "
                                  f"simulate_many runs configs that differ only in {', '.join(PER_CONFIG_FIELDS)}")


def simulate_many(configs: Sequence[SimConfig], *, states: Sequence[SimState | None] | None = None,
                  until: int | Sequence[int | None] | None = None, return_states: bool = False,
                  dataset: Dataset | None = None) -> list[History] | list[tuple[History, SimState]]:
    """Run ``configs`` (differing only in strategy, rounds, eval_every, target_accuracy, divergence_loss) in
    lockstep and return one History per config, each equal to that config's own :func:`simulate`.

    Data, partition, model and engine are set up once. Each round one engine call trains every (config,
    client) pair, and each strategy class aggregates all its configs in one vectorised call. ``states``
    continues configs from SimStates (None entries start fresh; runs at different rounds catch up first);
    ``until`` stops before that round (one int for all, or one per config); a config that diverges stops and
    the others go on. With ``return_states`` the result is ``[(History, SimState), ...]``.
    """
    configs = list(configs)
    check_compatible(configs)
    if not configs:
        return []
    if states is not None and len(states) != len(configs):
        raise ValueError(f"states: {len(states)} states for {len(configs)} configs")
    limits = until if isinstance(until, Sequence) else [until] * len(configs)
    if len(limits) != len(configs):
        raise ValueError(f"until: {len(limits)} limits for {len(configs)} configs")
    fed = Federation(configs[0], dataset)
    runs = [_Run(fed, cfg) for cfg in configs]
    for i, run in enumerate(runs):
        state = states[i] if states is not None else None
        if state is not None:
            run.load(state)
    stops = [cfg.rounds if lim is None else int(lim) for cfg, lim in zip(configs, limits)]
    while True:
        pending = [run for run, stop in zip(runs, stops) if run.pending(stop)]
        if not pending:
            break
        t = min(run.next_round for run in pending)
        _play_round(fed, [run for run in pending if run.next_round == t], t)
    if return_states:
        return [(run.history(), run.state()) for run in runs]
    return [run.history() for run in runs]
