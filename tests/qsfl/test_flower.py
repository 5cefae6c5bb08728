"""qsfl.flower inside Flower's own runtime (marker ``flower``; needs ``pip install -e ".[flower]"``).

Each test writes a Flower app with qsfl.flower.export, runs it with ``flwr run`` (Flower's simulation runtime:
a SuperLink this module starts in simulation mode, Ray for the ClientApps) and reads what its ServerApp wrote:

* 3 rounds with 4 clients equal ``qsfl.simulate`` with the sequential engine from the same seed: the same
  qualified clients, the same bytes per message, the same global model (within 1e-5) — QSFL (default and the
  authors' code variant), FedAvg and top-k;
* clients that crash (while training, before uploading) or do not answer in time are left out and every round
  completes;
* the app exported from the quickstart study runs to completion with the command in docs/flower.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, run_qsfl, run_tune
from test_flower_protocol import expected_messages

from qsfl.config import SimConfig, StrategyConfig
from qsfl.flower.export import federation_config, write_app
from qsfl.sim import Simulation

pytestmark = pytest.mark.flower

LEDGER_COLUMNS = ("uplink_bytes", "uplink_header_bytes", "uplink_value_bytes", "uplink_index_bytes",
                  "uplink_meta_bytes", "uplink_messages", "downlink_bytes", "downlink_messages")


def _tool(name: str) -> str:
    """A console script of the Python running the tests (its bin directory first), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the flower extra (pip install -e \".[flower]\")")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def flower_env(tmp_path_factory):
    """The environment of a ``flwr run``: its own FLWR_HOME with a local SuperLink connection, served by a
    SuperLink in simulation mode that this fixture starts (and stops, by its process group)."""
    if importlib.util.find_spec("flwr") is None:   # a failure, not a skip: `-m flower` must not pass without Flower
        pytest.fail('flwr is not installed: pip install -e ".[flower]"')
    home = tmp_path_factory.mktemp("flwr-home")
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                      'address = ":local-in-memory:"\n')
    http = _free_port()
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http),
           "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = open(home / "superlink.out", "w")   # noqa: SIM115 (closed at teardown)
    # what flwr starts as its managed local SuperLink (flwr.cli.local_superlink), on a free port; `flwr run` with
    # the ":local-in-memory:" connection finds it healthy there and uses it
    proc = subprocess.Popen([_tool("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                             "--host", "127.0.0.1", "--port", str(http)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the SuperLink did not start: {(home / 'superlink.out').read_text()[-2000:]}")
            time.sleep(0.5)
        yield env
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def flwr_run(env: dict[str, str], command: list[str], cwd: Path, result_dir: Path) -> tuple[dict, np.ndarray]:
    """Run ``command`` (a ``flwr run ...``) to completion; the ServerApp's history.json and weights.npy."""
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    if not (result_dir / "weights.npy").is_file():
        pytest.fail(f"the run wrote no results to {result_dir}:\n{out[-6000:]}")
    return json.loads((result_dir / "history.json").read_text()), np.load(result_dir / "weights.npy")


def run_app(env: dict[str, str], config: SimConfig, tmp_path: Path, *extra: str) -> tuple[dict, np.ndarray]:
    app = write_app(config, tmp_path / "app")
    command = [_tool("flwr"), "run", str(app), "--stream", "--federation-config", federation_config(config), *extra]
    return flwr_run(env, command, tmp_path, app / "results")


def config(strategy: StrategyConfig, **fields) -> SimConfig:
    base = {"dataset": "digits", "model": "mlp", "clients": 4, "rounds": 3, "seed": 3, "engine": "sequential",
            "device": "cpu"}
    return SimConfig(strategy=strategy, **{**base, **fields})


STRATEGIES = {
    "qsfl": StrategyConfig(name="qsfl", ns=3, k=2),
    "authors_code": StrategyConfig(name="qsfl", variant="authors_code", ns=3),
    "fedavg": StrategyConfig(name="fedavg"),
    "topk": StrategyConfig(name="topk", p=0.1),
}


@pytest.mark.parametrize("label", list(STRATEGIES))
def test_flower_runtime_equals_the_simulator(flower_env, tmp_path, label):
    cfg = config(STRATEGIES[label])
    # FedAvg's run also has half the clients evaluate the global model on their own data (@app.evaluate())
    extra = ["--run-config", "fraction-evaluate=0.5"] if label == "fedavg" else []
    history, weights = run_app(flower_env, cfg, tmp_path, *extra)
    torch.set_num_threads(1)
    sim = Simulation(cfg)
    ref = sim.run().df
    rows = history["rounds"]
    assert len(rows) == len(ref) == 3
    assert np.abs(weights - sim.final_weights.numpy()).max() <= 1e-5
    n = weights.size
    for row, (_, expected) in zip(rows, ref.iterrows()):
        assert row["failed_clients"] == []
        assert row["qualified_clients"] == list(expected["qualified_clients"])
        for col in LEDGER_COLUMNS:
            assert row[col] == expected[col], col
        assert row["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=1e-6)
        if label == "fedavg":
            assert row["client_evaluations"] == 2 and 0.0 <= row["client_accuracy"] <= 1.0
        uplink = sorted((kind, c, b) for direction, kind, c, b in row["messages"] if direction == "up")
        if label == "authors_code":   # every sampled client uploads (upload="all"); round 0 also pretrains
            assert sum(b for _, _, b in uplink) == expected["uplink_bytes"]
            assert {c for kind, c, _ in uplink if kind == "segment"} == set(expected["sampled_clients"])
        else:
            assert uplink == sorted(expected_messages(cfg, expected, n))


FAILING_CLIENT = '''"""ClientApp of a test: client 1 crashes before every upload, client 2 while training in round 1, client 3 takes
longer than the server's timeout to upload in round 2; the others are qsfl.flower's own handlers."""

import time
import urllib.request
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from qsfl.flower.client import client_id, handle_register, handle_train, handle_upload

CONFIG = Path(__file__).with_name("qsfl.toml")
app = ClientApp()


@app.query("register")
def register(msg: Message, context: Context) -> Message:
    return handle_register(msg, context, CONFIG)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if client_id(context) == 2 and int(msg.content["config"]["round"]) == 1:
        raise RuntimeError("client 2 crashes while training")
    return handle_train(msg, context, CONFIG)


@app.train("upload")
def upload(msg: Message, context: Context) -> Message:
    if client_id(context) == 1:
        raise RuntimeError("client 1 crashes before it uploads")
    if client_id(context) == 3 and int(msg.content["config"]["round"]) == 2:
        time.sleep(40)
    return handle_upload(msg, context, CONFIG)
'''


def test_clients_that_crash_or_straggle_are_left_out_and_every_round_completes(flower_env, tmp_path):
    cfg = config(StrategyConfig(name="qsfl", ns=3, k=4))   # every client that answers is qualified
    app = write_app(cfg, tmp_path / "app")
    (app / "qsfl_app" / "client_app.py").write_text(FAILING_CLIENT)
    command = [_tool("flwr"), "run", str(app), "--stream", "--federation-config", federation_config(cfg),
               "--run-config", "timeout=15.0"]
    history, weights = flwr_run(flower_env, command, tmp_path, app / "results")
    rows = history["rounds"]
    assert len(rows) == 3 and np.isfinite(weights).all()
    assert [row["failed_clients"] for row in rows] == [[1], [1, 2], [1, 3]]
    assert rows[1]["answered_clients"] == [0, 1, 3] and "client 2 crashes" in rows[1]["failures"]["2"]
    assert "client 1 crashes" in rows[0]["failures"]["1"]
    assert rows[2]["failures"]["3"].startswith("no reply within 15")
    assert [row["uploaded_clients"] for row in rows] == [[0, 2, 3], [0, 3], [0, 2]]
    for row in rows:   # the ledger bills what arrived: no segment of a client that failed
        assert not any(kind == "segment" and c in row["failed_clients"] for _, kind, c, _ in row["messages"])
        assert row["test_accuracy"] == row["test_accuracy"]   # evaluated
    # client 2 missed round 1's model: in round 2 it received the signs of g_1 with w_2
    assert any(kind == "signs" and c == 2 for _, kind, c, _ in rows[2]["messages"])


def test_the_quickstart_study_exported_as_an_app_runs_with_the_command_in_the_docs(flower_env, tmp_path):
    run_tune(REPO / "studies" / "quickstart.toml", tmp_path / "qs")
    proc = run_qsfl("flower-app", str(tmp_path / "qs"), "--out", str(tmp_path / "my_app"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = (REPO / "docs" / "flower.md").read_text()
    lines = [line.strip() for line in docs.splitlines() if line.strip().startswith("flwr run my_app/")]
    assert lines, "docs/flower.md has no `flwr run my_app/ ...` command"
    command = re.findall(r'"[^"]*"|\S+', lines[0])
    command = [_tool("flwr")] + [part.strip('"') for part in command[1:]]
    assert proc.stdout.count("flwr run") == 1 and lines[0].split("--stream")[1] in proc.stdout
    history, weights = flwr_run(flower_env, command, tmp_path, tmp_path / "my_app" / "results")
    rows = history["rounds"]
    assert len(rows) == 30 and np.isfinite(weights).all()
    assert all(row["failed_clients"] == [] for row in rows)
    assert rows[-1]["test_accuracy"] > 0.5
