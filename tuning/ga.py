"""DEAP genetic algorithm on genes in [0, 1]^d: our own generation loop on DEAP's operators, with elitism
through a HallOfFame (single objective) or NSGA-II with a ParetoFront (several objectives), a Logbook of
per-generation statistics, hooks, and a checkpoint after every generation.

Reproducibility: DEAP's operators draw from the module-level :mod:`random`, so the GA seeds it (and numpy's
legacy global RNG) at the start and stores both states in every checkpoint; a resumed run continues the
same random stream and ends with the same HallOfFame and Logbook as an uninterrupted one. Fitness values
come only from the ``evaluate`` callback (simulation seeds are explicit in the study spec), so the order in
which a pool finishes evaluations never changes the result.

Checkpoints are pickles: load them only from directories you trust (trusted-local only).
"""

from __future__ import annotations

import logging
import math
import operator
import pickle
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from deap import algorithms, base, tools

from qsfl.errors import ConfigError
from qsfl.io import atomic_write
from tuning.spec import GASettings, indpb_for

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1

# evaluate(genomes, generation) -> ([(fitness values, ok), ...] in the same order, number of new evaluations)
BatchEvaluate = Callable[[list[list[float]], int], tuple[list[tuple[tuple[float, ...], bool]], int]]


# ----- individuals and fitness classes that pickle by name ------------------------------------------------
def _fitness_name(weights: Sequence[float]) -> str:
    return "Fitness_" + "_".join("max" if w > 0 else "min" for w in weights)


def fitness_class(weights: Sequence[float]) -> type:
    """A ``base.Fitness`` subclass with these weights (+1 maximise, -1 minimise), created once per module."""
    name = _fitness_name(weights)
    cls = globals().get(name)
    if cls is None:
        cls = type(name, (base.Fitness,), {"weights": tuple(1.0 if w > 0 else -1.0 for w in weights),
                                           "__module__": __name__})
        globals()[name] = cls
    return cls


def __getattr__(name: str) -> Any:
    """Recreate fitness classes on demand, so a checkpoint unpickles in a fresh process."""
    if name.startswith("Fitness_"):
        parts = name[len("Fitness_"):].split("_")
        if parts and all(p in ("max", "min") for p in parts):
            return fitness_class([1.0 if p == "max" else -1.0 for p in parts])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Individual(list):
    """A genome (list of genes in [0, 1]) with a DEAP fitness and an ``ok`` flag (False = failed)."""

    def __init__(self, genes: Sequence[float] = (), fitness_cls: type | None = None) -> None:
        super().__init__(genes)
        if fitness_cls is not None:
            self.fitness = fitness_cls()
        self.ok = True


# ----- operators ----------------------------------------------------------------------------------------
def _clip(ind: list[float]) -> None:
    for i, g in enumerate(ind):
        ind[i] = min(max(g, 0.0), 1.0)


def _blend(a: Individual, b: Individual, alpha: float) -> tuple[Individual, Individual]:
    tools.cxBlend(a, b, alpha)
    _clip(a)
    _clip(b)
    return a, b


def _gaussian(ind: Individual, sigma: float, indpb: float) -> tuple[Individual]:
    tools.mutGaussian(ind, 0.0, sigma, indpb)
    _clip(ind)
    return (ind,)


def make_toolbox(settings: GASettings, dim: int) -> base.Toolbox:
    """Register mate/mutate/select/clone from the settings (bounded to [0, 1])."""
    tb = base.Toolbox()
    indpb = indpb_for(settings, dim)
    if settings.crossover == "sbx":
        tb.register("mate", tools.cxSimulatedBinaryBounded, eta=settings.eta, low=0.0, up=1.0)
    else:
        tb.register("mate", _blend, alpha=settings.blend_alpha)
    if settings.mutation == "polynomial":
        tb.register("mutate", tools.mutPolynomialBounded, eta=settings.mut_eta, low=0.0, up=1.0, indpb=indpb)
    else:
        tb.register("mutate", _gaussian, sigma=settings.sigma, indpb=indpb)
    tb.register("select", tools.selTournament, tournsize=settings.tournament_size)
    return tb


