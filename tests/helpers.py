"""Shared test helpers: tiny study specs, running ``qsfl`` in a fresh process, walking a process tree.

Imported by the test modules (pytest puts tests/ on sys.path), so the three things every end-to-end test needs
exist once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----- study specs -------------------------------------------------------------------------------------------
def spec_text(name: str = "tiny", *, engine: str = "ga", model: str = "mlp", clients: int = 6, rounds: int = 3,
              batch_size: int = 20, target_accuracy: float | None = None, seeds: Sequence[int] = (0,),
              eval_seeds: Sequence[int] | None = None, search_seed: int | None = None,
              save_histories: bool | None = None, uplink_weight: float = 0.5, population: int = 4, generations: int = 2,
              n_trials: int = 8, base_strategy: bool = False) -> str:
    """A tiny digits study spec (beta, k, ns, p searched; k and ns up to ``clients``) as TOML text."""
    study = [f'name = "{name}"', f'engine = "{engine}"', f"seeds = {list(seeds)}"]
    if eval_seeds is not None:
        study.append(f"eval_seeds = {list(eval_seeds)}")
    if search_seed is not None:
        study.append(f"search_seed = {search_seed}")
    if save_histories is not None:
        study.append(f"save_histories = {str(save_histories).lower()}")
    base = ['dataset = "digits"', f'model = "{model}"', f"clients = {clients}", f"rounds = {rounds}",
            f"batch_size = {batch_size}"]
    if target_accuracy is not None:
        base.append(f"target_accuracy = {target_accuracy}")
    search = ("[ga]\n" f"population = {population}\n" f"generations = {generations}\n" if engine == "ga" else
              "[optuna]\n" f"n_trials = {n_trials}\n" 'sampler = "tpe"\n' "n_startup_trials = 4\n")
    return "\n".join([
        "[study]", *study, "", "[base]", *base, "",
        *(['[base.strategy]', 'name = "qsfl"', ""] if base_strategy else []),
        "[space.beta]", "low = 0.0", "high = 1.0",
        "[space.k]", "low = 1", f"high = {clients}",
        "[space.ns]", "low = 1", f"high = {clients}",
        "[space.p]", "low = 0.05", "high = 1.0", "",
        "[objective]", f'formula = "final_accuracy - {uplink_weight} * uplink_fraction"', 'direction = "maximize"', "",
        search])


# the reliability suite's studies: a template with {name}, logistic regression on 4 clients
GA_SPEC = spec_text("{name}", model="logreg", clients=4, rounds=2, batch_size=50, eval_seeds=[], search_seed=3,
                    save_histories=False, population=6, generations=4, base_strategy=True)
OPTUNA_SPEC = GA_SPEC.replace('engine = "ga"', 'engine = "optuna"').split("[ga]")[0] + """
[optuna]
n_trials = 8
sampler = "tpe"
n_startup_trials = 4
"""


def write_spec(directory: Path, text: str, name: str) -> Path:
    """Write ``text`` (``{name}`` filled in) to ``directory/name.toml``."""
    path = directory / f"{name}.toml"
    path.write_text(text.format(name=name))
    return path


# ----- the CLI in a fresh process ----------------------------------------------------------------------------
def qsfl_cmd(*args: str) -> list[str]:
    """``python -m qsfl_cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "qsfl_cli", *args]


def tune_cmd(spec: Path, out: Path, *extra: str) -> list[str]:
    """``qsfl tune SPEC --out OUT --no-report --quiet EXTRA`` as an argv."""
    return qsfl_cmd("tune", str(spec), "--out", str(out), "--no-report", "--quiet", *extra)


def run_qsfl(*args: str, cwd: Path = REPO, timeout: float = 600,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``qsfl ARGS`` in a fresh process (this checkout's code first on the path); capture its output."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    return subprocess.run(qsfl_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def run_tune(spec: Path, out: Path, *extra: str, timeout: int = 600) -> None:
    """Run ``qsfl tune`` to completion in a fresh process; it must succeed without a traceback."""
    proc = subprocess.run(tune_cmd(spec, out, *extra), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


# ----- processes ---------------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (pool workers, forkserver, resource tracker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
