"""qsfl.flower's round as messages (qsfl.flower.protocol, no Flower needed) equals the simulator: the same qualified
clients, the same bytes per message, the same global model; a client that fails does not stop a round; the
exported app's files. The same runners inside Flower's runtime: tests/qsfl/test_flower.py (marker ``flower``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsfl import simulate
from qsfl.comm import dense_message, meta_message, sign_pattern_message, sparse_message
from qsfl.config import SimConfig, StrategyConfig, load_config
from qsfl.errors import ConfigError
from qsfl.flower.export import run_command, write_app
from qsfl.flower.protocol import (
    ClientRunner,
    ClientState,
    ServerRunner,
    TrainRequest,
    UploadRequest,
    decode_signs,
    encode_signs,
)
from qsfl.segments import SegmentLayout, ceil_fraction
from qsfl.sim import Simulation

LEDGER_COLUMNS = ("uplink_bytes", "uplink_header_bytes", "uplink_value_bytes", "uplink_index_bytes",
                  "uplink_meta_bytes", "uplink_messages", "downlink_bytes", "downlink_messages")


def config(strategy: StrategyConfig, **fields) -> SimConfig:
    base = {"dataset": "digits", "model": "mlp", "clients": 4, "rounds": 3, "seed": 3, "engine": "sequential",
            "device": "cpu"}
    return SimConfig(strategy=strategy, **{**base, **fields})


def run_protocol(cfg: SimConfig, fail_upload: set[int] = frozenset(), fail_train: dict[int, set[int]] | None = None
                 ) -> ServerRunner:
    """Every round through the runners, in process; ``fail_upload``: clients that never answer an upload request,
    ``fail_train``: round -> clients that fail their train message."""
    server = ServerRunner(cfg)
    clients = {c: ClientRunner(cfg, c) for c in range(cfg.clients)}
    states = {c: ClientState() for c in range(cfg.clients)}
    for t in range(cfg.rounds):
        down = (fail_train or {}).get(t, set())
        reqs = server.train_requests()
        replies = {c: clients[c].train(r, states[c]) for c, r in reqs.items() if c not in down}
        uploads = server.receive_train(replies, {c: "failed" for c in reqs if c in down})
        if uploads:
            got = {c: clients[c].upload(r, states[c]) for c, r in uploads.items() if c not in fail_upload}
            server.receive_uploads(got, {c: "no reply" for c in uploads if c in fail_upload})
        server.finish_round()
    return server


def expected_messages(cfg: SimConfig, row, n: int) -> list[tuple[str, int, int]]:
    """(kind, client, bytes) of every uplink message the simulator's round ``row`` billed, from its columns."""
    s = cfg.strategy
    if s.name == "fedavg":
        return [("update", c, dense_message(n).total) for c in row["sampled_clients"]]
    if s.name == "topk":
        k = ceil_fraction(s.p, n)
        return [("update", c, sparse_message(k, n, s.index_encoding).total) for c in row["sampled_clients"]]
    layout = SegmentLayout(n, s.ns)
    out = [("meta", c, meta_message().total) for c in row["sampled_clients"]]
    for c, seg in zip(row["qualified_clients"], row["segment_ids"]):
        size = int(layout.sizes[seg])
        out.append(("segment", c, sparse_message(ceil_fraction(s.p, size), size, s.index_encoding).total))
    return out


STRATEGIES = {
    "qsfl": StrategyConfig(name="qsfl", ns=3, k=2),
    "qsfl-error-feedback": StrategyConfig(name="qsfl", ns=3, k=2, error_feedback=True),
    "qsfl-no-qj": StrategyConfig(name="qsfl", use_qj=False, ns=2),
    "qsfl-no-scss": StrategyConfig(name="qsfl", use_scss=False, k=2),
    "qsfl-official": StrategyConfig(name="qsfl", ns=3, alpha=0.5, aggregate="official"),
    "qsfl-percentile": StrategyConfig(name="qsfl", ns=3, selection="percentile", relevance="weights"),
    "authors_code": StrategyConfig(name="qsfl", variant="authors_code", ns=3),
    "authors_code-qualified-upload": StrategyConfig(name="qsfl", variant="authors_code", ns=3, upload="qualified"),
    "fedavg": StrategyConfig(name="fedavg"),
    "topk": StrategyConfig(name="topk", p=0.1),
    "topk-error-feedback": StrategyConfig(name="topk", p=0.1, error_feedback=True),
}


# labels whose every message expected_messages derives from the simulator's row
PER_MESSAGE = ("qsfl", "qsfl-error-feedback", "fedavg", "topk", "topk-error-feedback")


