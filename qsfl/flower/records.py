"""Typed reads of Flower records: a value of the wrong kind is a ValueError naming the key (a malformed message)."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord


def config_record(msg: Message, key: str) -> ConfigRecord:
    """``msg.content[key]`` as a ConfigRecord."""
    rec = msg.content.get(key)
    if not isinstance(rec, ConfigRecord):
        raise ValueError(f"{key}: expected a ConfigRecord, got {type(rec).__name__}")
    return rec


def metric_record(msg: Message, key: str) -> MetricRecord:
    """``msg.content[key]`` as a MetricRecord."""
    rec = msg.content.get(key)
    if not isinstance(rec, MetricRecord):
        raise ValueError(f"{key}: expected a MetricRecord, got {type(rec).__name__}")
    return rec


def vector(msg: Message, key: str) -> np.ndarray:
    """The one float32 array of the ArrayRecord ``msg.content[key]``."""
    rec = msg.content.get(key)
    if not isinstance(rec, ArrayRecord):
        raise ValueError(f"{key}: expected an ArrayRecord, got {type(rec).__name__}")
    arrays = rec.to_numpy_ndarrays()
    if len(arrays) != 1:
        raise ValueError(f"{key}: expected one array, got {len(arrays)}")
    return np.asarray(arrays[0], dtype=np.float32)


def number(value: object, key: str) -> float:
    """A numeric record value as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {type(value).__name__}")
    return float(value)


def integer(value: object, key: str) -> int:
    """An integer record value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer, got {type(value).__name__}")
    return int(value)


def data(value: object, key: str) -> bytes:
    """A bytes record value."""
    if not isinstance(value, bytes):
        raise ValueError(f"{key}: expected bytes, got {type(value).__name__}")
    return value
