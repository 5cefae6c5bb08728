"""Partition invariants: every sample in exactly one client, seeded, skew behaves, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qsfl.data.partition import PARTITIONS, partition, partition_options
from qsfl.errors import ConfigError

LABELS = np.repeat(np.arange(10), 60)          # 600 samples, 60 per class, label-sorted
NATURAL = np.arange(600) % 25                  # 25 natural users


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))
    assert all(len(p) > 0 and p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("name", sorted(PARTITIONS))
def test_exact_cover_and_determinism(name):
    a = partition(name, LABELS, 10, seed=1, natural_ids=NATURAL)
    b = partition(name, LABELS, 10, seed=1, natural_ids=NATURAL)
    c = partition(name, LABELS, 10, seed=2, natural_ids=NATURAL)
    assert len(a) == 10
    assert_exact_cover(a, len(LABELS))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 400), classes=st.integers(1, 8), clients=st.integers(1, 10),
       seed=st.integers(0, 2**32), scheme=st.sampled_from(["iid", "dirichlet", "shards", "natural"]))
def test_cover_property(n, classes, clients, seed, scheme):
    # dirichlet may legitimately fail to fill every client when clients hold a handful of samples each
    assume(scheme != "dirichlet" or n >= 30 * clients)
    labels = np.random.default_rng(seed).integers(0, classes, n)
    options = {"alpha": 5.0} if scheme == "dirichlet" else {}
    parts = partition(scheme, labels, clients, seed, natural_ids=np.arange(n) % 13, **options)
    assert len(parts) == clients
    assert_exact_cover(parts, n)


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in partition("iid", LABELS, 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean share of a client's most frequent label (1.0 = every client holds one label)."""
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skew = {alpha: np.mean([label_skew(partition("dirichlet", LABELS, 10, seed=s, alpha=alpha), LABELS)
                            for s in range(5)])
            for alpha in (100.0, 1.0, 0.1)}
    assert skew[100.0] < skew[1.0] < skew[0.1]
    assert skew[100.0] < 0.25 and skew[0.1] > 0.5


def test_dirichlet_min_size_and_errors():
    parts = partition("dirichlet", LABELS, 10, seed=0, alpha=0.3, min_size=20)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(ConfigError, match=r"min_size: dirichlet\(alpha=0.001\) gave some client fewer than 50"):
        partition("dirichlet", LABELS, 10, seed=0, alpha=0.001, min_size=50)
    with pytest.raises(ConfigError, match=r"partition_options.alpha: 0 is out of range; allowed \(0.0, inf\]"):
        partition("dirichlet", LABELS, 10, seed=0, alpha=0)
    with pytest.raises(ConfigError, match=r"partition_options.alpha: -1.0 is out of range"):
        partition("dirichlet", LABELS, 10, seed=0, alpha=-1.0)
    with pytest.raises(ConfigError, match=r"min_size: 61 is out of range; allowed \[1, 60\]"):
        partition("dirichlet", LABELS, 10, seed=0, min_size=61)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_limit_labels_per_client(k):
    # 600 label-sorted samples, 60 per class: with 10 clients each shard holds 60/k samples of one label.
    shuffled = np.random.default_rng(0).permutation(LABELS)
    parts = partition("shards", shuffled, 10, seed=3, shards_per_client=k)
    assert_exact_cover(parts, 600)
    assert all(len(np.unique(shuffled[p])) <= k for p in parts)
    assert all(len(p) == 60 for p in parts)
    assert max(len(np.unique(shuffled[p])) for p in parts) > 1 or k == 1


def test_shards_errors():
    with pytest.raises(ConfigError, match=r"shards_per_client: 61 is out of range; allowed \[1, 60\]"):
        partition("shards", LABELS, 10, seed=0, shards_per_client=61)


def test_natural_keeps_users_whole():
    parts = partition("natural", LABELS, 10, seed=0, natural_ids=NATURAL)
    owner_of = {}
    for cid, p in enumerate(parts):
        for user in np.unique(NATURAL[p]):
            assert owner_of.setdefault(int(user), cid) == cid           # a user never spans two clients
    assert len(owner_of) == 25
    users_per_client = sorted(len(np.unique(NATURAL[p])) for p in parts)
    assert users_per_client == [2] * 5 + [3] * 5                         # round-robin: 25 users over 10


def test_natural_one_user_per_client():
    parts = partition("natural", LABELS, 25, seed=4, natural_ids=NATURAL)
    assert sorted(int(np.unique(NATURAL[p])[0]) for p in parts) == list(range(25))
    assert all(len(np.unique(NATURAL[p])) == 1 for p in parts)


def test_natural_errors():
    with pytest.raises(ConfigError, match=r"clients: 26 is out of range for partition 'natural'; allowed \[1, 25\]"):
        partition("natural", LABELS, 26, seed=0, natural_ids=NATURAL)
    with pytest.raises(ConfigError, match=r"natural client ids; those are: femnist, synthetic"):
        partition("natural", LABELS, 5, seed=0)
    with pytest.raises(ConfigError, match=r"one per training sample"):
        partition("natural", LABELS, 5, seed=0, natural_ids=NATURAL[:10])


def test_natural_on_synthetic_dataset():
    from qsfl.data.datasets import load_dataset

    ds = load_dataset("synthetic", seed=0, num_users=12, dim=5)
    parts = partition("natural", ds.y_train.numpy(), 4, seed=0, natural_ids=ds.client_ids)
    assert_exact_cover(parts, len(ds.y_train))
    assert all(len(np.unique(ds.client_ids[p])) == 3 for p in parts)


def test_option_validation():
    with pytest.raises(ConfigError, match=r"partition_options.alhpa: unknown option of partition 'dirichlet'; valid options: alpha, min_size"):
        partition("dirichlet", LABELS, 10, seed=0, alhpa=0.5)
    with pytest.raises(ConfigError, match=r"partition_options.alpha: unknown option of partition 'iid'; valid options: none"):
        partition("iid", LABELS, 10, seed=0, alpha=0.5)
    with pytest.raises(ConfigError, match=r"partition: unknown value 'zipf'; valid: dirichlet, iid, natural, shards"):
        partition("zipf", LABELS, 10, seed=0)
    assert partition_options("shards") == ["shards_per_client"]
    assert partition_options("natural") == []


def test_empty_client_and_client_count_errors():
    with pytest.raises(ConfigError, match=r"clients: 601 is out of range; allowed \[1, 600\]"):
        partition("iid", LABELS, 601, seed=0)
    with pytest.raises(ConfigError, match=r"clients: 0 is out of range"):
        partition("iid", LABELS, 0, seed=0)
    # Dirichlet with a tiny alpha and min_size=1 can fail to fill every client: the error says so, no
    # client is ever silently left empty.
    labels = np.zeros(12, dtype=np.int64)
    with pytest.raises(ConfigError, match=r"gave some client fewer than 1 sample"):
        partition("dirichlet", labels, 12, seed=0, alpha=0.01)


def test_wrapper_rejects_an_empty_client(monkeypatch):
    def lopsided(labels, num_clients, rng):
        return [np.arange(len(labels))] + [np.array([], dtype=np.int64)] * (num_clients - 1)

    monkeypatch.setitem(PARTITIONS, "lopsided", lopsided)
    with pytest.raises(ConfigError, match=r"partition: client 1 received no samples with 'lopsided'"):
        partition("lopsided", LABELS, 3, seed=0)
