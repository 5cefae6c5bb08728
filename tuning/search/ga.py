"""The DEAP genetic algorithm (the paper's method) on genes in [0, 1]^d: our own generation loop on DEAP's
operators, elitism through a HallOfFame (one objective) or NSGA-II with a ParetoFront (several objectives), a
Logbook of per-generation statistics.

* :class:`GACore` is the algorithm as ask/tell: ``ask()`` returns the individuals of the next generation that
  need an evaluation (the initial population, then the offspring that variation changed), ``tell()`` takes their
  fitness and does the selection, the HallOfFame update and the Logbook record.
* :class:`GASearcher` adapts it to the study loop (:class:`tuning.search.base.Searcher`): genes <-> params.
* :class:`GeneticAlgorithm` drives it with a batch ``evaluate`` callback and its own checkpoint (a library API).

Reproducibility: DEAP's operators draw from the module-level :mod:`random`, so the GA seeds it (and numpy's
legacy global RNG) for the initial population, keeps both states in its state after every ``ask`` and restores
them at the start of the next one: whatever else draws from them in between (a simulation in this process, a
resumed run) never changes the GA's stream. All draws happen in ``ask``; ``tell`` is deterministic.

**Rounds as a fidelity** (``[fidelity]``): an individual is told the rounds its evaluation stopped at
(``Individual.rounds``) and the GA compares individuals at equal rounds only: first by rounds (an individual
promoted further won every comparison on the way), then by fitness. Concretely the tournament ranks by
``(rounds, fitness)``, NSGA-II sorts and crowds each rounds level separately (the most rounds first) and its
parent tournament prefers the individual with more rounds, the HallOfFame / ParetoFront and the Logbook statistics
take only individuals evaluated at the full rounds.

Checkpoints are pickles: load them only from directories you trust (trusted-local only).
"""

from __future__ import annotations

import logging
import math
import operator
import pickle
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from deap import algorithms, base, tools

from qsfl.errors import ConfigError, check_bool, check_choice, check_range, check_table, reject_unknown
from qsfl.io import atomic_write
from tuning.objective import Evaluation, params_id
from tuning.search.base import Candidate, SearchContext, Searcher, register

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2
CROSSOVERS = ("sbx", "blend")
MUTATIONS = ("polynomial", "gaussian")


# ----- settings: the [ga] table -----------------------------------------------------------------------------
@dataclass(frozen=True)
class GASettings:
    """The ``[ga]`` table; genes live in [0, 1], so eta/sigma are in gene units."""

    population: int = 10
    generations: int = 5
    cxpb: float = 0.7
    mutpb: float = 0.3
    crossover: str = "sbx"
    mutation: str = "polynomial"
    eta: float = 15.0             # SBX crowding degree
    mut_eta: float = 20.0         # polynomial mutation crowding degree
    indpb: float | None = None    # per-gene mutation probability; None -> 1 / dimension
    sigma: float = 0.1            # gaussian mutation std (gene units)
    blend_alpha: float = 0.5
    tournament_size: int = 3
    elitism: int = 1
    nsga2: bool | None = None     # None -> True exactly when there are several objectives
    hof_size: int = 5
    dedupe: int = 10              # re-mutate an offspring that repeats a point already seen, up to this often


def parse_ga(table: Mapping[str, Any], dim: int, n_objectives: int) -> GASettings:
    """Validate the ``[ga]`` table."""
    fields = tuple(GASettings.__dataclass_fields__)
    reject_unknown("ga", check_table("ga", table), fields)
    s = GASettings(**dict(table))
    check_range("ga.population", s.population, 2, None, integer=True)
    check_range("ga.generations", s.generations, 0, None, integer=True)
    check_range("ga.cxpb", s.cxpb, 0.0, 1.0)
    check_range("ga.mutpb", s.mutpb, 0.0, 1.0)
    check_choice("ga.crossover", s.crossover, CROSSOVERS)
    check_choice("ga.mutation", s.mutation, MUTATIONS)
    check_range("ga.eta", s.eta, 0.0, None, lo_open=True)
    check_range("ga.mut_eta", s.mut_eta, 0.0, None, lo_open=True)
    if s.indpb is not None:
        check_range("ga.indpb", s.indpb, 0.0, 1.0)
    check_range("ga.sigma", s.sigma, 0.0, None, lo_open=True)
    check_range("ga.blend_alpha", s.blend_alpha, 0.0, None)
    check_range("ga.tournament_size", s.tournament_size, 1, None, integer=True)
    check_range("ga.elitism", s.elitism, 0, s.population - 1, integer=True)
    check_range("ga.hof_size", s.hof_size, 1, None, integer=True)
    check_range("ga.dedupe", s.dedupe, 0, None, integer=True)
    if s.nsga2 is not None:
        check_bool("ga.nsga2", s.nsga2)
        if not s.nsga2 and n_objectives > 1:
            raise ConfigError(f"ga.nsga2: false, but the objective has {n_objectives} objectives; allowed: true "
                              f"(several objectives need NSGA-II), or one objective")
    nsga2 = (n_objectives > 1) if s.nsga2 is None else s.nsga2
    return GASettings(**{**s.__dict__, "nsga2": nsga2})


