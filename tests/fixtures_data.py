"""Writers of tiny dataset files (LEAF json, IDX, CIFAR pickle batches) for the loader tests."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np


def write_leaf(root: Path, writers: dict[str, tuple[int, int]], seed: int = 0) -> dict[str, dict]:
    """LEAF femnist layout ``root/train/*.json`` + ``root/test/*.json``; writers = {name: (n_train, n_test)}.

    Writer k's labels are 10k, 10k+1, ... (mod 62). Returns {"train": {writer: (x, y)}, "test": {...}} with the arrays written.
    """
    rng = np.random.default_rng(seed)
    written: dict[str, dict] = {"train": {}, "test": {}}
    for split, col in (("train", 0), ("test", 1)):
        (root / split).mkdir(parents=True, exist_ok=True)
        blob = {"users": [], "num_samples": [], "user_data": {}}
        for k, (user, counts) in enumerate(writers.items()):
            n = counts[col]
            x = rng.random((n, 784)).round(3)
            y = (np.arange(n) + 10 * k) % 62
            blob["users"].append(user)
            blob["num_samples"].append(n)
            blob["user_data"][user] = {"x": x.tolist(), "y": y.tolist()}
            written[split][user] = (x, y)
        (root / split / f"all_data_0_{split}.json").write_text(json.dumps(blob))
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = False, seed: int = 0):
    """The four MNIST IDX files in ``root``; returns (x_train, y_train, x_test, y_test) as uint8 arrays."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), (np.arange(n_test) + 3) % 10)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    for name, array in zip(names, arrays):
        data = idx_bytes(array)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return tuple(np.asarray(a, dtype=np.uint8) for a in arrays)


def write_cifar(root: Path, per_batch: int = 4, n_test: int = 3, seed: int = 0, bytes_keys: bool = True,
                protocol: int = 2):
    """CIFAR-10 python batches in ``root/cifar-10-batches-py`` (bytes keys, protocol 2 like the originals); returns (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [(i + j) % 10 for j in range(n)]
        with open(folder / name, "wb") as fh:
            pickle.dump({key("batch_label"): key(name), key("labels"): y, key("data"): x}, fh, protocol=protocol)
        xs.append(x)
        ys.append(np.asarray(y))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]