@pytest.mark.parametrize("label", sorted(STRATEGIES))
def test_the_protocol_equals_the_simulator(label):
    cfg = config(STRATEGIES[label])
    server = run_protocol(cfg)
    sim = Simulation(cfg)
    history = sim.run()
    assert torch.allclose(server.weights, sim.final_weights, rtol=0, atol=1e-5)
    for row, (_, ref) in zip(server.rows, history.df.iterrows(), strict=True):
        assert row["qualified_clients"] == list(ref["qualified_clients"])
        for col in LEDGER_COLUMNS:
            assert row[col] == ref[col], col
        assert row["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=1e-6)
        if label in PER_MESSAGE:
            up = sorted((kind, c, b) for direction, kind, c, b in row["messages"] if direction == "up")
            assert up == sorted(expected_messages(cfg, ref, server.plan.n))


def test_partial_participation_sends_the_signs_of_the_last_update_to_clients_without_it():
    cfg = config(StrategyConfig(name="qsfl", ns=2, k=2), clients=6, client_fraction=0.5)
    server = run_protocol(cfg)
    history = simulate(cfg)
    n = server.plan.n
    for t, (row, (_, ref)) in enumerate(zip(server.rows, history.df.iterrows())):
        assert row["qualified_clients"] == list(ref["qualified_clients"])
        assert row["uplink_bytes"] == ref["uplink_bytes"]
        previous = set(server.rows[t - 1]["sampled_clients"]) if t else set(row["sampled_clients"])
        signs = sorted(c for _, kind, c, _ in row["messages"] if kind == "signs")
        assert signs == sorted(set(row["sampled_clients"]) - previous)
        assert row["downlink_bytes"] == ref["downlink_bytes"] + len(signs) * sign_pattern_message(n).total
    sim = Simulation(cfg)
    sim.run()
    assert torch.allclose(server.weights, sim.final_weights, atol=1e-5)


def test_signs_round_trip_in_two_bits_per_entry():
    v = torch.tensor([0.5, -2.0, 0.0, 3.0, -0.0, 1e-9, -1e-9])
    data = encode_signs(5, v)
    assert len(data) == sign_pattern_message(len(v)).total
    assert torch.equal(decode_signs(data), torch.sign(v))


def test_a_client_without_the_previous_model_and_without_signs_fails_its_train_message():
    cfg = config(StrategyConfig(name="qsfl", ns=3, k=2))
    client = ClientRunner(cfg, 1)
    w = np.zeros(client.plan.n, dtype=np.float32)
    with pytest.raises(RuntimeError, match="round 1"):
        client.train(TrainRequest(2, w, last_update="stored"), ClientState())


def test_a_client_asked_to_upload_without_its_training_of_that_round_fails_the_message():
    client = ClientRunner(config(StrategyConfig(name="qsfl", ns=3, k=2)), 0)
    with pytest.raises(RuntimeError, match="round-1 training"):
        client.upload(UploadRequest(1), ClientState())


def test_a_qualified_client_that_never_uploads_is_left_out_and_the_round_goes_on():
    cfg = config(StrategyConfig(name="qsfl", ns=3, k=3))
    server = run_protocol(cfg, fail_upload={1}, fail_train={1: {2}})
    assert all(torch.isfinite(server.weights))
    for row in server.rows:
        assert 1 not in row["uploaded_clients"]
        if 1 in row["qualified_clients"]:
            assert 1 in row["failed_clients"]
            assert not any(kind == "segment" and c == 1 for _, kind, c, _ in row["messages"])
    assert 2 not in server.rows[1]["answered_clients"] and 2 in server.rows[1]["failed_clients"]
    assert server.rows[1]["qualified_clients"] == [0, 1, 3]   # K = min(k, answered)
    # client 2 missed round 1: in round 2 it gets the signs of g_1 instead of using a stored w_1
    assert any(kind == "signs" and c == 2 for _, kind, c, _ in server.rows[2]["messages"])
    assert any(1 in row["qualified_clients"] for row in server.rows)


def test_a_round_in_which_no_client_answers_keeps_the_model():
    cfg = config(StrategyConfig(name="qsfl", ns=3, k=2), rounds=1)
    server = run_protocol(cfg, fail_train={0: {0, 1, 2, 3}})
    assert torch.equal(server.weights, server.fed.initial_weights)
    assert server.rows[0]["uplink_bytes"] == 0 and server.rows[0]["failed_clients"] == [0, 1, 2, 3]


@pytest.mark.parametrize("field, value", [("strategy.name", "qsgd"), ("strategy.downlink_p", 0.5)])
def test_what_the_federation_cannot_run_is_a_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field.split(".")[-1]):
        ServerRunner(config(StrategyConfig(name="qsfl")).with_overrides({field: value}))


def test_the_exported_app_holds_the_config_and_the_flower_components(tmp_path):
    cfg = config(StrategyConfig(name="qsfl", ns=3, k=2))
    out = write_app(cfg, tmp_path / "app", source="test")
    from qsfl.io import load_toml

    project = load_toml(out / "pyproject.toml")
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "qsfl_app.server_app:app", "clientapp": "qsfl_app.client_app:app"}
    assert flwr["config"]["result-dir"] == str((tmp_path / "app" / "results").resolve())
    assert project["project"]["dependencies"] == ["flwr[simulation]>=1.42"]
    assert load_config(out / "qsfl_app" / "qsfl.toml") == cfg.replace(engine="sequential", device="cpu")
    assert "qsfl.flower.server import server_app" in (out / "qsfl_app" / "server_app.py").read_text()
    assert "qsfl.flower.client import client_app" in (out / "qsfl_app" / "client_app.py").read_text()
    assert run_command(out, cfg) in (out / "README.md").read_text()
    with pytest.raises(ConfigError, match="--out"):
        write_app(cfg, out)