def make_statistics() -> tools.Statistics:
    """min/mean/max/std of every objective (numpy arrays, one entry per objective)."""
    stats = tools.Statistics(key=lambda ind: ind.fitness.values)
    stats.register("min", np.min, axis=0)
    stats.register("mean", np.mean, axis=0)
    stats.register("max", np.max, axis=0)
    stats.register("std", np.std, axis=0)
    return stats


def logbook_rows(logbook: tools.Logbook, n_objectives: int) -> list[dict[str, Any]]:
    """Logbook records flattened to ``gen, nevals, nfailed, min_0, mean_0, max_0, std_0, ...``."""
    rows = []
    for rec in logbook:
        row = {"gen": rec["gen"], "nevals": rec["nevals"], "nfailed": rec.get("nfailed", 0)}
        for j in range(n_objectives):
            for stat in ("min", "mean", "max", "std"):
                row[f"{stat}_{j}"] = rec[f"{stat}_{j}"]
        rows.append(row)
    return rows


@dataclass
class GAState:
    """Everything a checkpoint holds (plus ``extra`` from the caller, e.g. its evaluation counter)."""

    generation: int
    population: list[Individual]
    hof: tools.HallOfFame
    logbook: tools.Logbook
    random_state: Any = None
    numpy_state: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    version: int = CHECKPOINT_VERSION