def indpb_for(settings: GASettings, dim: int) -> float:
    """The per-gene mutation probability (1 / dimension unless given)."""
    return settings.indpb if settings.indpb is not None else 1.0 / max(dim, 1)


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
    """A genome (genes in [0, 1]) with a DEAP fitness, an ``ok`` flag (False = failed) and the ``rounds`` its
    evaluation stopped at (0 = unknown or no fidelity)."""

    def __init__(self, genes: Sequence[float] = (), fitness_cls: type | None = None) -> None:
        super().__init__(genes)
        if fitness_cls is not None:
            self.fitness = fitness_cls()
        self.ok = True
        self.rounds = 0

    @property
    def rank(self) -> tuple[int, Any]:
        """Rounds first, then fitness: what the rung-aware tournament maximises."""
        return self.rounds, self.fitness


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


# ----- rung-aware NSGA-II (fidelity) --------------------------------------------------------------------------
def _by_rounds(individuals: Sequence[Individual]) -> list[list[Individual]]:
    levels: dict[int, list[Individual]] = {}
    for ind in individuals:
        levels.setdefault(ind.rounds, []).append(ind)
    return [levels[r] for r in sorted(levels, reverse=True)]


def sel_nsga2_by_rounds(individuals: Sequence[Individual], k: int) -> list[Individual]:
    """NSGA-II survivor selection that compares individuals at equal rounds only: whole rounds levels, the most
    rounds first, and ``selNSGA2`` (non-dominated sorting + crowding) inside the level that does not fit whole."""
    chosen: list[Individual] = []
    for level in _by_rounds(individuals):
        if len(chosen) + len(level) <= k:
            chosen += tools.selNSGA2(level, len(level))    # assigns crowding distances
        else:
            chosen += tools.selNSGA2(level, k - len(chosen))
        if len(chosen) >= k:
            break
    return chosen


def sel_tournament_dcd_by_rounds(individuals: Sequence[Individual], k: int) -> list[Individual]:
    """DEAP's ``selTournamentDCD`` (dominance, then crowding distance) with rounds compared first."""
    def tourn(a: Individual, b: Individual) -> Individual:
        if a.rounds != b.rounds:
            return a if a.rounds > b.rounds else b
        if a.fitness.dominates(b.fitness):
            return a
        if b.fitness.dominates(a.fitness):
            return b
        if a.fitness.crowding_dist < b.fitness.crowding_dist:
            return b
        if a.fitness.crowding_dist > b.fitness.crowding_dist:
            return a
        return a if random.random() <= 0.5 else b

    pool_1 = random.sample(list(individuals), len(individuals))
    pool_2 = random.sample(list(individuals), len(individuals))
    chosen = []
    for i in range(0, k, 4):
        chosen.append(tourn(pool_1[i], pool_1[i + 1]))
        chosen.append(tourn(pool_1[i + 2], pool_1[i + 3]))
        chosen.append(tourn(pool_2[i], pool_2[i + 1]))
        chosen.append(tourn(pool_2[i + 2], pool_2[i + 3]))
    return chosen


# ----- the algorithm as ask/tell ----------------------------------------------------------------------------
@dataclass
class GAState:
    """The GA's whole state (the checkpoint): population, hall of fame, logbook, RNG states, and the generation
    being evaluated (``pending``: its individuals that need a fitness) between ``ask`` and ``tell``."""

    generation: int
    population: list[Individual]
    hof: tools.HallOfFame
    logbook: tools.Logbook
    random_state: Any = None
    numpy_state: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    version: int = CHECKPOINT_VERSION
    pending: list[Individual] | None = None
    pending_generation: int = 0
    offspring: list[Individual] | None = None
    seen: set[Any] = field(default_factory=set)     # keys of every individual asked so far (dedupe)


# tell() results: (fitness values, ok, rounds) per pending individual
Told = tuple[Sequence[float], bool, int]


