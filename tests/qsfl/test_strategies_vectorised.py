"""The vectorised strategies (no per-client loop, several configs per call) against a per-client reference."""

import numpy as np
import pytest
import torch

from qsfl.comm import Ledger, dense_message, meta_message, sparse_message
from qsfl.config import SimConfig, StrategyConfig
from qsfl.engine.common import CohortResult
from qsfl.segments import segment_bounds, segment_id, top_p_indices
from qsfl.strategies import QSFL, TopK
from qsfl.strategies.base import AggregateJob


class ReferenceSCSS:
    """The per-client SCSS loop (as the simulator ran it before vectorising): one client at a time."""

    def __init__(self, n, ns, p, encoding, official, error_feedback):
        self.n, self.ns, self.p, self.encoding = n, ns, p, encoding
        self.official, self.error_feedback = official, error_feedback
        self.bounds = segment_bounds(n, ns)
        self.residuals = {}

    def aggregate(self, t, g, ids, qualified, cohort, ledger):
        acc = torch.zeros_like(g)
        seg_weight = np.zeros(self.ns)
        coverage = np.zeros(self.ns, dtype=np.int64)
        for row, cid in enumerate(ids.tolist()):
            u = cohort.weights[row] - g
            if self.error_feedback and cid in self.residuals:
                u = u + self.residuals[cid]
            if cid not in qualified:
                if self.error_feedback:
                    self.residuals[cid] = u.clone()
                continue
            seg = segment_id(t, cid, self.ns)
            lo, hi = int(self.bounds[seg]), int(self.bounds[seg + 1])
            idx = top_p_indices(u[lo:hi], self.p) + lo
            if self.error_feedback:
                r = u.clone()
                r[idx] = 0
                self.residuals[cid] = r
            ledger.uplink(sparse_message(len(idx), hi - lo, self.encoding))
            n_i = float(cohort.num_samples[row])
            acc[idx] += n_i * (cohort.weights[row, idx] if self.official else u[idx])
            seg_weight[seg] += n_i
            coverage[seg] += 1
        new = g.clone()
        for s in np.flatnonzero(seg_weight > 0):
            lo, hi = int(self.bounds[s]), int(self.bounds[s + 1])
            mean = acc[lo:hi] / seg_weight[s]
            new[lo:hi] = mean if self.official else g[lo:hi] + mean
        return new, coverage.tolist()


def random_cohort(gen, ids, n, g):
    w = g + torch.randn(len(ids), n, generator=gen)
    w[:, :3] = g[:3]                                   # some zero updates: ties at zero magnitude
    w[:, 5] = g[5] + 0.5                               # equal magnitudes across a column
    losses = torch.rand(len(ids), generator=gen).numpy() + 0.1
    samples = torch.randint(5, 30, (len(ids),), generator=gen).numpy()
    return CohortResult(w, losses, samples)


@pytest.mark.parametrize("ns, p, official, ef", [(3, 0.4, False, False), (4, 0.25, False, True), (5, 1.0, False, False),
                                                 (2, 0.5, True, False), (7, 0.1, False, True)])
def test_vectorised_scss_equals_the_per_client_loop(ns, p, official, ef):
    n, gen = 23, torch.Generator().manual_seed(ns)
    scfg = StrategyConfig(name="qsfl", use_qj=True, beta=0.5, k=3, ns=ns, p=p, error_feedback=ef,
                          aggregate="official" if official else "delta", index_encoding="int32")
    strat = QSFL(SimConfig(clients=8, strategy=scfg), n)
    ref = ReferenceSCSS(n, ns, p, "int32", official, ef)
    g, last = torch.randn(n, generator=gen), None
    for t in range(4):
        ids = np.sort(torch.randperm(8, generator=gen)[:5].numpy())
        cohort = random_cohort(gen, ids, n, g)
        led, ref_led = Ledger(), Ledger()
        new, info = strat.aggregate(t, g, last, ids, cohort, led)
        ref_led.uplink(meta_message(), count=len(ids))   # QJ metadata from every sampled client
        want, coverage = ref.aggregate(t, g, ids, set(info.qualified), cohort, ref_led)
        torch.testing.assert_close(new, want, atol=1e-6, rtol=1e-6)
        assert info.segment_coverage == coverage
        assert led.close_round() == ref_led.close_round()
        for cid in ids.tolist():
            got = strat.residuals.get(cid)
            if ef:
                torch.testing.assert_close(got, ref.residuals[cid], atol=1e-6, rtol=1e-6)
            else:
                assert got is None
        last, g = new - g, new


def test_aggregate_many_equals_each_job_alone():
    n, gen = 31, torch.Generator().manual_seed(7)
    configs = [StrategyConfig(name="qsfl", beta=0.9, k=3, ns=3, p=0.3),
               StrategyConfig(name="qsfl", beta=0.1, k=4, ns=3, p=0.6, error_feedback=True),
               StrategyConfig(name="qsfl", alpha=0.5, ns=5, p=0.2),
               StrategyConfig(name="qsfl", use_scss=False, k=2)]
    together = [QSFL(SimConfig(clients=6, strategy=c), n) for c in configs]
    alone = [QSFL(SimConfig(clients=6, strategy=c), n) for c in configs]
    g = [torch.randn(n, generator=gen) for _ in configs]
    last = [None] * len(configs)
    ids = np.arange(6)
    for t in range(3):
        cohorts = [random_cohort(gen, ids, n, w) for w in g]
        ledgers = [Ledger() for _ in configs]
        jobs = [AggregateJob(s, t, w, lu, ids, c, led) for s, w, lu, c, led in zip(together, g, last, cohorts, ledgers)]
        batch = QSFL.aggregate_many(jobs)
        for i, s in enumerate(alone):
            led = Ledger()
            new, info = s.aggregate(t, g[i], last[i], ids, cohorts[i], led)
            assert torch.equal(batch[i][0], new)
            assert batch[i][1] == info
            assert ledgers[i].close_round() == led.close_round()
        last = [b[0] - w for b, w in zip(batch, g)]
        g = [b[0] for b in batch]


def test_topk_aggregate_many_equals_each_job_alone_and_bills_every_client():
    n, gen = 17, torch.Generator().manual_seed(3)
    configs = [StrategyConfig(name="topk", p=0.2), StrategyConfig(name="topk", p=0.7, error_feedback=True)]
    together = [TopK(SimConfig(clients=5, strategy=c), n) for c in configs]
    alone = [TopK(SimConfig(clients=5, strategy=c), n) for c in configs]
    g = torch.zeros(n)
    ids = np.array([0, 2, 4])
    for t in range(3):
        cohort = random_cohort(gen, ids, n, g)
        ledgers = [Ledger(), Ledger()]
        batch = TopK.aggregate_many([AggregateJob(s, t, g, None, ids, cohort, led) for s, led in zip(together, ledgers)])
        for i, s in enumerate(alone):
            led = Ledger()
            new, _ = s.aggregate(t, g, None, ids, cohort, led)
            assert torch.equal(batch[i][0], new)
            row = ledgers[i].close_round()
            assert row == led.close_round()
            k = int(np.ceil(configs[i].p * n))
            assert row["uplink_messages"] == 3 and row["uplink_bytes"] == 3 * sparse_message(k, n).total
    assert dense_message(n).total == 12 + 4 * n
