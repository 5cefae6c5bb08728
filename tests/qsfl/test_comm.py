import math

import pytest

from qsfl.comm import (
    HEADER_BYTES,
    Ledger,
    dense_message,
    fedavg_uplink_bytes,
    index_encoding_bytes,
    meta_message,
    sparse_message,
)


def test_header_and_dense_sizes():
    assert HEADER_BYTES == 12
    assert dense_message(100).total == 12 + 400
    assert meta_message().total == 12 + 12


@pytest.mark.parametrize("count, size, encoding, expected", [
    (2, 3, "int32", ("int32", 8)),
    (2, 3, "bitmap", ("bitmap", 1)),
    (2, 3, "auto", ("bitmap", 1)),          # int32 8 B, bitmap 1 B, dense +4 B
    (3, 1000, "auto", ("int32", 12)),        # bitmap would be 125 B
    (100, 1000, "auto", ("bitmap", 125)),    # int32 would be 400 B
    (999, 1000, "auto", ("dense", 4)),       # one zero costs 4 B, the bitmap 125 B
    (5, 5, "int32", ("dense", 0)),           # everything sent: no index at all
])
def test_index_encoding(count, size, encoding, expected):
    assert index_encoding_bytes(count, size, encoding) == expected


def test_sparse_message_sizes():
    assert sparse_message(2, 3, "int32").total == 12 + 8 + 8
    assert sparse_message(2, 3, "bitmap").total == 12 + 8 + 1
    assert sparse_message(999, 1000, "auto").total == 12 + 4000   # dense
    assert sparse_message(100, 1000, "auto").total == 12 + 400 + math.ceil(1000 / 8)


def test_ledger_accumulates_per_round_and_cumulatively():
    led = Ledger()
    led.downlink(dense_message(10), count=3)
    led.uplink(meta_message(), count=3)
    led.uplink(sparse_message(2, 3, "int32"))
    r0 = led.close_round()
    assert r0["downlink_bytes"] == 3 * 52 and r0["downlink_messages"] == 3
    assert r0["uplink_bytes"] == 3 * 24 + 28
    assert r0["uplink_meta_bytes"] == 36 and r0["uplink_index_bytes"] == 8 and r0["uplink_value_bytes"] == 8
    assert r0["uplink_header_bytes"] == 4 * 12
    led.uplink(dense_message(10))
    r1 = led.close_round()
    assert r1["uplink_bytes"] == 52 and r1["cum_uplink_bytes"] == 3 * 24 + 28 + 52
    assert r1["cum_downlink_bytes"] == 156 and r1["downlink_bytes"] == 0


def test_fedavg_uplink_bytes():
    assert fedavg_uplink_bytes(10, [3, 2]) == 5 * 52
    assert fedavg_uplink_bytes(10, 4, rounds=3) == 12 * 52