class GACore:
    """The GA over genes in [0, 1]^dim as ask/tell; see the module docstring."""

    def __init__(self, dim: int, weights: Sequence[float], settings: GASettings, *, seed: int = 0,
                 similar: Callable[[Any, Any], bool] = operator.eq, full_rounds: int | None = None,
                 starts: Sequence[Sequence[float]] = (), key: Callable[[Sequence[float]], Any] = tuple) -> None:
        self.dim = dim
        self.weights = tuple(weights)
        self.settings = settings
        self.seed = seed
        self.similar = similar
        self.full_rounds = full_rounds            # None: no fidelity (rounds are not compared)
        self.starts = [list(g) for g in starts]
        self.key = key                            # what makes two genomes the same point (dedupe)
        self.fitness_cls = fitness_class(self.weights)
        self.nsga2 = bool(settings.nsga2) or len(self.weights) > 1
        self.toolbox = make_toolbox(settings, dim)
        self.stats = make_statistics()
        self.state: GAState | None = None

    @property
    def fidelity(self) -> bool:
        return self.full_rounds is not None

    def finished(self) -> bool:
        """All generations are done (and nothing is being evaluated)."""
        s = self.state
        return s is not None and s.pending is None and s.generation >= self.settings.generations

    # ----- ask ------------------------------------------------------------------------------------------
    def ask(self) -> list[Individual]:
        """The individuals of the next generation that need a fitness ([] when finished)."""
        s = self.state
        if s is not None and s.pending is not None:
            return list(s.pending)
        if s is None:
            random.seed(self.seed)
            np.random.seed(self.seed % 2**32)
            n = self.settings.population
            genomes = self.starts[:n] + [[random.random() for _ in range(self.dim)]
                                         for _ in range(n - min(len(self.starts), n))]
            pop = [Individual(g, self.fitness_cls) for g in genomes]
            s = GAState(-1, pop, self._new_hof(), tools.Logbook())
            s.logbook.header = ["gen", "nevals", "nfailed"]
            s.pending, s.pending_generation, s.offspring = list(pop), 0, None
            s.seen = {self.key(ind) for ind in pop}
            self.state = s
        else:
            if s.generation >= self.settings.generations:
                return []
            random.setstate(s.random_state)
            np.random.set_state(s.numpy_state)
            s.offspring = self._vary(self._parents(s))
            self._dedupe(s, s.offspring)
            s.pending = [ind for ind in s.offspring if not ind.fitness.valid]
            s.pending_generation = s.generation + 1
        s.random_state = random.getstate()
        s.numpy_state = np.random.get_state()
        return list(s.pending)

    def _parents(self, s: GAState) -> list[Individual]:
        pop = s.population
        if self.nsga2:
            n4 = len(pop) - len(pop) % 4
            dcd = sel_tournament_dcd_by_rounds if self.fidelity else tools.selTournamentDCD
            parents = dcd(pop, n4) if n4 else []
            return parents + tools.selRandom(pop, len(pop) - n4)
        n_elite = min(self.settings.elitism, len(s.hof))
        if self.fidelity:
            return tools.selTournament(pop, len(pop) - n_elite, self.settings.tournament_size, fit_attr="rank")
        return self.toolbox.select(pop, len(pop) - n_elite)

    def _vary(self, parents: list[Individual]) -> list[Individual]:
        return algorithms.varAnd(parents, self.toolbox, self.settings.cxpb, self.settings.mutpb)

    def _dedupe(self, s: GAState, offspring: list[Individual]) -> None:
        """An offspring that repeats a point already seen (an unchanged clone of its parent, or a variation
        that lands on an evaluated point) is mutated again, up to ``settings.dedupe`` times: with few genes,
        integer bins and a small budget, a generation of repeats would evaluate nothing new."""
        for ind in offspring:
            key = self.key(ind)
            tries = 0
            while key in s.seen and tries < self.settings.dedupe:
                (ind,) = self.toolbox.mutate(ind)
                if ind.fitness.valid:
                    del ind.fitness.values
                key = self.key(ind)
                tries += 1
            s.seen.add(key)

    # ----- tell -----------------------------------------------------------------------------------------
    def tell(self, results: Sequence[Told], nevals: int | None = None) -> GAState:
        """Assign the fitness of the pending individuals (same order as ``ask``) and finish the generation;
        ``nevals`` = new evaluations for the logbook (default: the number of pending individuals)."""
        s = self.state
        if s is None or s.pending is None:
            raise RuntimeError("GACore.tell without a pending ask")
        if len(results) != len(s.pending):
            raise ValueError(f"tell: {len(results)} results for {len(s.pending)} individuals")
        for ind, (values, ok, rounds) in zip(s.pending, results):
            ind.fitness.values = tuple(float(v) for v in values)
            ind.ok = bool(ok)
            ind.rounds = int(rounds)
        nevals = len(s.pending) if nevals is None else nevals
        gen = s.pending_generation
        if gen == 0:
            if self.nsga2:
                select = sel_nsga2_by_rounds if self.fidelity else tools.selNSGA2
                s.population = select(s.population, len(s.population))   # assigns crowding distances
            self._update_hof(s, s.population)
        else:
            offspring = s.offspring or []
            pop = s.population
            if self.nsga2:
                select = sel_nsga2_by_rounds if self.fidelity else tools.selNSGA2
                new_pop = select(pop + offspring, len(pop))
            else:
                n_elite = min(self.settings.elitism, len(s.hof))
                new_pop = [self.toolbox.clone(ind) for ind in s.hof[:n_elite]] + offspring
            self._update_hof(s, offspring)
            s.population = new_pop
        s.generation = gen
        s.pending, s.offspring = None, None
        self._record(s, nevals)
        return s

    def _new_hof(self) -> tools.HallOfFame:
        if self.nsga2:
            return tools.ParetoFront(similar=self.similar)
        return tools.HallOfFame(self.settings.hof_size, similar=self.similar)

    def _full(self, individuals: Sequence[Individual]) -> list[Individual]:
        if not self.fidelity:
            return list(individuals)
        return [ind for ind in individuals if ind.rounds == self.full_rounds]

    def _update_hof(self, s: GAState, individuals: Sequence[Individual]) -> None:
        full = self._full(individuals)
        if full:
            s.hof.update(full)

    def _record(self, s: GAState, nevals: int) -> None:
        valid = [ind for ind in self._full(s.population) if ind.ok]
        n = len(self.weights)
        record: dict[str, Any] = {"gen": s.generation, "nevals": nevals,
                                  "nfailed": sum(1 for ind in s.population if not ind.ok)}
        if valid:
            compiled = self.stats.compile(valid)
            for stat, values in compiled.items():
                for j in range(n):
                    record[f"{stat}_{j}"] = float(np.asarray(values).reshape(-1)[j])
        else:
            for stat in ("min", "mean", "max", "std"):
                for j in range(n):
                    record[f"{stat}_{j}"] = math.nan
        s.logbook.record(**record)


