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


# ----- Ctrl-C at a chosen moment -----------------------------------------------------------------------------
#: written as sitecustomize.py into a folder put first on PYTHONPATH: every Python process of the command runs it
HOOKS = '''
"""Test hooks for `qsfl` processes, active with QSFL_TEST_HOOKS=DIR (tests/helpers.py: interrupt_at).

* DIR/importing: the `qsfl` process has started to import torch (inside qsfl_cli.main);
* DIR/pool-start: the `qsfl` process starts its pool (the thread `qsfl-pool-start`, which first waits for the
  forkserver; a --workers pool) or its local cluster (the `qsfl-forkserver-start` thread of a `local:N` cluster's
  forkserver, started at the CLI's start). The forkserver (started at the CLI's start) is held in its import of
  torch until QSFL_TEST_HOLD_FORKSERVER seconds after that moment, as a forkserver importing torch on a busy machine
  would be.
"""
import os
import sys
import time

_DIR = os.environ.get("QSFL_TEST_HOOKS")


def _mark(name):
    path = os.path.join(_DIR, name)
    if os.path.exists(path):
        return
    with open(path + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(path + ".tmp", path)


if _DIR:
    with open("/proc/self/cmdline", "rb") as fh:
        _CMD = fh.read().replace(b"\\0", b" ").decode(errors="replace")
    _HOLD = float(os.environ.get("QSFL_TEST_HOLD_FORKSERVER", "0"))
    if "multiprocessing.forkserver" in _CMD:   # its command line names qsfl_cli too (its main_path)
        def _hold(event, args):
            global _HOLD
            if _HOLD and event == "import" and args[0] == "torch":
                hold, _HOLD = _HOLD, 0
                deadline = time.monotonic() + 300
                while not os.path.exists(os.path.join(_DIR, "pool-start")) and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(hold)
        sys.addaudithook(_hold)
    elif "qsfl_cli" in _CMD and "multiprocessing" not in _CMD:
        def _hook(event, args):
            if event == "import" and args[0] == "torch":
                _mark("importing")
        sys.addaudithook(_hook)

        def _watch():
            import threading
            starts = {"qsfl-pool-start"} | ({"qsfl-forkserver-start"} if "local:" in _CMD else set())
            while not starts & {t.name for t in threading.enumerate()}:
                time.sleep(0.01)
            _mark("pool-start")

        import threading
        threading.Thread(target=_watch, name="qsfl-test-hook", daemon=True).start()
'''

#: moments of interrupt_at given by a hook's marker file
MARKED_MOMENTS = ("importing", "pool-start")


def interrupt_at(argv: Sequence[str], moment: str | object, tmp: Path, *, hold_s: float = 8.0,
                 timeout: float = 300) -> dict:
    """Run ``qsfl ARGV`` in a session of its own and send SIGINT to its process group (what a terminal's Ctrl-C
    does) at ``moment``: "importing" (torch, at start-up), "pool-start" (the --workers pool's forkserver has
    started, held ``hold_s`` seconds so the signal lands before any worker exists), or a callable that returns
    True once the moment has come. Returns rc, stderr, the seconds from the signal to the end of its stderr (every
    process of the command gone, e.g. no forkserver still importing torch), and the processes below it at the signal
    that are still running half a second after that."""
    import signal
    import time

    hooks = tmp / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOKS)
    for old in MARKED_MOMENTS:
        (hooks / old).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "QSFL_TEST_HOOKS": str(hooks), "QSFL_TEST_HOLD_FORKSERVER": str(hold_s if moment == "pool-start" else 0)}
    ready = (lambda: (hooks / str(moment)).is_file()) if moment in MARKED_MOMENTS else moment
    assert callable(ready), moment
    # SIGINT back to its default in the child: pytest started in the background by a non-interactive shell (nohup
    # ... &, some CI runners) has SIGINT ignored, which the child would inherit (and Python then keeps)
    proc = subprocess.Popen(qsfl_cmd(*argv), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"qsfl ended (rc {proc.returncode}) before {moment}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, f"{moment} never came"
            time.sleep(0.02)
        kids = descendants(proc.pid)
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        err = proc.stderr.read()   # to its end: until every process of the command has exited (or closed it)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    time.sleep(0.5)
    return {"rc": proc.returncode, "stderr": err, "elapsed": elapsed, "left": [k for k in kids if alive(k)],
            "kids": kids}


def assert_interrupted_cleanly(result: dict) -> None:
    """Exit 130 within a second or two of the signal, one line on stderr, no process left behind."""
    err = result["stderr"]
    assert result["rc"] == 130, err
    assert err.strip() == "interrupted" and "Traceback" not in err, err
    assert result["elapsed"] < 2.0, result["elapsed"]
    assert not result["left"], result


TIMING_COLUMNS = ["duration_s", "finished_at"]


def without_timing(df):
    """A trials table without its wall-clock values: the timing columns and each seed's ``duration_s`` inside the
    per-seed JSON (what differs between two runs of the same study)."""
    import json

    df = df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns]).copy()
    if "per_seed" in df.columns:
        def strip(text: str) -> str:
            seeds = json.loads(text) if text else []
            for seed in seeds:
                seed.pop("duration_s", None)
            return json.dumps(seeds, sort_keys=True)
        df["per_seed"] = df["per_seed"].map(strip)
    return df
