"""tuning/workers.py: the one worker-pool module (serial, process pool, Dask) and its use by studies.

Fast tests: the cluster argument, the deferral of Ctrl-C inside the pool's machinery, the serial pool, one process
pool (results streamed, one torch thread, the dataset preloaded once per worker, SIGINT ignored and unblocked). Slow tests (CI runs them with -m slow): Ctrl-C with a pool and a LocalCluster, a
LocalCluster map, a worker SIGKILLed mid-task, and the GA study on ``--cluster``: the same trials table as a
serial run, also when one of two workers is killed mid-generation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import helpers
import pandas as pd
import pytest
from helpers import alive, descendants, without_timing

from qsfl.config import SimConfig
from qsfl.errors import ConfigError
from tuning import interrupts
from tuning import workers as W
from tuning.workers import DaskWorkers, PoolWorkers, SerialWorkers, check_cluster, make_workers

REPO = Path(__file__).resolve().parents[2]
BASE = SimConfig(dataset="digits", model="logreg", clients=4, rounds=1)


# ----- tasks (module level: the workers import them by name) ----------------------------------------------------
def square_after(task: tuple[int, float]) -> int:
    i, delay = task
    time.sleep(delay)
    return i * i


_FIRST_DATASETS: list = []   # in a worker process: the dataset objects its first task saw (kept alive)


def worker_facts(_: object) -> dict:
    """What a task sees in its worker process; ``same_dataset``: the cached dataset is the very object an earlier
    task of this process saw (not reloaded; the reference kept here means a new one could not reuse its id)."""
    import torch

    import qsfl.sim

    datasets = list(qsfl.sim._DATASET_CACHE.values())
    if not _FIRST_DATASETS:
        _FIRST_DATASETS.extend(datasets)
    return {"pid": os.getpid(), "threads": torch.get_num_threads(),
            "datasets": [k[0] for k in qsfl.sim._DATASET_CACHE],
            "same_dataset": len(datasets) == len(_FIRST_DATASETS) and
            all(a is b for a, b in zip(datasets, _FIRST_DATASETS)),
            "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            "sigint_blocked": signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])}


HOLD_S = 120.0


def held_until(task: tuple[int, str]) -> tuple[int, bool]:
    """Task i: returns at once, or (a path given) once that file exists; (i, released) (False after HOLD_S)."""
    i, path = task
    deadline = time.monotonic() + HOLD_S
    while path and not os.path.exists(path):
        if time.monotonic() > deadline:
            return i, False
        time.sleep(0.02)
    return i, True


def assert_results_stream(w: W.Workers, tmp_path: Path) -> None:
    """Task 0 is held until the test releases it; tasks 1-3 return at once. A result must come back while task 0
    is still held (streaming in completion order, with its task index), whichever worker runs which task: a
    backend may queue a task behind the held one (Dask does, until work stealing moves it), so only the first
    result is asserted to come early, not the order of the rest."""
    release = tmp_path / "release"
    results = w.map_unordered(held_until, [(0, str(release)), (1, ""), (2, ""), (3, "")])
    first = next(results)
    assert first[0] != 0 and first[1] == (first[0], True), first       # came back while task 0 was held
    release.touch()
    got = [first, *results]
    assert sorted(got) == [(i, (i, True)) for i in range(4)], got      # each once, task 0 released by the test


def assert_worker_facts(facts: list[dict], n: int) -> None:
    """One torch thread per worker; the dataset loaded before the first task and once per worker process."""
    assert {f["threads"] for f in facts} == {1}
    assert all(f["datasets"] == ["digits"] for f in facts)
    assert all(f["same_dataset"] for f in facts)
    assert len({f["pid"] for f in facts}) <= n


def fail_on_two(i: int) -> int:
    if i == 2:
        raise ValueError("task 2 failed")
    return i


def pid_after(task: tuple[int, float]) -> tuple[int, int]:
    i, delay = task
    time.sleep(delay)
    return i, os.getpid()


# ----- the cluster argument -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["local:1", "local:16", "tcp://10.0.0.5:8786", "tls://scheduler.lab:8786"])
def test_check_cluster_accepts_local_n_and_scheduler_addresses(value):
    assert check_cluster("--cluster", value) == value


@pytest.mark.parametrize("value", ["local:0", "local:", "local", "local:two", "10.0.0.5:8786", "", 4, None])
def test_check_cluster_rejects_anything_else_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"study\.cluster: .*allowed: 'local:N'"):
        check_cluster("study.cluster", value)


def test_make_workers_checks_workers_and_picks_the_backend():
    with pytest.raises(ConfigError, match="--workers: 0 is out of range"):
        make_workers(0)
    with pytest.raises(ConfigError, match="--cluster"):
        make_workers(cluster="local:0")
    with make_workers(1) as w:
        assert isinstance(w, SerialWorkers) and w.n == 1


def test_unreachable_scheduler_is_a_config_error(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(W, "CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(ConfigError, match=r"--cluster tcp://127\.0\.0\.1:9: cannot connect to the Dask scheduler"):
        make_workers(cluster="tcp://127.0.0.1:9")


# ----- --cluster and study.cluster -----------------------------------------------------------------------------
@pytest.fixture
def ga_spec(tmp_path) -> Path:
    spec = tmp_path / "tiny.toml"
    spec.write_text(GA_SPEC.format(name="tiny_cli", rounds=1))
    return spec


@pytest.mark.parametrize("args,message", [
    (["--cluster", "local:0"], "--cluster: 'local:0' is not a cluster"),
    (["--cluster", "localhost:8786"], "--cluster: 'localhost:8786' is not a cluster"),
    (["--cluster", "local:2", "--workers", "2"], "--workers 2 with --cluster local:2: choose one"),
    (["--set", 'study.cluster="local:0"'], "study.cluster: 'local:0' is not a cluster"),
])
def test_tune_rejects_a_bad_cluster_before_any_output(ga_spec, tmp_path, capsys, args, message):
    from qsfl_cli import main

    out = tmp_path / "out"
    assert main(["tune", str(ga_spec), "--out", str(out), "--quiet", "--no-report", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_compare_rejects_a_bad_cluster(tmp_path, capsys):
    from qsfl_cli import main

    assert main(["compare", str(tmp_path), "--cluster", "local:zero", "--quiet"]) == 2
    assert "--cluster: 'local:zero' is not a cluster" in capsys.readouterr().err


def test_study_cluster_is_parsed_and_does_not_change_the_fingerprint(ga_spec):
    from tuning.spec import load_spec, spec_fingerprint

    plain = load_spec(ga_spec)
    clustered = load_spec(ga_spec, ['study.cluster="tcp://10.0.0.5:8786"'])
    assert plain.study.cluster is None and clustered.study.cluster == "tcp://10.0.0.5:8786"
    assert spec_fingerprint(plain) == spec_fingerprint(clustered)      # resume a study on another cluster


# ----- Ctrl-C -------------------------------------------------------------------------------------------------
@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler for the test: a process started in the background by a non-interactive shell
    (nohup ... &, some CI runners) inherits SIGINT ignored, which these tests must not depend on."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_inside_the_pool_machinery_is_deferred_to_the_end_of_the_block():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.ctrl_c_deferred() as interrupted:
        assert not interrupted()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)                       # the handler has run: a KeyboardInterrupt would be here
        reached.append(interrupted())
    assert reached == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # restored
    with interrupts.ctrl_c_deferred() as interrupted:     # no SIGINT: nothing raised
        pass
    assert not interrupted()


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_deferral_leaves_other_handlers_and_threads_alone():
    import threading

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.ctrl_c_deferred() as interrupted:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert not interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []

    def other_thread():
        with interrupts.ctrl_c_deferred() as interrupted:
            seen.append(signal.getsignal(signal.SIGINT) is signal.default_int_handler and not interrupted())

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert seen == [True]


# ----- serial --------------------------------------------------------------------------------------------------
def test_serial_runs_in_task_order_with_one_torch_thread_then_restores_it():
    import torch

    torch.set_num_threads(2)
    try:
        with SerialWorkers() as w:
            seen = list(w.map_unordered(lambda t: (t, torch.get_num_threads()), ["a", "b", "c"]))
            assert seen == [(0, ("a", 1)), (1, ("b", 1)), (2, ("c", 1))]
            assert torch.get_num_threads() == 2              # restored once the map is done
            assert list(w.map(lambda t: t * 2, [1, 2, 3])) == [2, 4, 6]
    finally:
        torch.set_num_threads(1)


def test_map_puts_results_back_in_task_order():
    class Reversed(SerialWorkers):
        def map_unordered(self, fn, tasks):
            return reversed([(i, fn(t)) for i, t in enumerate(tasks)])

    assert list(Reversed().map(lambda t: t + 1, [10, 20, 30])) == [11, 21, 31]


# ----- a process pool ------------------------------------------------------------------------------------------
def test_process_pool_streams_results_and_sets_each_worker_up_once(tmp_path):
    with PoolWorkers(2, BASE) as w:
        assert w.n == 2
        facts = [f for _, f in w.map_unordered(worker_facts, range(8))]
        assert_worker_facts(facts, 2)
        assert all(f["sigint_ignored"] for f in facts)               # Ctrl-C is the parent's to handle
        assert not any(f["sigint_blocked"] for f in facts)           # started blocked, unblocked once ignored
        assert_results_stream(w, tmp_path)
        assert list(w.map(square_after, [(0, 1.0), (1, 0.0), (2, 0.0)])) == [0, 1, 4]
        with pytest.raises(ValueError, match="task 2 failed"):
            list(w.map(fail_on_two, range(4)))


CTRL_C = textwrap.dedent("""
    import signal, sys, time
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {repo!r} + "/tests"); sys.path.insert(0, {tests!r})
    from tuning.workers import make_workers
    from test_workers import square_after

    if __name__ == "__main__":
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a background shell may have ignored it
        kw = {{"cluster": sys.argv[1]}} if sys.argv[1].startswith("local") else {{"workers": int(sys.argv[1])}}
        try:
            with make_workers(**kw) as w:
                results = w.map_unordered(square_after, [(i, 60.0) for i in range(4)])
                print("running", flush=True)
                for r in results:
                    print(r, flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["2", "local:2"])
