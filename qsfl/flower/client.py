"""The client side of a qsfl federation in Flower: ClientApp handlers around :class:`qsfl.flower.protocol.ClientRunner`.

A SuperNode is client ``partition-id`` of the config (its node config: ``partition-id`` and ``num-partitions``,
as in Flower's examples); it loads the config's dataset and trains on its own partition. What it keeps between
messages (the last global model, its residual, the training result between QSFL's two messages) lives in
``Context.state``, so a ClientApp process may be started anew for every message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from qsfl.config import SimConfig, load_config
from qsfl.engine.threads import configure_threads
from qsfl.errors import ConfigError
from qsfl.flower.protocol import ClientRunner, ClientState, TrainRequest, UploadRequest
from qsfl.flower.records import config_record, data, integer, number, vector

_RUNNERS: dict[tuple[str, int], ClientRunner] = {}   # per process: data, model and engine are built once
_VECTORS = ("prev_global", "residual", "local")


def client_id(context: Context) -> int:
    """This node's client id: its node config's ``partition-id`` (ConfigError naming the missing key)."""
    if "partition-id" not in context.node_config:
        raise ConfigError("node config: 'partition-id' is missing; start the SuperNode with "
                          "--node-config \"partition-id=<id> num-partitions=<clients>\"")
    return int(context.node_config["partition-id"])


def runner(config_path: str | Path, context: Context) -> ClientRunner:
    """The (cached) :class:`ClientRunner` of this node for the app's config file."""
    key = (str(config_path), client_id(context))
    if key not in _RUNNERS:
        configure_threads(int(context.run_config.get("threads", 1)))
        config: SimConfig = load_config(config_path)
        parts = context.node_config.get("num-partitions")
        if parts is not None and int(parts) != config.clients:
            raise ConfigError(f"node config: num-partitions {parts} differs from the config's clients "
                              f"{config.clients}")
        _RUNNERS[key] = ClientRunner(config, key[1])
    return _RUNNERS[key]


def load_state(context: Context) -> ClientState:
    """This client's :class:`ClientState` from ``context.state``."""
    state = ClientState()
    rec = context.state.get("qsfl_state")
    if isinstance(rec, ConfigRecord):
        state.prev_round = integer(rec["prev_round"], "prev_round")
        if bool(rec["has_meta"]):
            relevance = number(rec["meta_relevance"], "meta_relevance") if bool(rec["has_relevance"]) else None
            state.meta = (number(rec["meta_loss"], "meta_loss"), integer(rec["meta_samples"], "meta_samples"),
                          relevance)
    for name in _VECTORS:
        arrays = context.state.get(f"qsfl_{name}")
        if isinstance(arrays, ArrayRecord):
            setattr(state, name, arrays.to_numpy_ndarrays()[0])
    return state


def save_state(context: Context, state: ClientState) -> None:
    """Store ``state`` in ``context.state`` (what the next message of this run on this node sees)."""
    loss, samples, relevance = state.meta if state.meta is not None else (0.0, 0, None)
    context.state["qsfl_state"] = ConfigRecord({
        "prev_round": int(state.prev_round), "has_meta": state.meta is not None, "meta_loss": float(loss),
        "meta_samples": int(samples), "has_relevance": relevance is not None,
        "meta_relevance": float(relevance or 0.0)})
    for name in _VECTORS:
        value = getattr(state, name)
        if value is not None:
            context.state[f"qsfl_{name}"] = ArrayRecord([np.asarray(value, dtype=np.float32)])


def _reply(msg: Message, records: dict[str, Any]) -> Message:
    return Message(RecordDict(records), reply_to=msg)


def handle_register(msg: Message, context: Context, config_path: str | Path) -> Message:
    """``query.register``: this node's client id."""
    run = runner(config_path, context)
    return _reply(msg, {"client": ConfigRecord({"client-id": run.client_id})})


def handle_train(msg: Message, context: Context, config_path: str | Path) -> Message:
    """``train``: local training from the global model; the update (FedAvg, top-k) or QJ metadata (QSFL)."""
    run = runner(config_path, context)
    cfg = config_record(msg, "config")
    signs = cfg.get("signs")
    req = TrainRequest(integer(cfg["round"], "round"), vector(msg, "arrays"), str(cfg.get("last-update", "none")),
                       data(signs, "signs") if signs is not None else None)
    state = load_state(context)
    reply = run.train(req, state)
    save_state(context, state)
    metrics: dict[str, Any] = {"loss": reply.loss, "num-examples": reply.num_samples}
    if reply.relevance is not None:
        metrics["relevance"] = reply.relevance
    records: dict[str, Any] = {"metrics": MetricRecord(metrics)}
    if reply.update is not None:
        records["upload"] = ConfigRecord({"update": reply.update})
    return _reply(msg, records)


def handle_upload(msg: Message, context: Context, config_path: str | Path) -> Message:
    """``train.upload``: QSFL's sparse segment (and the authors' pretraining upload in their round 0)."""
    run = runner(config_path, context)
    cfg = config_record(msg, "config")
    req = UploadRequest(integer(cfg["round"], "round"), bool(cfg.get("segment", True)),
                        bool(cfg.get("pretrain", False)))
    state = load_state(context)
    reply = run.upload(req, state)
    save_state(context, state)
    upload: dict[str, Any] = {}
    if reply.segment is not None:
        upload["segment"] = reply.segment
    if reply.pretrain is not None:
        upload["pretrain"] = reply.pretrain
    records: dict[str, Any] = {"upload": ConfigRecord(upload)}
    if reply.meta is not None:
        loss, samples, relevance = reply.meta
        meta: dict[str, Any] = {"loss": loss, "num-examples": samples}
        if relevance is not None:
            meta["relevance"] = relevance
        records["metrics"] = MetricRecord(meta)
    return _reply(msg, records)


def handle_evaluate(msg: Message, context: Context, config_path: str | Path) -> Message:
    """``evaluate``: accuracy and loss of the received model on this client's own partition."""
    run = runner(config_path, context)
    acc, loss, n = run.evaluate(vector(msg, "arrays"))
    return _reply(msg, {"metrics": MetricRecord({"accuracy": acc, "loss": loss, "num-examples": n})})


def client_app(config_path: str | Path) -> ClientApp:
    """A ClientApp running the config in ``config_path`` (a SimConfig TOML file)."""
    app = ClientApp()

    @app.query("register")
    def register(msg: Message, context: Context) -> Message:
        return handle_register(msg, context, config_path)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, config_path)

    @app.train("upload")
    def upload(msg: Message, context: Context) -> Message:
        return handle_upload(msg, context, config_path)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, config_path)

    return app
