"""QSFL, FedAvg and top-k as a Flower server strategy, on :class:`qsfl.flower.protocol.ServerRunner`.

Flower's ``Strategy.start`` runs one train exchange per round (``configure_train`` -> replies ->
``aggregate_train``). QSFL's round has two: every sampled client's QJ metadata, then the qualified clients'
segments. So ``aggregate_train`` runs QJ on the metadata and then the second exchange, on the Grid that
``configure_train`` was given, before it aggregates. A client that fails or does not answer within ``timeout``
is left out of the round (see docs/flower.md); the round goes on with the others.

Each round's ledger counters (the same :class:`qsfl.comm.Ledger` as the simulator's), the qualified and failed
clients go to Flower's metrics (``aggregate_train``'s MetricRecord); :meth:`QSFLStrategy.save` writes every round
with each message's bytes to ``history.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from qsfl.config import SimConfig
from qsfl.errors import ConfigError
from qsfl.flower.protocol import ServerRunner, TrainReply, UploadReply
from qsfl.flower.records import config_record, data, integer, metric_record, number
from qsfl.io import atomic_write_text, dump_toml

log = logging.getLogger(__name__)

# the numeric columns of a round that go to Flower's metrics
METRIC_COLUMNS = ("n_sampled", "n_qualified", "uplink_bytes", "uplink_header_bytes", "uplink_value_bytes",
                  "uplink_index_bytes", "uplink_meta_bytes", "uplink_messages", "downlink_bytes", "downlink_messages",
                  "cum_uplink_bytes", "cum_downlink_bytes", "train_loss", "test_accuracy", "test_loss")


class QSFLStrategy(Strategy):
    """The config's strategy (``qsfl`` with its variants, ``fedavg`` or ``topk``) as a Flower strategy.

    Parameters
    ----------
    config : SimConfig
        What to run: data, model, local training, clients, rounds, seed and ``[strategy]``.
    timeout : float
        Seconds to wait for the replies of each exchange; a client that has not answered by then is dropped.
    fraction_evaluate : float
        Share of the clients that evaluate the global model on their own data each round (0: none; the global
        model is always evaluated on the held-out test split by :meth:`evaluate_global`).
    """

    def __init__(self, config: SimConfig, *, timeout: float = 3600.0, fraction_evaluate: float = 0.0) -> None:
        if not 0.0 <= fraction_evaluate <= 1.0:
            raise ConfigError(f"fraction-evaluate: {fraction_evaluate!r} is out of range; allowed [0, 1]")
        self.runner = ServerRunner(config)
        self.config = self.runner.config
        self.timeout = float(timeout)
        self.fraction_evaluate = float(fraction_evaluate)
        self.node_of: dict[int, int] = {}      # client id -> node id
        self.client_of: dict[int, int] = {}    # node id -> client id
        self._grid: Grid | None = None
        self._eval_rng = np.random.default_rng([self.config.seed, 0xE7A1])

    # ----- setup ---------------------------------------------------------------------------------------
    def connect(self, grid: Grid, wait_s: float = 120.0) -> None:
        """Learn which node is which client: every node answers ``query.register`` with its ``partition-id``.
        Waits up to ``wait_s`` for the config's ``clients`` nodes to be connected."""
        deadline = time.monotonic() + wait_s
        nodes = sorted(grid.get_node_ids())
        while len(nodes) < self.config.clients and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = sorted(grid.get_node_ids())
        if len(nodes) != self.config.clients:
            raise ConfigError(f"clients: the config has {self.config.clients} clients but {len(nodes)} SuperNodes "
                              "are connected (simulation: options.num-supernodes)")
        msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type="query.register")
                for n in nodes]
        # a node's first message loads its data (and in a simulation starts its worker): wait as long as for the nodes
        for reply in grid.send_and_receive(msgs, timeout=max(self.timeout, wait_s)):
            if reply.has_error():
                raise ConfigError(f"node {reply.metadata.src_node_id} failed to register: {reply.error.reason}")
            cid = integer(config_record(reply, "client")["client-id"], "client-id")
            if cid in self.node_of:
                raise ConfigError(f"partition-id: nodes {self.node_of[cid]} and {reply.metadata.src_node_id} are "
                                  f"both client {cid}")
            self.node_of[cid], self.client_of[reply.metadata.src_node_id] = reply.metadata.src_node_id, cid
        missing = sorted(set(range(self.config.clients)) - set(self.node_of))
        if missing:
            last = self.config.clients - 1
            raise ConfigError(f"partition-id: no node answered as client {missing[0]} (ids 0..{last} must each be "
                              f"one node's partition-id; nodes answer within connect-wait {wait_s:g} s)")

    def initial_arrays(self) -> ArrayRecord:
        """The initial global model w_0 (the config's seeded model) as one flat float32 array."""
        return ArrayRecord([self.runner.weights.numpy().copy()])

    # ----- training ------------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample the cohort; each sampled client's train message (the model, and the signs of g_{t-1} for a
        QSFL client that does not hold w_{t-1})."""
        self._grid = grid
        out = []
        for cid, req in self.runner.train_requests().items():
            cfg: dict[str, Any] = {"round": req.round, "last-update": req.last_update}
            if req.signs is not None:
                cfg["signs"] = req.signs
            content = RecordDict({"arrays": ArrayRecord([req.weights]), "config": ConfigRecord(cfg)})
            out.append(Message(content, dst_node_id=self.node_of[cid], message_type="train"))
        log.info("round %d: %d clients sampled", server_round, len(out))
        return out

    def _split(self, replies: Iterable[Message], asked: Iterable[int]) -> tuple[dict[int, Message], dict[int, str]]:
        """Replies by client id, and client id -> why it did not answer (an error or no reply in time)."""
        got: dict[int, Message] = {}
        failed: dict[int, str] = {}
        for reply in replies:
            cid = self.client_of.get(reply.metadata.src_node_id)
            if cid is None:
                continue
            if reply.has_error():
                failed[cid] = f"error: ...{(reply.error.reason or '').strip()[-300:]}"   # a traceback ends with it
            else:
                got[cid] = reply
        for cid in asked:
            if cid not in got and cid not in failed:
                failed[cid] = f"no reply within {self.timeout:g} s"
        return got, failed

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg / top-k: the mean of the updates. QSFL: QJ on the metadata, the qualified clients' uploads
        (a second exchange), the per-segment means. Returns the new model and the round's metrics."""
        rec = self.runner.record
        assert rec is not None
        got, failed = self._split(replies, rec.sampled)
        train: dict[int, TrainReply] = {}
        for cid, msg in got.items():
            try:
                train[cid] = _train_reply(cid, msg)
            except (KeyError, TypeError, ValueError) as exc:
                failed[cid] = f"malformed reply: {exc}"
        uploads = self.runner.receive_train(train, failed)
        if uploads:
            if self._grid is None:
                raise RuntimeError("aggregate_train before configure_train: no Grid for the upload exchange")
            msgs = [Message(RecordDict({"config": ConfigRecord({"round": r.round, "segment": r.segment,
                                                                "pretrain": r.pretrain})}),
                            dst_node_id=self.node_of[cid], message_type="train.upload") for cid, r in uploads.items()]
            got_up, failed_up = self._split(self._grid.send_and_receive(msgs, timeout=self.timeout), uploads)
            parsed: dict[int, UploadReply] = {}
            for cid, msg in got_up.items():
                try:
                    parsed[cid] = _upload_reply(cid, msg)
                except (KeyError, TypeError, ValueError) as exc:
                    failed_up[cid] = f"malformed reply: {exc}"
            self.runner.receive_uploads(parsed, failed_up)
        row = self.runner.finish_round()
        if row["failed_clients"]:
            log.warning("round %d: clients %s left out (%s)", server_round, row["failed_clients"],
                        "; ".join(f"{c}: {why}" for c, why in row["failures"].items()))
        return ArrayRecord([self.runner.weights.numpy().copy()]), round_metrics(row)

    # ----- evaluation ----------------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """``fraction_evaluate`` of the clients (seeded choice) evaluate the global model on their own data."""
        count = math.ceil(self.fraction_evaluate * self.config.clients)
        if count == 0:
            return []
        chosen = np.sort(self._eval_rng.choice(self.config.clients, size=count, replace=False))
        return [Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"round": server_round - 1})}),
                        dst_node_id=self.node_of[int(c)], message_type="evaluate") for c in chosen]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Sample-weighted mean accuracy and loss of the clients that answered."""
        results = [metric_record(r, "metrics") for r in replies if not r.has_error()]
        if not results:
            return None
        n = np.array([number(m["num-examples"], "num-examples") for m in results])
        acc = float(np.average([number(m["accuracy"], "accuracy") for m in results], weights=n))
        loss = float(np.average([number(m["loss"], "loss") for m in results], weights=n))
        if self.runner.rows:   # history.json keeps them with the round
            self.runner.rows[-1].update(client_accuracy=acc, client_loss=loss, client_evaluations=len(results))
        return MetricRecord({"client_accuracy": acc, "client_loss": loss, "num-examples": int(n.sum())})

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """``evaluate_fn`` for ``start``: the round's accuracy on the held-out test split, in the rounds the
        simulator evaluates (every ``eval_every`` rounds and the last)."""
        if server_round == 0 or not self.runner.rows:
            return None
        row = self.runner.rows[-1]
        if row["test_accuracy"] != row["test_accuracy"]:   # NaN: not an evaluation round
            return None
        return MetricRecord({"accuracy": float(row["test_accuracy"]), "loss": float(row["test_loss"])})

    def summary(self) -> None:
        """Log what runs."""
        cfg = self.config
        log.info("qsfl strategy %s: %d clients (%d per round), %d rounds, %s/%s, seed %d", cfg.strategy.name,
                 cfg.clients, cfg.cohort_size, cfg.rounds, cfg.dataset, cfg.model, cfg.seed)

    # ----- results -------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write ``history.json`` (every round, each message's bytes), ``weights.npy`` (the final model) and
        ``config.toml`` to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "history.json", json.dumps({"config": self.config.to_dict(),
                                                            "rounds": self.runner.rows}, indent=1, default=str))
        np.save(out / "weights.npy", self.runner.weights.numpy())
        atomic_write_text(out / "config.toml", dump_toml(self.config.to_dict()))
        return out


def round_metrics(row: dict[str, Any]) -> MetricRecord:
    """A round's row as Flower metrics: the ledger's counters, losses, accuracy and the clients' ids."""
    metrics: dict[str, Any] = {"round": int(row["round"])}
    for col in METRIC_COLUMNS:
        value = row[col]
        if isinstance(value, float) and value != value:
            continue
        metrics[col] = value
    for col in ("qualified_clients", "failed_clients"):
        metrics[col] = [int(c) for c in row[col]]
    return MetricRecord(metrics)


def _meta(msg: Message) -> tuple[float, int, float | None]:
    metrics = metric_record(msg, "metrics")
    relevance = number(metrics["relevance"], "relevance") if "relevance" in metrics else None
    return number(metrics["loss"], "loss"), integer(metrics["num-examples"], "num-examples"), relevance


def _train_reply(cid: int, msg: Message) -> TrainReply:
    loss, samples, relevance = _meta(msg)
    update = data(config_record(msg, "upload")["update"], "update") if "upload" in msg.content else None
    return TrainReply(cid, loss, samples, relevance, update)


def _upload_reply(cid: int, msg: Message) -> UploadReply:
    upload = config_record(msg, "upload")
    return UploadReply(cid, data(upload["segment"], "segment") if "segment" in upload else None,
                       data(upload["pretrain"], "pretrain") if "pretrain" in upload else None,
                       _meta(msg) if "metrics" in msg.content else None)
