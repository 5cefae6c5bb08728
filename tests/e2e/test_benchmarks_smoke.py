"""Every benchmark script still runs: its smallest mode (``--quick``, small budgets, outputs in a temporary
directory) exits 0. What they measure is in benchmarks/README.md; this only keeps the scripts from rotting (e.g.
a spec change that makes a ``--quick`` override invalid). benchmarks/memory.py has no quick mode: the
reliability suite covers its study (tests/qsfl/test_reliability_memory.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPTS = {
    "cli_startup": ["--quick", "--repeats", "1"],
    "cluster_speed": ["--quick", "--repeats", "1"],
    "communication": ["--quick", "--datasets", "digits", "--seeds", "0"],
    "engine": ["--quick", "--cases", "mlp_digits_c50", "mlp_digits_c20_dirichlet"],
    "fidelity": ["--quick", "--out", "{tmp}/fidelity"],
    "qsfl_rounds": ["--quick"],
    "quickstart_speed": ["--quick"],
    "search": ["--quick", "--tasks", "quickstart", "--searchers", "ga", "gp+fid", "--out", "{tmp}/search"],
    "simulate_many": ["--quick", "--breakdown"],
    "topk_cut": ["--quick"],
    "trials_journal": ["--quick", "--dir", "{tmp}"],
    "tuning": ["--quick", "--out", "{tmp}/tuning"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_quick_mode_runs(script, tmp_path):
    args = [a.format(tmp=tmp_path) for a in SCRIPTS[script]]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert proc.stdout.strip(), "the script printed nothing"


def test_every_benchmark_script_is_smoke_tested_or_named_here():
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")}
    assert scripts - set(SCRIPTS) == {"memory"}
