"""Dataset loaders: built-in data, generated data and local-file loaders on tiny fixture files."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from fixtures_data import idx_bytes, write_cifar, write_leaf, write_mnist

from qsfl.data.datasets import DATASETS, NATURAL_ID_DATASETS, load_dataset
from qsfl.errors import ConfigError


def check_types(ds, num_classes: int) -> None:
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert ds.num_classes == num_classes
    assert int(ds.y_train.min()) >= 0 and int(ds.y_train.max()) < num_classes
    if ds.client_ids is not None:
        assert ds.client_ids.dtype == np.int64 and ds.client_ids.shape == (len(ds.y_train),)


# ------------------------------------------------------------------------------------------ registry

def test_registry_names():
    assert set(DATASETS) == {"digits", "mnist1d", "synthetic", "femnist", "mnist", "cifar10"}
    assert set(NATURAL_ID_DATASETS) <= set(DATASETS)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError, match=r"dataset: unknown value 'nope'; valid: cifar10, digits"):
        load_dataset("nope")


def test_unknown_option_names_it_and_valid_ones():
    with pytest.raises(ConfigError, match=r"dataset_options.bogus: unknown option of dataset 'synthetic'; valid options: .*alpha"):
        load_dataset("synthetic", bogus=1)


def test_digits():
    ds = load_dataset("digits", seed=1)
    check_types(ds, 10)
    assert ds.input_shape == (64,) and len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.client_ids is None
    with pytest.raises(ConfigError, match=r"test_fraction: 1.5 is out of range; allowed \(0.0, 1.0\)"):
        load_dataset("digits", test_fraction=1.5)


# ------------------------------------------------------------------------------------------- mnist1d

@pytest.fixture
def no_download(monkeypatch):
    """Make every download path of the mnist1d package fail loudly."""
    import mnist1d.data

    def forbidden(*args, **kwargs):
        raise AssertionError("mnist1d download helper called")

    monkeypatch.setattr(mnist1d.data, "get_dataset", forbidden)
    monkeypatch.setattr(mnist1d.data.requests, "get", forbidden)


def test_mnist1d_shapes_and_determinism(no_download):
    from qsfl.data.datasets import _mnist1d_arrays

    _mnist1d_arrays.cache_clear()
    py_state, np_state = random.getstate(), np.random.get_state()
    a = load_dataset("mnist1d", seed=3, num_samples=200)
    assert random.getstate() == py_state                          # global RNGs untouched
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    check_types(a, 10)
    assert a.x_train.shape == (160, 40) and a.x_test.shape == (40, 40) and a.client_ids is None
    _mnist1d_arrays.cache_clear()                                 # regenerate, not a cache hit
    b = load_dataset("mnist1d", seed=3, num_samples=200)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = load_dataset("mnist1d", seed=4, num_samples=200)
    assert not torch.equal(a.x_train, c.x_train)
    b.x_train.zero_()                                             # a Dataset never aliases the cache
    assert torch.equal(load_dataset("mnist1d", seed=3, num_samples=200).x_train, a.x_train)


def test_mnist1d_bad_options(no_download):
    with pytest.raises(ConfigError, match=r"num_samples: 5 is out of range; allowed \[10, inf\]"):
        load_dataset("mnist1d", num_samples=5)


# ----------------------------------------------------------------------------------------- synthetic

def test_synthetic_determinism_and_natural_ids():
    a = load_dataset("synthetic", seed=5, num_users=6, dim=8, num_classes=4)
    b = load_dataset("synthetic", seed=5, num_users=6, dim=8, num_classes=4)
    c = load_dataset("synthetic", seed=6, num_users=6, dim=8, num_classes=4)
    check_types(a, 4)
    assert a.input_shape == (8,)
    assert torch.equal(a.x_train, b.x_train) and np.array_equal(a.client_ids, b.client_ids)
    assert not torch.equal(a.x_train[:10], c.x_train[:10])
    assert set(a.client_ids.tolist()) == set(range(6))
    counts = np.bincount(a.client_ids)
    assert counts.min() >= 1 and len(a.y_test) > 0
    # per-user test split: train + test of every user = its 50..1000 samples, test ~ 20%
    assert len(a.y_train) + len(a.y_test) >= 6 * 50
    assert abs(len(a.y_test) / (len(a.y_train) + len(a.y_test)) - 0.2) < 0.02


def test_synthetic_cap_and_covariance():
    ds = load_dataset("synthetic", seed=0, num_users=40, max_samples_per_user=120, beta=0.0, alpha=0.0)
    total = np.bincount(ds.client_ids) / 0.8
    assert total.max() <= 121
    # x ~ N(v_k, Sigma), Sigma_jj = j^-1.2: the within-user variance of the last feature is far below the first's
    x0 = ds.x_train[torch.as_tensor(ds.client_ids == 0)].numpy()
    var = x0.var(axis=0)
    assert var[0] > 5 * var[-1]


def test_synthetic_users_are_heterogeneous_unless_iid():
    def label_profiles(iid: bool) -> float:
        ds = load_dataset("synthetic", seed=1, num_users=10, iid=iid)
        y, ids = ds.y_train.numpy(), ds.client_ids
        hist = np.stack([np.bincount(y[ids == k], minlength=10) / np.sum(ids == k) for k in range(10)])
        return float(np.abs(hist - hist.mean(axis=0)).sum(axis=1).mean())   # mean L1 distance to the average

    assert label_profiles(False) > 2 * label_profiles(True)
    ds = load_dataset("synthetic", seed=1, num_users=10)
    means = np.stack([ds.x_train[torch.as_tensor(ds.client_ids == k)].numpy().mean(axis=0) for k in range(10)])
    assert means.std(axis=0).mean() > 0.5                         # feature means differ between users


def test_synthetic_bad_options():
    with pytest.raises(ConfigError, match=r"alpha: -1 is out of range; allowed \[0.0, inf\]"):
        load_dataset("synthetic", alpha=-1)
    with pytest.raises(ConfigError, match=r"iid: expected true or false"):
        load_dataset("synthetic", iid="yes")


# ------------------------------------------------------------------------------------------- femnist

def test_femnist_from_directory(tmp_path):
    written = write_leaf(tmp_path, {"f0001": (4, 2), "f0002": (3, 1), "f0003": (5, 2)})
    ds = load_dataset("femnist", path=str(tmp_path))
    check_types(ds, 62)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.client_ids.tolist() == [0] * 4 + [1] * 3 + [2] * 5
    x, y = written["train"]["f0002"]
    assert np.allclose(ds.x_train[4:7].reshape(3, -1).numpy(), x, atol=1e-6)
    assert ds.y_train[4:7].tolist() == y.tolist()


def test_femnist_leaf_layout_explicit_paths_and_max_users(tmp_path):
    write_leaf(tmp_path / "data", {"a": (2, 1), "b": (3, 1), "c": (1, 1)})
    ds = load_dataset("femnist", path=tmp_path)                   # LEAF's femnist/data/{train,test}
    assert len(ds.y_train) == 6
    ds = load_dataset("femnist", train_path=tmp_path / "data" / "train",
                      test_path=tmp_path / "data" / "test" / "all_data_0_test.json", max_users=2)
    assert ds.client_ids.tolist() == [0, 0, 1, 1, 1] and len(ds.y_test) == 2


def test_femnist_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"path: required for dataset 'femnist'.*train/\*\.json"):
        load_dataset("femnist")
    with pytest.raises(ConfigError, match=r"is not a directory"):
        load_dataset("femnist", path=tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"no json files in 'train/' and 'test/'"):
        load_dataset("femnist", path=tmp_path)
    with pytest.raises(ConfigError, match=r"give both"):
        load_dataset("femnist", train_path=tmp_path)
    write_leaf(tmp_path, {"a": (2, 1)})
    (tmp_path / "train" / "all_data_0_train.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"malformed LEAF json .*all_data_0_train.json.*'user_data'"):
        load_dataset("femnist", path=tmp_path)
    (tmp_path / "train" / "all_data_0_train.json").write_text(json.dumps({"users": ["a"]}))
    with pytest.raises(ConfigError, match=r"missing key 'user_data'"):
        load_dataset("femnist", path=tmp_path)
    bad = {"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": [[0.0] * 10], "y": [1]}}}
    (tmp_path / "train" / "all_data_0_train.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"784-value rows"):
        load_dataset("femnist", path=tmp_path)


# --------------------------------------------------------------------------------------------- mnist

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    xtr, ytr, _xte, yte = write_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", path=str(tmp_path))
    check_types(ds, 10)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert np.allclose(ds.x_train.numpy()[:, 0], xtr / 255.0) and ds.y_test.tolist() == yte.tolist()
    assert float(ds.x_train.max()) <= 1.0 and float(ds.x_train.min()) >= 0.0
    small = load_dataset("mnist", path=str(tmp_path), max_samples=4, max_test_samples=2)
    assert len(small.y_train) == 4 and small.y_train.tolist() == ytr[:4].tolist() and len(small.y_test) == 2


def test_mnist_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"path: required for dataset 'mnist'.*train-images-idx3-ubyte"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match=r"lacks train-images-idx3-ubyte, .*t10k-labels-idx1-ubyte.*optionally \.gz"):
        load_dataset("mnist", path=tmp_path)
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match=r"lacks t10k-labels-idx1-ubyte;"):
        load_dataset("mnist", path=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((5, 2))))   # 2-d labels
    with pytest.raises(ConfigError, match=r"malformed IDX file .*t10k-labels-idx1-ubyte.*bad magic"):
        load_dataset("mnist", path=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5))[:-2])   # truncated
    with pytest.raises(ConfigError, match=r"header says shape \(5,\)"):
        load_dataset("mnist", path=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4)))        # count mismatch
    with pytest.raises(ConfigError, match=r"t10k IDX files disagree"):
        load_dataset("mnist", path=tmp_path)
    with pytest.raises(ConfigError, match=r"max_samples: 0 is out of range"):
        load_dataset("mnist", path=tmp_path, max_samples=0)


# ------------------------------------------------------------------------------------------- cifar10

@pytest.mark.parametrize("bytes_keys, protocol", [(True, 2), (False, pickle.DEFAULT_PROTOCOL)])
def test_cifar10_batches(tmp_path, bytes_keys, protocol):
    xtr, ytr, _xte, yte = write_cifar(tmp_path, bytes_keys=bytes_keys, protocol=protocol)
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_dataset("cifar10", path=str(path))
        check_types(ds, 10)
        assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
        assert np.allclose(ds.x_train.reshape(20, -1).numpy(), xtr / 255.0)
        assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    assert len(load_dataset("cifar10", path=tmp_path, max_samples=7).y_train) == 7


class Boom:
    """Unpickling this would run code if the loader used plain pickle.load."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle ran code')",))


def test_cifar10_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"path: required for dataset 'cifar10'.*data_batch_1"):
        load_dataset("cifar10")
    with pytest.raises(ConfigError, match=r"lacks data_batch_1, .*test_batch; expected .*cifar-10-batches-py"):
        load_dataset("cifar10", path=tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"extract cifar-10-python.tar.gz first"):
        load_dataset("cifar10", path=tmp_path)
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"malformed CIFAR-10 batch .*data_batch_3"):
        load_dataset("cifar10", path=tmp_path)
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ConfigError, match=r"N x 3072"):
        load_dataset("cifar10", path=tmp_path)
    batch.write_bytes(pickle.dumps({b"labels": [0]}))
    with pytest.raises(ConfigError, match=r"missing key 'data'"):
        load_dataset("cifar10", path=tmp_path)
    batch.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ConfigError, match=r"forbidden global builtins.exec"):
        load_dataset("cifar10", path=tmp_path)
