"""The batched engine's on-disk cache of per-architecture facts (method verdict, dry-run bytes)."""

from __future__ import annotations

import json

import pytest
import torch

from qsfl.engine import batched
from qsfl.engine import cache as disk_cache
from qsfl.engine.batched import BatchedEngine
from qsfl.engine.common import flat_weights
from qsfl.models import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache directory and an empty in-process verdict cache (as in a new process)."""
    monkeypatch.setenv("QSFL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(batched, "_METHOD_CACHE", {})
    return tmp_path / "engine"


def data(shape=(64,), classes=10, sizes=(9, 6)):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen)) for n in sizes]


def engine(model, shape=(64,)):
    return BatchedEngine(model, data(shape), epochs=1, batch_size=4, lr=0.1)


@pytest.fixture
def spy(monkeypatch):
    """Record every method check and dry run (they still run)."""
    calls: list[str] = []
    check, dry = BatchedEngine._check, batched._dry_run_bytes

    def counted_check(self, step, order):
        calls.append("check")
        return check(self, step, order)

    def counted_dry(*args):
        calls.append("dry_run")
        return dry(*args)

    monkeypatch.setattr(BatchedEngine, "_check", counted_check)
    monkeypatch.setattr(batched, "_dry_run_bytes", counted_dry)
    return calls


def test_cache_is_used_by_a_new_process(cache, spy, monkeypatch):
    first = engine(build_model("mlp", (64,), 10, seed=0))
    per_client = first.per_client_bytes(3)
    assert first.method == "linear" and spy == ["check", "dry_run"]
    assert len(list(cache.glob("method-*.json"))) == 1 and len(list(cache.glob("dry_run-*.json"))) == 1
    monkeypatch.setattr(batched, "_METHOD_CACHE", {})     # a new process: only the disk remembers
    spy.clear()
    again = engine(build_model("mlp", (64,), 10, seed=5))
    assert again.method == "linear" and again.per_client_bytes(3) == per_client
    assert spy == []
    w0 = flat_weights(first.model)
    torch.testing.assert_close(again.train(w0, [0, 1], 0).weights, first.train(w0, [0, 1], 0).weights)


def test_cache_for_another_architecture_is_not_used(cache, spy, monkeypatch):
    engine(build_model("mlp", (64,), 10)).per_client_bytes(3)
    monkeypatch.setattr(batched, "_METHOD_CACHE", {})
    spy.clear()
    other = engine(build_model("mlp", (64,), 10, hidden=(32,)))
    other.per_client_bytes(3)
    assert other.method == "linear" and spy == ["check", "dry_run"]
    cnn = engine(build_model("cnn1d", (40,), 10), shape=(40,))
    assert cnn.method == "fold" and spy[2:] == ["check"]
    assert len(list(cache.glob("method-*.json"))) == 3
    # the same architecture under another torch version (or engine code) is another key
    monkeypatch.setattr(batched, "_METHOD_CACHE", {})
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    spy.clear()
    assert engine(build_model("mlp", (64,), 10)).method == "linear" and spy == ["check"]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"key": "another", "value": ["linear", [0, 1]]}),
                                     "[1, 2]", None])
def test_corrupt_cache_is_ignored_and_rewritten(cache, spy, monkeypatch, content):
    engine(build_model("mlp", (64,), 10))
    (path,) = cache.glob("method-*.json")
    if content is None:    # the right key, but a verdict that does not fit the model
        entry = json.loads(path.read_text())
        content = json.dumps({"key": entry["key"], "value": ["linear", [0, 0, 1, 2]]})
    path.write_text(content)
    monkeypatch.setattr(batched, "_METHOD_CACHE", {})
    spy.clear()
    assert engine(build_model("mlp", (64,), 10)).method == "linear"
    assert spy == ["check"]
    assert json.loads(path.read_text())["value"][0] == "linear"


def test_cache_can_be_disabled(tmp_path, monkeypatch, spy):
    monkeypatch.setenv("QSFL_CACHE_DIR", "off")
    monkeypatch.setattr(batched, "_METHOD_CACHE", {})
    assert disk_cache.cache_dir() is None
    engine(build_model("mlp", (64,), 10)).per_client_bytes(3)
    assert spy == ["check", "dry_run"]
    assert disk_cache.load("method", {"a": 1}) is None
    monkeypatch.delenv("QSFL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert disk_cache.cache_dir() == tmp_path / "qsfl-tune" / "engine"


def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("QSFL_CACHE_DIR", str(blocker))    # a file where the directory should be
    monkeypatch.setattr(batched, "_METHOD_CACHE", {})
    assert engine(build_model("mlp", (64,), 10)).method == "linear"
