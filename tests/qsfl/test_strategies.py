import numpy as np
import pytest
import torch

from qsfl.comm import Ledger
from qsfl.config import SimConfig, StrategyConfig
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.strategies import QSFL, FedAvg, TopK


def cohort(weights, losses=None, samples=None):
    w = torch.as_tensor(weights, dtype=torch.float32)
    c = w.shape[0]
    return CohortResult(w, np.ones(c) if losses is None else np.asarray(losses, dtype=float),
                        np.ones(c, dtype=np.int64) if samples is None else np.asarray(samples))


def cfg(**strategy):
    return SimConfig(strategy=StrategyConfig(**strategy))


def test_fedavg_is_sample_weighted_mean_of_two_clients():
    g = torch.zeros(3)
    res = cohort([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]], samples=[1, 3])
    led = Ledger()
    new, info = FedAvg(cfg(name="fedavg"), 3).aggregate(0, g, None, np.array([0, 1]), res, led)
    torch.testing.assert_close(new, torch.tensor([4.0, 5.0, 6.0]))
    assert info.qualified == [0, 1]
    assert led.close_round()["uplink_bytes"] == 2 * (12 + 3 * 4)


def test_scss_aggregation_two_clients_one_segment_one_another_one_unsent():
    # n = 10, NS = 3 -> segments [0,4) [4,7) [7,10); round 0: client c sends segment c mod 3.
    n = 10
    g = torch.ones(n)
    ids = np.array([0, 3, 1])                 # segments 0, 0, 1; segment 2 unsent
    upd = torch.stack([torch.full((n,), 1.0), torch.full((n,), 2.0), torch.full((n,), 5.0)])
    res = cohort(g + upd, samples=[1, 3, 2])
    strat = QSFL(cfg(name="qsfl", use_qj=False, ns=3, p=1.0), n)
    led = Ledger()
    new, info = strat.aggregate(0, g, None, ids, res, led)
    expected = torch.tensor([1 + 1.75] * 4 + [1 + 5.0] * 3 + [1.0] * 3)   # (1*1 + 3*2) / 4 = 1.75
    torch.testing.assert_close(new, expected)
    assert info.segment_coverage == [2, 1, 0]
    assert info.segment_ids == {0: 0, 3: 0, 1: 1}


def test_scss_sparse_entries_count_as_zero_in_the_segment_mean():
    n = 4
    g = torch.zeros(n)
    ids = np.array([0, 2])                    # NS = 2: both send segment 0 = [0, 2)
    res = cohort([[4.0, 1.0, 9.0, 9.0], [1.0, 2.0, 9.0, 9.0]])
    new, _ = QSFL(cfg(name="qsfl", use_qj=False, ns=2, p=0.5), n).aggregate(0, g, None, ids, res, Ledger())
    # client 0 sends index 0 (4.0); client 2 sends index 1 (2.0): means (4+0)/2, (0+2)/2
    torch.testing.assert_close(new, torch.tensor([2.0, 1.0, 0.0, 0.0]))


def test_official_aggregation_averages_sparse_weights_and_shrinks():
    n = 4
    g = torch.full((n,), 10.0)
    res = cohort([[14.0, 11.0, 0.0, 0.0], [11.0, 12.0, 0.0, 0.0]])
    new, _ = QSFL(cfg(name="qsfl", use_qj=False, ns=2, p=0.5, aggregate="official"), n).aggregate(
        0, g, None, np.array([0, 2]), res, Ledger())
    # top-p by |update|: client 0 index 0 (w=14), client 2 index 1 (w=12); zeros elsewhere
    torch.testing.assert_close(new, torch.tensor([7.0, 6.0, 10.0, 10.0]))


def test_exact_bytes_of_a_qsfl_round():
    # n = 10, C = 4, K = 2, NS = 3, p = 0.5, int32 indices. beta = 1: contribution alone decides.
    n, ids = 10, np.array([0, 1, 2, 3])
    g = torch.zeros(n)
    res = cohort(torch.randn(4, n, generator=torch.Generator().manual_seed(0)),
                 losses=[1.0, 9.0, 8.0, 2.0], samples=[10, 10, 10, 10])
    strat = QSFL(cfg(name="qsfl", beta=1.0, k=2, ns=3, p=0.5, index_encoding="int32"), n)
    led = Ledger()
    _, info = strat.aggregate(0, g, None, ids, res, led)
    assert info.qualified == [1, 2]
    # metadata 4 x (12 + 12); clients 1, 2 send segments 1, 2 (3 entries each) -> ceil(1.5) = 2 entries:
    # 12 header + 2 x 4 values + 2 x 4 indices = 28 each
    row = led.close_round()
    assert row["uplink_meta_bytes"] == 48 and row["uplink_bytes"] == 4 * 24 + 2 * 28
    strat_auto = QSFL(cfg(name="qsfl", beta=1.0, k=2, ns=3, p=0.5, index_encoding="auto"), n)
    led = Ledger()
    strat_auto.aggregate(0, g, None, ids, res, led)
    assert led.close_round()["uplink_bytes"] == 4 * 24 + 2 * (12 + 8 + 1)   # bitmap of 3 entries = 1 B


def test_error_feedback_residual_carries_exactly_what_was_not_sent():
    n = 4
    g = torch.zeros(n)
    upd = torch.tensor([[3.0, -1.0, 0.5, 2.0]])
    strat = TopK(cfg(name="topk", p=0.5, error_feedback=True), n)
    new, _ = strat.aggregate(0, g, None, np.array([5]), cohort(upd), Ledger())
    torch.testing.assert_close(new, torch.tensor([3.0, 0.0, 0.0, 2.0]))
    torch.testing.assert_close(strat.residuals.get(5), torch.tensor([0.0, -1.0, 0.5, 0.0]))
    # next round: residual is added before the top-p choice
    new2, _ = strat.aggregate(1, g, None, np.array([5]), cohort(torch.tensor([[0.0, -1.0, 0.2, 0.0]])), Ledger())
    torch.testing.assert_close(new2, torch.tensor([0.0, -2.0, 0.7, 0.0]))
    torch.testing.assert_close(strat.residuals.get(5), torch.zeros(4))


def test_error_feedback_in_scss_keeps_other_segments_and_unqualified_updates():
    n = 4
    g = torch.zeros(n)
    strat = QSFL(cfg(name="qsfl", use_qj=True, beta=1.0, k=1, ns=2, p=1.0, error_feedback=True), n)
    res = cohort([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], losses=[1.0, 0.1], samples=[1, 1])
    strat.aggregate(0, g, None, np.array([0, 1]), res, Ledger())
    # client 0 qualified, sends segment 0 -> keeps segment 1; client 1 unqualified keeps everything
    torch.testing.assert_close(strat.residuals.get(0), torch.tensor([0.0, 0.0, 3.0, 4.0]))
    torch.testing.assert_close(strat.residuals.get(1), torch.tensor([5.0, 6.0, 7.0, 8.0]))


def test_without_error_feedback_nothing_is_kept():
    strat = TopK(cfg(name="topk", p=0.5), 4)
    strat.aggregate(0, torch.zeros(4), None, np.array([0]), cohort([[1.0, 2.0, 3.0, 4.0]]), Ledger())
    assert strat.residuals.get(0) is None


def test_ns_larger_than_parameter_count_is_an_error():
    with pytest.raises(ConfigError, match=r"strategy.ns: 11 is out of range; allowed \[1, 10\]"):
        QSFL(cfg(name="qsfl", ns=11), 10)