class GeneticAlgorithm:
    """A resumable GA over genes in [0, 1]^dim; see the module docstring."""

    def __init__(self, dim: int, weights: Sequence[float], settings: GASettings, evaluate: BatchEvaluate, *,
                 seed: int = 0, checkpoint: str | Path | None = None, fingerprint: str = "",
                 similar: Callable[[Any, Any], bool] = operator.eq,
                 hooks: Sequence[Callable[[GAState], None]] = (),
                 get_extra: Callable[[], dict[str, Any]] | None = None,
                 set_extra: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.dim = dim
        self.weights = tuple(weights)
        self.settings = settings
        self.evaluate = evaluate
        self.seed = seed
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.fingerprint = fingerprint
        self.similar = similar
        self.hooks = list(hooks)
        self.get_extra = get_extra or (lambda: {})
        self.set_extra = set_extra or (lambda extra: None)
        self.fitness_cls = fitness_class(self.weights)
        self.nsga2 = bool(settings.nsga2) or len(self.weights) > 1
        self.toolbox = make_toolbox(settings, dim)
        self.stats = make_statistics()
        self.state: GAState | None = None

    # ----- pieces of a generation --------------------------------------------------------------------
    def _new_hof(self) -> tools.HallOfFame:
        if self.nsga2:
            return tools.ParetoFront(similar=self.similar)
        return tools.HallOfFame(self.settings.hof_size, similar=self.similar)

    def _evaluate(self, individuals: list[Individual], generation: int) -> int:
        invalid = [ind for ind in individuals if not ind.fitness.valid]
        if not invalid:
            return 0
        results, nevals = self.evaluate([list(ind) for ind in invalid], generation)
        for ind, (values, ok) in zip(invalid, results):
            ind.fitness.values = tuple(values)
            ind.ok = bool(ok)
        return nevals

    def _record(self, state: GAState, nevals: int) -> None:
        valid = [ind for ind in state.population if ind.ok]
        n = len(self.weights)
        record: dict[str, Any] = {"gen": state.generation, "nevals": nevals,
                                  "nfailed": len(state.population) - len(valid)}
        if valid:
            compiled = self.stats.compile(valid)
            for stat, values in compiled.items():
                for j in range(n):
                    record[f"{stat}_{j}"] = float(np.asarray(values).reshape(-1)[j])
        else:
            for stat in ("min", "mean", "max", "std"):
                for j in range(n):
                    record[f"{stat}_{j}"] = math.nan
        state.logbook.record(**record)

    def _initial(self) -> GAState:
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        pop = [Individual([random.random() for _ in range(self.dim)], self.fitness_cls)
               for _ in range(self.settings.population)]
        state = GAState(0, pop, self._new_hof(), tools.Logbook(), fingerprint=self.fingerprint)
        state.logbook.header = ["gen", "nevals", "nfailed"]
        nevals = self._evaluate(pop, 0)
        if self.nsga2:
            state.population = tools.selNSGA2(pop, len(pop))  # assigns crowding distances
        state.hof.update(state.population)
        self._record(state, nevals)
        return state

    def _vary(self, parents: list[Individual]) -> list[Individual]:
        return algorithms.varAnd(parents, self.toolbox, self.settings.cxpb, self.settings.mutpb)

    def _step(self, state: GAState) -> None:
        gen = state.generation + 1
        pop = state.population
        if self.nsga2:
            n4 = len(pop) - len(pop) % 4
            parents = tools.selTournamentDCD(pop, n4) if n4 else []
            parents += tools.selRandom(pop, len(pop) - n4)
            offspring = self._vary(parents)
            nevals = self._evaluate(offspring, gen)
            new_pop = tools.selNSGA2(pop + offspring, len(pop))
        else:
            n_elite = min(self.settings.elitism, len(state.hof))
            parents = self.toolbox.select(pop, len(pop) - n_elite)
            offspring = self._vary(parents)
            nevals = self._evaluate(offspring, gen)
            new_pop = [self.toolbox.clone(ind) for ind in state.hof[:n_elite]] + offspring
        state.hof.update(offspring)
        state.population = new_pop
        state.generation = gen
        self._record(state, nevals)

    # ----- checkpoints -------------------------------------------------------------------------------
    def save(self, state: GAState) -> None:
        """Write the checkpoint atomically (population, hall of fame, logbook, RNG states, extra)."""
        if self.checkpoint is None:
            return
        state.random_state = random.getstate()
        state.numpy_state = np.random.get_state()
        state.extra = self.get_extra()

        def write(path: Path) -> None:
            with open(path, "wb") as fh:
                pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)

        atomic_write(self.checkpoint, write)

    def load(self) -> GAState:
        """Read the checkpoint (trusted-local pickle) and restore the RNG states."""
        assert self.checkpoint is not None
        try:
            with open(self.checkpoint, "rb") as fh:
                state = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ConfigError(f"{self.checkpoint}: cannot read the GA checkpoint ({exc}); start a new study "
                              f"with another --out") from None
        if not isinstance(state, GAState) or state.version != CHECKPOINT_VERSION:
            raise ConfigError(f"{self.checkpoint}: not a GA checkpoint of this version")
        if self.fingerprint and state.fingerprint and state.fingerprint != self.fingerprint:
            raise ConfigError(f"{self.checkpoint}: the study spec changed since this checkpoint was written "
                              f"(only ga.generations may grow on resume); use another --out")
        random.setstate(state.random_state)
        np.random.set_state(state.numpy_state)
        self.set_extra(state.extra)
        return state

    # ----- the loop -----------------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> GAState:
        """Run (or resume) up to ``settings.generations``; ``stop_after`` ends early after that generation."""
        if resume and self.checkpoint is not None and self.checkpoint.is_file():
            state = self.load()
            log.info("resuming from generation %d", state.generation)
        else:
            state = self._initial()
            self.save(state)
            self._call_hooks(state)
        self.state = state
        while state.generation < self.settings.generations:
            if stop_after is not None and state.generation >= stop_after:
                break
            self._step(state)
            self.save(state)
            self._call_hooks(state)
        return state

    def _call_hooks(self, state: GAState) -> None:
        for hook in self.hooks:
            hook(state)