# ----- the study loop's adapter -----------------------------------------------------------------------------
class SameParams:
    """DEAP ``similar``: two genomes are the same individual when they decode to the same repaired params."""

    def __init__(self, ctx: SearchContext) -> None:
        self.space = ctx.space
        self.base = ctx.base

    def key(self, genome: Sequence[float]) -> str:
        """The id of the params a genome is evaluated with."""
        return params_id(self.space.repair(self.space.decode(list(genome)), self.base)[0])

    def __call__(self, a: Sequence[float], b: Sequence[float]) -> bool:
        return self.key(a) == self.key(b)


@register
class GASearcher(Searcher):
    """The DEAP GA / NSGA-II as a :class:`Searcher`: one ``ask`` = one generation."""

    name = "ga"
    section = "ga"
    settings_type = GASettings
    resumable_keys = ("generations",)

    def __init__(self, settings: GASettings, ctx: SearchContext) -> None:
        super().__init__(settings, ctx)
        same = SameParams(ctx)
        self.core = GACore(ctx.space.dim, ctx.objective.weights, settings, seed=ctx.seed, similar=same,
                           full_rounds=ctx.base.rounds if ctx.fidelity else None, key=same.key)

    @classmethod
    def parse_settings(cls, table: Mapping[str, Any], *, dim: int, n_objectives: int, rounds: int) -> GASettings:
        return parse_ga(table, dim, n_objectives)

    def start(self, points: Sequence[Mapping[str, Any]]) -> None:
        self.core.starts = [self.ctx.space.encode(p) for p in points]

    def ask(self, n: int) -> list[Candidate]:
        inds = self.core.ask()
        s = self.core.state
        gen = s.pending_generation if s is not None else 0
        starts = len(self.core.starts) if gen == 0 else 0      # the first population begins with the starts
        return [Candidate(self.ctx.space.decode(list(ind)), generation=gen, token=i, start=i < starts)
                for i, ind in enumerate(inds)]

    def tell(self, candidates: Sequence[Candidate], evaluations: Sequence[Evaluation]) -> None:
        results = [(ev.fitness, ev.ok, ev.rounds) for ev in evaluations]
        self.core.tell(results, nevals=sum(ev.new_rows for ev in evaluations))

    def state(self) -> GAState | None:
        return self.core.state

    def restore(self, state: GAState | None) -> None:
        if state is not None and not isinstance(state, GAState):
            raise ConfigError("checkpoint.pkl: not a GA checkpoint; start a new study with another --out")
        self.core.state = state

    def finished(self) -> bool:
        return self.core.finished()

    def batch_size(self) -> int:
        return self.settings.population

    def expected_evaluations(self) -> int:
        return self.settings.population * (self.settings.generations + 1)

    def exact_evaluations(self) -> bool:
        return False   # offspring that neither crossover nor mutation changed keep their fitness: fewer evaluations

    def progress(self) -> tuple[int, int | None]:
        s = self.core.state
        return (0 if s is None else s.generation + 1), self.settings.generations + 1