def test_ctrl_c_terminates_the_workers_quietly_and_raises_once(tmp_path, backend):
    if backend.startswith("local"):
        pytest.importorskip("distributed")
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C.format(repo=str(REPO), tests=str(Path(__file__).resolve().parent)))
    proc = subprocess.Popen([sys.executable, str(script), backend], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(3)                                          # the tasks are running in the workers
        os.killpg(proc.pid, signal.SIGINT)                     # Ctrl-C in a terminal: the whole process group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and out.split() == ["interrupted"], (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    deadline = time.monotonic() + 30                            # no worker outlives the interrupted parent
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker processes survived the Ctrl-C")


# ----- Dask ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_cluster_streams_results_with_one_thread_and_the_dataset_per_worker(tmp_path):
    """Dask does not run a worker's tasks in submission order: it may queue task 2 behind a long task 0 on one
    worker and move it only when work stealing kicks in (0.3-1.4 s on an idle machine, later under load), so
    "the long task comes back last" is no promise; a result coming back while another task still runs is."""
    pytest.importorskip("distributed")
    with make_workers(cluster="local:2", base=BASE) as w:
        assert isinstance(w, DaskWorkers) and w.n == 2
        assert_worker_facts([f for _, f in w.map_unordered(worker_facts, range(8))], 2)
        assert_results_stream(w, tmp_path)
        assert list(w.map(square_after, [(0, 1.0), (1, 0.0), (2, 0.0)])) == [0, 1, 4]
        with pytest.raises(ValueError, match="task 2 failed"):
            list(w.map(fail_on_two, range(4)))


@pytest.fixture
def cluster2():
    """A LocalCluster of two single-thread worker processes (nannies restart a killed worker), and a client."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    client = distributed.Client(cluster)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()


def worker_pids(client) -> dict[str, int]:
    """{worker address: process id} (scheduler_info() does not report pids; Client.run asks each worker)."""
    return client.run(os.getpid)


def kill_a_busy_worker(client, timeout: float = 120) -> int:
    """SIGKILL a worker process while it runs a task; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [addr for addr, keys in client.processing().items() if keys]
        pids = worker_pids(client)
        if busy and busy[0] in pids:
            time.sleep(0.3)                                     # inside the task, not at its start
            os.kill(pids[busy[0]], signal.SIGKILL)
            return pids[busy[0]]
        time.sleep(0.05)
    pytest.fail("no worker ever ran a task")


@pytest.mark.slow
def test_killed_dask_worker_tasks_are_rerun_and_each_result_comes_once(cluster2):
    cluster, client = cluster2
    with DaskWorkers(cluster.scheduler_address) as w:
        assert w.n == 2
        results = w.map_unordered(pid_after, [(i, 2.0) for i in range(6)])
        killed = kill_a_busy_worker(client)
        got = list(results)
    assert sorted(i for i, _ in got) == list(range(6))             # none lost, none twice
    assert killed not in {pid for _, (_, pid) in got}               # whatever it ran was run again elsewhere


# ----- studies on a cluster ------------------------------------------------------------------------------------
# the reliability suite's tiny GA study (tests/helpers.py) with the rounds as a {rounds} field
GA_SPEC = helpers.GA_SPEC.replace("rounds = 2\n", "rounds = {rounds}\n")
assert "{rounds}" in GA_SPEC


def tune(spec: Path, out: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qsfl_cli", "tune", str(spec), "--out", str(out), "--no-report", "--quiet", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    return proc


def comparable(out: Path) -> pd.DataFrame:
    """The trials table without wall-clock values (durations, timestamps)."""
    from tuning.trials import read_trials

    df = read_trials(out)
    assert df is not None
    return without_timing(df)


@pytest.fixture(scope="module")
def serial_study(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("serial")
    spec = tmp / "tiny.toml"
    spec.write_text(GA_SPEC.format(name="tiny_cluster", rounds=6))
    tune(spec, tmp / "out")
    return spec, tmp / "out"


def assert_same_study(reference: Path, out: Path) -> None:
    a, b = comparable(reference), comparable(out)
    assert len(a) >= 10 and b["trial"].is_unique
    pd.testing.assert_frame_equal(b, a)
    assert (out / "best.toml").read_text() == (reference / "best.toml").read_text()
    assert (out / "logbook.csv").read_text() == (reference / "logbook.csv").read_text()


@pytest.mark.slow
def test_ga_on_a_local_cluster_equals_the_serial_run(serial_study, tmp_path):
    pytest.importorskip("distributed")
    spec, reference = serial_study
    tune(spec, tmp_path / "out", "--cluster", "local:2")
    assert_same_study(reference, tmp_path / "out")


@pytest.mark.slow
def test_ga_loses_nothing_when_a_cluster_worker_is_killed_mid_generation(serial_study, tmp_path, cluster2):
    from tuning.trials import read_trials

    cluster, client = cluster2
    spec, reference = serial_study
    population = 6
    out = tmp_path / "out"
    proc = tune(spec, out, "--cluster", cluster.scheduler_address, wait=False)
    try:
        deadline = time.monotonic() + 600
        while True:                                        # generation 1 is being evaluated
            df = read_trials(out) if out.is_dir() else None
            if df is not None and (df["generation"] >= 1).any():
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "generation 1 never started"
            time.sleep(0.05)
        kill_a_busy_worker(client)
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert len(read_trials(out)) > population
    assert_same_study(reference, out)                      # no row lost, none twice, same values as serial
    # the study left the cluster's workers running: the nanny's restart of the killed one (a spawned process
    # importing torch) may still be under way when a study ends, which now takes about a second less
    client.wait_for_workers(2, timeout=120)
    assert len(worker_pids(client)) == 2


@pytest.mark.slow
def test_ga_on_a_local_cluster_killed_and_resumed_equals_the_serial_run(serial_study, tmp_path):
    """SIGKILL of `qsfl tune --cluster local:2` itself: its workers do not outlive it, and --resume (again on a
    cluster) loses and repeats nothing."""
    from tuning.trials import read_trials

    pytest.importorskip("distributed")
    spec, reference = serial_study
    out = tmp_path / "out"
    proc = tune(spec, out, "--cluster", "local:2", wait=False)
    try:
        deadline = time.monotonic() + 600
        while True:
            df = read_trials(out) if out.is_dir() else None
            if df is not None and len(df) >= 8:
                break
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        kids = descendants(proc.pid)
        before = read_trials(out)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert kids, "expected cluster worker processes"
    deadline = time.monotonic() + 60
    while any(alive(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in kids if alive(p)], "orphaned cluster processes"
    tune(spec, out, "--resume", "--cluster", "local:2")
    after = read_trials(out)
    kept = after.set_index("trial").loc[before["trial"].tolist()].reset_index()[before.columns]
    pd.testing.assert_frame_equal(kept, before)            # finished rows are not re-run (same timestamps)
    assert_same_study(reference, out)


@pytest.mark.slow
def test_compare_on_a_local_cluster_equals_serial(serial_study, tmp_path):
    import shutil

    from tuning.compare import plan_comparison, run_comparison

    pytest.importorskip("distributed")
    _, study = serial_study
    runs = {}
    for how, kw in (("serial", {"workers": 1}), ("cluster", {"cluster": "local:2"})):
        out = Path(shutil.copytree(study, tmp_path / how))
        plan = plan_comparison(out, top=1, seeds=[5, 6], rounds=2)
        runs[how] = run_comparison(plan, **kw).drop(columns=["path", "wall_time_s"])
    assert len(runs["serial"]) >= 6 and set(runs["serial"]["status"]) == {"complete"}
    pd.testing.assert_frame_equal(runs["cluster"], runs["serial"])


@pytest.mark.slow
def test_optuna_on_a_local_cluster_equals_two_pool_workers(tmp_path):
    """Optuna asks a batch of trials (as many as there are workers) and evaluates it on the pool: a
    LocalCluster of 2 gives the table of --workers 2."""
    pytest.importorskip("distributed")
    text = GA_SPEC.format(name="tiny_optuna_pool", rounds=2).split("[ga]")[0].replace('engine = "ga"',
                                                                                     'engine = "optuna"')
    spec = tmp_path / "optuna.toml"
    spec.write_text(text + "\n[optuna]\nn_trials = 6\nsampler = \"tpe\"\nn_startup_trials = 2\n")
    tune(spec, tmp_path / "pool", "--workers", "2")
    tune(spec, tmp_path / "cluster", "--cluster", "local:2")
    a, b = comparable(tmp_path / "pool"), comparable(tmp_path / "cluster")
    assert len(a) == 6 and a["trial"].is_unique
    pd.testing.assert_frame_equal(b, a)
