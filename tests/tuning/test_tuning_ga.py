"""The DEAP GA without the simulator: analytic optima (real and integer genes), a known Pareto front,
checkpoint/resume equal to an uninterrupted run, failed individuals."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from tuning.search.ga import GASettings, GeneticAlgorithm, Individual, fitness_class, logbook_rows
from tuning.space import Param, SearchSpace


def batch(fn):
    """Wrap a per-genome fitness function as the GA's batch evaluate."""
    def evaluate(genomes, generation):
        return [(fn(g), True) for g in genomes], len(genomes)
    return evaluate


def test_real_genes_find_the_optimum_of_a_sphere():
    target = [0.2, 0.7, 0.45]
    ga = GeneticAlgorithm(3, (-1.0,), GASettings(population=24, generations=40, elitism=2),
                          batch(lambda x: (sum((a - b) ** 2 for a, b in zip(x, target)),)), seed=3)
    state = ga.run()
    best = state.hof[0]
    assert best.fitness.values[0] < 1e-3
    assert all(abs(a - b) < 0.05 for a, b in zip(best, target))
    assert state.logbook.select("min_0")[-1] <= state.logbook.select("min_0")[0]


@pytest.mark.parametrize("crossover, mutation", [("sbx", "polynomial"), ("blend", "gaussian")])
def test_integer_and_log_genes_find_a_discrete_optimum(crossover, mutation):
    space = SearchSpace((Param("k", "strategy.k", 1, 20, type="int"), Param("ns", "strategy.ns", 1, 12, type="int"),
                         Param("lr", "lr", 0.001, 1.0, log=True)))

    def f(genes):
        p = space.decode(genes)
        return (-(p["k"] - 13) ** 2 - (p["ns"] - 4) ** 2 - (math.log10(p["lr"]) + 1.5) ** 2,)

    ga = GeneticAlgorithm(3, (1.0,), GASettings(population=20, generations=30, crossover=crossover, mutation=mutation),
                          batch(f), seed=5)
    best = space.decode(ga.run().hof[0])
    assert (best["k"], best["ns"]) == (13, 4)
    assert isinstance(best["k"], int) and abs(math.log10(best["lr"]) + 1.5) < 0.15


def test_two_objectives_find_the_known_pareto_front():
    # ZDT1 with 3 genes: the front is x2 = x3 = 0, f2 = 1 - sqrt(f1) for f1 in [0, 1]
    def zdt1(x):
        g = 1 + 9 * (x[1] + x[2]) / 2
        return (x[0], g * (1 - math.sqrt(x[0] / g)))

    ga = GeneticAlgorithm(3, (-1.0, -1.0), GASettings(population=40, generations=60), batch(zdt1), seed=7)
    front = ga.run().hof
    f = [ind.fitness.values for ind in front]
    assert len(front) >= 20
    # the lone f1 ~ 0 corner point (x1 on its bound) is non-dominated whatever its f2; judge the rest
    assert max(abs(f2 - (1 - math.sqrt(f1))) for f1, f2 in f if f1 > 1e-4) < 0.05
    assert min(f1 for f1, _ in f) < 0.05 and max(f1 for f1, _ in f) > 0.7   # the front is spread along f1


def _run(tmp_path, name, stop_after=None, resume=False, generations=5, nsga2=False):
    weights = (-1.0, -1.0) if nsga2 else (1.0,)
    fn = (lambda x: (x[0], 1 - x[0] + x[1])) if nsga2 else (lambda x: (-(x[0] - 0.3) ** 2 - abs(x[1] - 0.6),))
    ga = GeneticAlgorithm(2, weights, GASettings(population=8, generations=generations), batch(fn), seed=11,
                          checkpoint=tmp_path / name, fingerprint="f")
    return ga.run(resume=resume, stop_after=stop_after)


@pytest.mark.parametrize("nsga2", [False, True])
def test_resume_after_generation_2_equals_an_uninterrupted_run(tmp_path, nsga2):
    full = _run(tmp_path, "full.pkl", nsga2=nsga2)
    _run(tmp_path, "part.pkl", stop_after=2, nsga2=nsga2)
    random.seed(12345)  # whatever happens to the global RNG in between, the checkpoint restores it
    resumed = _run(tmp_path, "part.pkl", resume=True, nsga2=nsga2)
    assert list(resumed.logbook) == list(full.logbook)
    assert [list(i) for i in resumed.hof] == [list(i) for i in full.hof]
    assert [i.fitness.values for i in resumed.hof] == [i.fitness.values for i in full.hof]
    assert [list(i) for i in resumed.population] == [list(i) for i in full.population]


def test_resume_can_extend_the_number_of_generations(tmp_path):
    full = _run(tmp_path, "full.pkl", generations=6)
    _run(tmp_path, "part.pkl", generations=3)
    longer = _run(tmp_path, "part.pkl", resume=True, generations=6)
    assert list(longer.logbook) == list(full.logbook)


def test_checkpoint_is_atomic_and_unpickles_in_a_fresh_namespace(tmp_path):
    _run(tmp_path, "c.pkl", stop_after=1)
    assert not list(tmp_path.glob(".c.pkl.*"))   # no temp file left behind
    state = pickle.loads((tmp_path / "c.pkl").read_bytes())
    assert state.generation == 1 and isinstance(state.population[0], Individual)
    assert type(state.population[0].fitness).__name__ == "Fitness_max"
    assert fitness_class((1.0, -1.0)).weights == (1.0, -1.0)


def test_failed_individuals_get_the_worst_fitness_and_stay_out_of_the_statistics():
    def evaluate(genomes, generation):
        out = [((-1e9,), False) if g[0] > 0.5 else ((g[0],), True) for g in genomes]
        return out, len(genomes)

    ga = GeneticAlgorithm(1, (1.0,), GASettings(population=10, generations=3), evaluate, seed=1)
    state = ga.run()
    rows = logbook_rows(state.logbook, 1)
    assert all(r["max_0"] <= 0.5 for r in rows if r["nfailed"] < 10)
    assert state.hof[0].ok and state.hof[0][0] <= 0.5
    assert sum(r["nfailed"] for r in rows) > 0
