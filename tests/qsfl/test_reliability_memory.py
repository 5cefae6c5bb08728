"""Memory stays flat when a worker runs simulation after simulation (a tuning study's inner loop): nothing
per-simulation (models, Histories, traced code) outlives the run. The process-level measurement over a
20-generation GA study is benchmarks/memory.py (see docs/reliability.md)."""

from __future__ import annotations

import gc
import linecache
import tracemalloc

import qsfl
from qsfl.config import SimConfig, StrategyConfig

WARMUP, RUNS = 15, 40


def small(engine: str) -> SimConfig:
    return SimConfig(dataset="digits", model="mlp", clients=4, rounds=1, batch_size=50, engine=engine,
                     strategy=StrategyConfig(name="qsfl", ns=2, k=2))


def heap_growth_per_run(engine: str) -> float:
    """Bytes of Python heap still allocated per simulation, after warm-up (caches filled)."""
    cfg = small(engine)
    for i in range(WARMUP):
        qsfl.simulate(cfg.replace(seed=1000 + i))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(RUNS):
            qsfl.simulate(cfg.replace(seed=i))
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / RUNS
    finally:
        tracemalloc.stop()


def test_sequential_engine_runs_leave_nothing_behind():
    # measured ~0.5-1.2 KiB per run of torch-internal caches still settling; a leaked model (~40 KiB of
    # weights) or History would be far above this bound
    assert heap_growth_per_run("sequential") < 2048


# Regression (fixed in 13dfff7): the batched engine traced the model with torch.fx for every Simulation, and
# torch.fx keeps each generated forward's source in linecache and its own eval cache for good: 3 entries and
# ~3 KiB per simulation (~30 MB per 10,000 simulations of a long study). The engine now traces once per
# architecture. (Its remaining heap growth, ~1-3 KiB per run over the first hundred runs, is bounded caches
# filling up: 0.9 KiB/run over 160 runs.)
def test_batched_engine_runs_leave_no_generated_code_behind():
    cfg = small("batched")
    for i in range(3):
        qsfl.simulate(cfg.replace(seed=1000 + i))
    gc.collect()
    before = len(linecache.cache)
    for i in range(20):
        qsfl.simulate(cfg.replace(seed=i))
    gc.collect()
    assert len(linecache.cache) <= before + 2, f"linecache grew by {len(linecache.cache) - before} in 20 runs"
