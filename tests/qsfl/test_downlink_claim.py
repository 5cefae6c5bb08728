"""Issue 12's downlink claim, by exact arithmetic: with downlink_p = 0.4 and NS = 6 (digits, mlp, Dirichlet 0.5,
20 clients) every round's downlink is at least 5x below the dense downlink."""

from __future__ import annotations

from qsfl.config import QSFLConfig, SimConfig
from qsfl.sim import simulate

CASE = SimConfig(dataset="digits", model="mlp", partition="dirichlet", partition_options={"alpha": 0.5}, clients=20,
                 rounds=2, batch_size=20, seed=0)


def test_downlink_p_04_ns_6_is_at_least_5x_below_dense():
    # n = 9610 = 4 x 1602 + 2 x 1601; ceil(0.4 x 1602) = ceil(0.4 x 1601) = 641 entries; a 201-byte bitmap beats
    # 641 int32 indices (2564 B) and dense (961 zeros, 3844 B): 12 + 641 x 4 + 201 = 2777 B per client.
    # Dense: 12 + 9610 x 4 = 38452 B per client.
    compressed = simulate(CASE.replace(strategy=QSFLConfig(ns=6, downlink_p=0.4)))
    dense = simulate(CASE.replace(strategy=QSFLConfig(ns=6)))
    assert compressed.df["downlink_bytes"].tolist() == [20 * 2777] * 2
    assert dense.df["downlink_bytes"].tolist() == [20 * 38452] * 2
    assert (dense.df["downlink_bytes"] / compressed.df["downlink_bytes"] >= 5).all()   # 13.8x