# ----- a callback driver with its own checkpoint (library API, unit tests) -----------------------------------
# evaluate(genomes, generation) -> ([(fitness values, ok), ...] in the same order, number of new evaluations)
BatchEvaluate = Callable[[list[list[float]], int], tuple[list[tuple[tuple[float, ...], bool]], int]]


class GeneticAlgorithm:
    """Run :class:`GACore` with a batch ``evaluate`` callback, hooks after every generation and a checkpoint
    (the GAState pickle) after every generation."""

    def __init__(self, dim: int, weights: Sequence[float], settings: GASettings, evaluate: BatchEvaluate, *,
                 seed: int = 0, checkpoint: str | Path | None = None, fingerprint: str = "",
                 similar: Callable[[Any, Any], bool] = operator.eq,
                 hooks: Sequence[Callable[[GAState], None]] = (),
                 get_extra: Callable[[], dict[str, Any]] | None = None,
                 set_extra: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.core = GACore(dim, weights, settings, seed=seed, similar=similar)
        self.settings = settings
        self.evaluate = evaluate
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.fingerprint = fingerprint
        self.hooks = list(hooks)
        self.get_extra = get_extra or (lambda: {})
        self.set_extra = set_extra or (lambda extra: None)

    @property
    def state(self) -> GAState | None:
        return self.core.state

    def save(self, state: GAState) -> None:
        """Write the checkpoint atomically (population, hall of fame, logbook, RNG states, extra)."""
        if self.checkpoint is None:
            return
        state.extra = self.get_extra()
        state.fingerprint = self.fingerprint

        def write(path: Path) -> None:
            with open(path, "wb") as fh:
                pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)

        atomic_write(self.checkpoint, write)

    def load(self) -> GAState:
        """Read the checkpoint (trusted-local pickle)."""
        assert self.checkpoint is not None
        state = load_pickle(self.checkpoint, "GA checkpoint")
        if not isinstance(state, GAState) or state.version != CHECKPOINT_VERSION:
            raise ConfigError(f"{self.checkpoint}: not a GA checkpoint of this version")
        if self.fingerprint and state.fingerprint and state.fingerprint != self.fingerprint:
            raise ConfigError(f"{self.checkpoint}: the study spec changed since this checkpoint was written "
                              f"(only ga.generations may grow on resume); use another --out")
        self.set_extra(state.extra)
        return state

    def run(self, resume: bool = False, stop_after: int | None = None) -> GAState:
        """Run (or resume) up to ``settings.generations``; ``stop_after`` ends early after that generation."""
        if resume and self.checkpoint is not None and self.checkpoint.is_file():
            self.core.state = self.load()
            log.info("resuming from generation %d", self.core.state.generation)
        while not self.core.finished():
            s = self.core.state
            if s is not None and s.pending is None and stop_after is not None and s.generation >= stop_after:
                break
            pending = self.core.ask()
            gen = self.core.state.pending_generation if self.core.state is not None else 0
            results, nevals = self.evaluate([list(ind) for ind in pending], gen) if pending else ([], 0)
            state = self.core.tell([(values, ok, 0) for values, ok in results], nevals)
            self.save(state)
            for hook in self.hooks:
                hook(state)
        assert self.core.state is not None
        return self.core.state


def load_pickle(path: Path, what: str) -> Any:
    """Unpickle our own checkpoint; a damaged file is a ConfigError naming it (trusted-local only)."""
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError,
            IndexError, KeyError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc}); start a new study "
                          f"with another --out") from None
