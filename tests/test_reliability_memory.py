"""Memory stays flat when a worker runs simulation after simulation (a tuning study's inner loop): nothing
per-simulation (models, Histories, traced code) outlives the run. The process-level measurement over a
20-generation GA study is benchmarks/memory.py (see docs/reliability.md)."""

from __future__ import annotations

import gc
import linecache
import tracemalloc

import pytest

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


# Regression: the batched engine used to build a torch.fx copy of the model for every Simulation (qsfl/engine/batched.py,
# build_folded -> torch.fx.symbolic_trace + recompile). torch.fx registers each generated forward's source in
# the global torch.fx.graph_module._loader.eval_cache and in linecache and never drops them: 3 entries and
# ~3 KiB per simulation, ~4-5 KiB/run of Python heap in all (30 MB per 10,000 simulations of a long study).
# Fix: build the folded GraphModule once per architecture (an LRU keyed by model name, options and input shape;
# it takes the stacked parameters as inputs, so it can be shared by every Simulation), or drop its
# eval_cache/linecache keys when the engine is discarded.
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
