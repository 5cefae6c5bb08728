"""QSFL dynamic segmentation (``strategy.segmentation`` = "count" | "size"): per-client frames from the uplink
bandwidth, their coverage bound, exact bytes and the per-coordinate aggregation, in single and batched runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsfl.comm import Ledger
from qsfl.config import QSFLConfig, SimConfig, StrategyConfig
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.segments import (
    client_segment_counts,
    client_segment_sizes,
    count_frames,
    frame_grid,
    relative_counts,
    segment_bounds,
    size_frames,
)
from qsfl.sim import Simulation, simulate, simulate_many
from qsfl.strategies import QSFL
from qsfl.system import SystemConfig, Tier, client_profiles

N_PARAMS = 9610   # mlp 64-128-10 on digits


# ------------------------------------------------------------------------------------ pure functions by hand

def test_relative_counts_counts_and_sizes_by_hand():
    up = np.array([1.0, 2.0, 4.0, 0.5, 1.0])          # median 1: r = 4 * 1 / up
    assert relative_counts(up, 4).tolist() == [4.0, 2.0, 1.0, 8.0, 4.0]
    assert client_segment_counts(up, 4, 10).tolist() == [4, 2, 1, 8, 4]
    assert client_segment_counts(up, 4, 10, ns_max=6).tolist() == [4, 2, 1, 6, 4]
    assert client_segment_counts(up, 4, 10, ns_min=2).tolist() == [4, 2, 2, 8, 4]
    assert client_segment_counts(up, 4, 5).tolist() == [4, 2, 1, 5, 4]          # at most n segments
    assert client_segment_sizes(up, 4, 10).tolist() == [3, 5, 10, 2, 3]         # ceil(10 / r)
    up = np.array([1.0, 3.0])                          # median 2: r = [4, 4/3]
    assert client_segment_counts(up, 2, 10).tolist() == [4, 2]                  # ceil(1.33) = 2
    assert client_segment_sizes(up, 2, 10).tolist() == [3, 8]                   # ceil(2.5), ceil(7.5)
    # equal bandwidths give exactly ns (no float noise), whatever the bandwidth
    same = np.full(7, 1.0 / 3.0)
    assert client_segment_counts(same, 6, N_PARAMS).tolist() == [6] * 7
    assert client_segment_sizes(same, 6, N_PARAMS).tolist() == [1602] * 7      # ceil(9610 / 6)


def test_count_frames_are_the_clients_own_array_split_segments():
    start, size, seg = count_frames(2, np.array([3]), np.array([4]), 10)   # (2 + 3) mod 4 = 1 of [3, 3, 2, 2]
    assert (start.tolist(), size.tolist(), seg.tolist()) == ([3], [3], [1])
    start, size, seg = count_frames(0, np.array([1]), np.array([8]), 10)   # segment 1 of [2, 2, 1, 1, 1, 1, 1, 1]
    assert (start.tolist(), size.tolist(), seg.tolist()) == ([2], [2], [1])
    for n, ns in [(10, 3), (10, 10), (9610, 7), (7, 4), (5, 1)]:
        ids = np.arange(ns)
        start, size, seg = count_frames(0, ids, np.full(ns, ns), n)
        bounds = segment_bounds(n, ns)
        assert seg.tolist() == ids.tolist()
        assert start.tolist() == bounds[:-1].tolist() and (start + size).tolist() == bounds[1:].tolist()


def test_size_frames_slide_by_their_own_length_and_wrap():
    start, size = size_frames(1, np.array([2, 0]), np.array([3, 4]), 10)   # (3 * 3) mod 10, (1 * 4) mod 10
    assert (start.tolist(), size.tolist()) == ([9, 4], [3, 4])
    cols, inside = frame_grid(start, size, 10)
    assert cols.tolist() == [[9, 0, 1, 2], [4, 5, 6, 7]]
    assert inside.tolist() == [[True, True, True, False], [True, True, True, True]]
    # consecutive rounds of one client tile the model: 4 windows of 3 cover all 10 coordinates
    starts = [int(size_frames(t, np.array([5]), np.array([3]), 10)[0][0]) for t in range(4)]
    assert starts == [5, 8, 1, 4]


def covered_by(frames: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Which coordinates lie in at least one of the frames (start, size arrays)."""
    hit = np.zeros(n, dtype=bool)
    for start, size in frames:
        for s, L in zip(start.tolist(), size.tolist()):
            hit[(s + np.arange(L)) % n] = True
    return hit


@pytest.mark.parametrize("mode", ["count", "size"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_coverage_bound_on_several_bandwidth_draws(mode, seed):
    """Bound: a client sending in B_i consecutive rounds (NS_i for "count", ceil(n / L_i) for "size") has sent every
    coordinate, so when every client sends every round, every coordinate is sent within B = min_i B_i <= ns rounds
    (a client at or above the median uplink has B_i <= ns)."""
    n, ns, clients = 997, 6, 20
    up = client_profiles(SystemConfig(source="lognormal", sigma=1.5), clients, seed).uplink
    ids = np.arange(clients)
    if mode == "count":
        per_client = client_segment_counts(up, ns, n)
        rounds = per_client
    else:
        per_client = client_segment_sizes(up, ns, n)
        rounds = -(-n // per_client)
    assert rounds[up >= np.median(up)].max() <= ns
    bound = int(rounds.min())
    assert bound <= ns

    def frames(t, who):
        if mode == "count":
            start, size, _ = count_frames(t, ids[who], per_client[who], n)
            return start, size
        return size_frames(t, ids[who], per_client[who], n)

    for t0 in (0, 3, 17):
        assert covered_by([frames(t, ids) for t in range(t0, t0 + bound)], n).all()
        for c in ids[:8]:   # each client alone, over its own B_i rounds
            assert covered_by([frames(t, ids == c) for t in range(t0, t0 + int(rounds[c]))], n).all()
    slowest = int(np.argmin(up))
    assert rounds[slowest] > ns   # the slowest client sends smaller frames: more rounds to cover the model alone


# ------------------------------------------------------------------------------- one round by hand (n = 10)

@pytest.fixture
def trace(tmp_path):
    """Uplinks 1000, 2000, 4000, 500 B/s: median 1500, r = 2 * 1500 / up = [3, 1.5, 0.75, 6] with ns = 2."""
    path = tmp_path / "trace.csv"
    path.write_text("uplink,downlink,compute\n1000,1e4,100\n2000,1e4,100\n4000,1e4,100\n500,1e4,100\n")
    return SystemConfig(source="trace", trace=str(path))


def hand_strategy(trace, **kw):
    scfg = QSFLConfig(use_qj=False, ns=2, p=0.4, **kw)
    return QSFL(SimConfig(clients=4, system=trace, strategy=scfg), 10)


def hand_cohort(ids=(0, 1, 2, 3)):
    """Client i's update: (c + 1) * (i + 1) at coordinate c; sample counts 2, 1, 1, 1."""
    rows = np.asarray(ids)
    w = (torch.arange(1, 11, dtype=torch.float32).unsqueeze(0) * torch.as_tensor(rows + 1.0).unsqueeze(1)).float()
    return rows, CohortResult(w, np.ones(len(rows)), np.array([2, 1, 1, 1])[rows])


@pytest.mark.parametrize("encoding, total", [("auto", 21 + 21 + 30 + 17), ("int32", 28 + 28 + 44 + 20)])
def test_count_round_by_hand(trace, encoding, total):
    s = hand_strategy(trace, segmentation="count", index_encoding=encoding)
    assert s.client_counts.tolist() == [3, 2, 1, 6]
    ids, cohort = hand_cohort()
    led = Ledger()
    new, info = s.aggregate(0, torch.zeros(10), None, ids, cohort, led)
    # round 0 frames: client 0 segment 0 of [4,3,3] -> [0,4); client 1 segment 1 of [5,5] -> [5,10);
    # client 2 the whole model; client 3 segment 3 of [2,2,2,2,1,1] -> [6,8)
    assert info.metrics["segment_ids"] == [0, 1, 0, 3]
    assert info.metrics["segment_counts"] == [3, 2, 1, 6]
    assert (info.metrics["frame_starts"], info.metrics["frame_sizes"]) == ([0, 5, 0, 6], [4, 5, 10, 2])
    assert info.metrics["covered_share"] == 1.0
    # kept ceil(0.4 * size): 2 of 4, 2 of 5, 4 of 10, 1 of 2. auto: a 1-, 1-, 2- and 1-byte bitmap;
    # 12 header + 4 B per value (+ 4 B per index with int32)
    row = led.close_round()
    assert (row["uplink_bytes"], row["uplink_messages"]) == (total, 4)
    # sent: c0 {2: 3, 3: 4} (x2 samples), c1 {8: 18, 9: 20}, c2 {6: 21, 7: 24, 8: 27, 9: 30}, c3 {7: 32};
    # weights per coordinate: 0-3: 2+1, 4: 1, 5: 1+1, 6-7: 1+1+1, 8-9: 1+1
    expected = [0, 0, 6 / 3, 8 / 3, 0, 0, 21 / 3, 56 / 3, 45 / 2, 50 / 2]
    torch.testing.assert_close(new, torch.tensor(expected))


def test_size_round_by_hand_wraps_around(trace):
    s = hand_strategy(trace, segmentation="size")
    assert s.client_sizes.tolist() == [4, 7, 10, 2]   # ceil(10 / r)
    ids, cohort = hand_cohort()
    led = Ledger()
    new, info = s.aggregate(1, torch.zeros(10), None, ids, cohort, led)
    # starts ((1 + id) * L) mod 10: 4, 14 -> 4 (coordinates 4..9 and 0), 0, 8
    assert (info.metrics["frame_starts"], info.metrics["frame_sizes"]) == ([4, 4, 0, 8], [4, 7, 10, 2])
    assert "segment_ids" not in info.metrics
    # 2 of 4 (21 B), 3 of 7 (12 + 12 + 1-byte bitmap = 25 B), 4 of 10 (30 B), 1 of 2 (17 B)
    assert led.close_round()["uplink_bytes"] == 21 + 25 + 30 + 17
    # sent: c0 {6: 7, 7: 8} (x2), c1 {7: 16, 8: 18, 9: 20}, c2 {6: 21, ..., 9: 30}, c3 {9: 40};
    # weights: 0: c1 + c2 = 2, 1-3: 1, 4-7: 2+1+1, 8-9: 1+1+1
    expected = [0, 0, 0, 0, 0, 0, 35 / 4, 56 / 4, 45 / 3, 90 / 3]
    torch.testing.assert_close(new, torch.tensor(expected))


def test_a_coordinate_nobody_sent_keeps_its_value_and_official_averages_weights(trace):
    ids, cohort = hand_cohort((0, 3))   # frames [0, 4) and [6, 8): 4, 5, 8, 9 unsent
    g = torch.full((10,), 0.5)
    new, info = hand_strategy(trace, segmentation="count").aggregate(0, g, None, ids, cohort, Ledger())
    assert info.metrics["covered_share"] == 0.6
    # updates w - g: client 0 sends 2.5, 3.5 at 2, 3 (of [0, 4)); client 3 sends 31.5 at 7 (of [6, 8));
    # covered but unsent (0, 1, 6): w_t + 0; in no frame (4, 5, 8, 9): unchanged
    torch.testing.assert_close(new, torch.tensor([0.5, 0.5, 3.0, 4.0, 0.5, 0.5, 0.5, 32.0, 0.5, 0.5]))
    # "official": the sparse *weights* averaged (zeros for unsent entries) on covered coordinates only
    weights = CohortResult(cohort.weights + 0.5, cohort.losses, cohort.num_samples)
    new, _ = hand_strategy(trace, segmentation="count", aggregate="official").aggregate(
        0, g, None, ids, weights, Ledger())
    torch.testing.assert_close(new, torch.tensor([0.0, 0.0, 3.5, 4.5, 0.5, 0.5, 0.0, 32.5, 0.5, 0.5]))


def test_error_feedback_keeps_what_a_frame_did_not_send(trace):
    s = hand_strategy(trace, segmentation="count", error_feedback=True)
    ids, cohort = hand_cohort()
    s.aggregate(0, torch.zeros(10), None, ids, cohort, Ledger())
    kept = s.residuals.get(3)   # client 3 sent coordinate 7 (32) only
    expected = cohort.weights[3].clone()
    expected[7] = 0.0
    assert torch.equal(kept, expected)


def test_the_compressed_downlink_uses_the_same_frames(trace):
    s = hand_strategy(trace, segmentation="count", downlink_p=0.5)
    led = Ledger()
    s.configure_round(0, torch.zeros(10), np.arange(4), led)   # no change yet
    g = torch.arange(1, 11, dtype=torch.float32)
    plan = s.configure_round(0, g, np.arange(4), led)
    # frames [0,4), [5,10), all, [6,8); downlink_p 0.5 keeps 2, 3, 5, 1 of the change g - w_0 = g
    assert plan.start[0].tolist() == [0, 0, 3, 4, 0, 0, 0, 0, 0, 0]
    assert plan.start[1].tolist() == [0, 0, 0, 0, 0, 0, 0, 8, 9, 10]
    assert plan.start[2].tolist() == [0, 0, 0, 0, 0, 6, 7, 8, 9, 10]
    assert plan.start[3].tolist() == [0, 0, 0, 0, 0, 0, 0, 8, 0, 0]
    # 2 of 4 (21 B), 3 of 5 (12 + 12 + 1 = 25 B), 5 of 10 (12 + 20 + 2 = 34 B), 1 of 2 (17 B), twice
    assert led.close_round()["downlink_bytes"] == 2 * (21 + 25 + 34 + 17)


# ---------------------------------------------------------------------------------------------- config

BASE = SimConfig(dataset="digits", model="mlp", clients=6, rounds=3, batch_size=20, seed=1, engine="batched")
HETERO = SystemConfig(source="tiers", uplink=2e4, downlink=8e4, compute=500.0,
                      tiers=(Tier(share=0.5), Tier(share=0.5, uplink=2e3, downlink=8e3, compute=500.0)))


@pytest.mark.parametrize("changes, fragment", [
    ({"strategy": QSFLConfig(segmentation="count")}, "strategy.segmentation: 'count' needs the clients' uplink"),
    ({"strategy": QSFLConfig(segmentation="size")}, "add a [system] table"),
])
def test_dynamic_segmentation_needs_a_system_model(changes, fragment):
    with pytest.raises(ConfigError) as err:
        BASE.replace(**changes)
    assert fragment in str(err.value)
    with pytest.raises(ConfigError, match="strategy.segmentation"):
        BASE.replace(strategy=QSFLConfig()).with_overrides({"strategy.segmentation": "count"})
    cfg = BASE.replace(system=HETERO, strategy=QSFLConfig()).with_overrides({"strategy.segmentation": "count"})
    assert cfg.strategy.segmentation == "count"


@pytest.mark.parametrize("table, fragment", [
    ({"segmentation": "bogus"}, "strategy.segmentation: unknown value 'bogus'; valid: fixed, count, size"),
    ({"segmentation": "count", "ns": 6, "ns_min": 7}, "strategy.ns_min: 7 is out of range; allowed [1, 6]"),
    ({"segmentation": "count", "ns": 6, "ns_max": 5}, "strategy.ns_max: 5 is out of range; allowed [6, inf]"),
    ({"ns_max": 12}, "strategy.ns_max: 12 applies to strategy.segmentation 'count' or 'size' only"),
    ({"segmentation": "size", "use_scss": False}, "strategy.segmentation: 'size' needs strategy.use_scss = true"),
    ({"segmentation": "count", "variant": "authors_code"}, "strategy.segmentation: 'count' is not available"),
])
def test_segmentation_options_are_validated(table, fragment):
    with pytest.raises(ConfigError) as err:
        StrategyConfig(name="qsfl", **table)
    assert fragment in str(err.value)


def test_segmentation_is_a_qsfl_field_only():
    with pytest.raises(ConfigError, match="strategy.segmentation: unknown key of strategy 'fedavg'"):
        StrategyConfig(name="fedavg", segmentation="count")
    assert StrategyConfig(name="qsfl").segmentation == "fixed"


# --------------------------------------------------------------------------------------------- simulations

def equal_runs(a, b, *, tol=None):
    exact = ["uplink_bytes", "downlink_bytes", "cum_uplink_bytes", "qualified_clients", "segment_ids"]
    for col in (c for c in exact if c in a.df or c in b.df):
        assert a.df[col].tolist() == b.df[col].tolist(), col
    if tol is None:
        assert a.df["test_accuracy"].tolist() == b.df["test_accuracy"].tolist()
        assert a.df["round_time_s"].tolist() == b.df["round_time_s"].tolist()
    else:
        np.testing.assert_allclose(a.df["test_accuracy"], b.df["test_accuracy"], atol=tol)


@pytest.mark.parametrize("mode", ["count", "size"])
def test_equal_bandwidths_reproduce_fixed_segmentation(mode):
    """Every client at the median: NS_i = ns and L_i = n / ns (ns = 5 divides 9610), the fixed layout."""
    base = BASE.replace(system=SystemConfig(uplink=1e4))
    fixed = Simulation(base.replace(strategy=QSFLConfig(ns=5, downlink_p=0.4)))
    dynamic = Simulation(base.replace(strategy=QSFLConfig(ns=5, downlink_p=0.4, segmentation=mode)))
    hf, hd = fixed.run(), dynamic.run()
    if mode == "size":   # size mode reports windows, not segment ids: compare the starts with the fixed bounds
        bounds = segment_bounds(N_PARAMS, 5)
        assert hd.df["frame_starts"].tolist() == [[int(bounds[s]) for s in ids] for ids in hf.df["segment_ids"]]
        hd.df["segment_ids"] = hf.df["segment_ids"]
    equal_runs(hf, hd, tol=1e-6)
    torch.testing.assert_close(fixed.final_weights, dynamic.final_weights, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["count", "size"])
def test_pause_and_continue_is_exact(mode):
    cfg = BASE.replace(rounds=4, system=HETERO,
                       strategy=QSFLConfig(k=4, segmentation=mode, downlink_p=0.4, error_feedback=True))
    whole = simulate(cfg)
    first = Simulation(cfg)
    first.run(until=2)
    rest = Simulation.from_state(cfg, first.state())
    continued = rest.run()
    equal_runs(whole, continued)
    assert whole.df["frame_sizes"].tolist() == continued.df["frame_sizes"].tolist()
    slow = whole.df["frame_sizes"].map(min).min()
    assert slow < N_PARAMS / 6   # the slow tier's frames are smaller than a fixed segment


def test_simulate_many_equals_each_runs_own_simulate():
    base = BASE.replace(system=HETERO)
    configs = [base.replace(strategy=QSFLConfig(k=4, **kw)) for kw in
               ({}, {"segmentation": "count"}, {"segmentation": "size", "downlink_p": 0.4},
                {"segmentation": "count", "ns": 3, "p": 0.2, "error_feedback": True})]
    together = simulate_many(configs)
    for cfg, h in zip(configs, together):
        alone = simulate(cfg)
        equal_runs(alone, h, tol=1e-5)
        for col in ("frame_starts", "frame_sizes", "covered_share"):
            if col in alone.df:
                assert alone.df[col].tolist() == h.df[col].tolist()


@pytest.mark.parametrize("mode", ["count", "size"])
def test_every_entry_is_sent_within_the_bound_in_a_simulation(mode):
    """QJ off and p = 1: every client sends its whole frame every round; every coordinate is sent by someone within
    B = min_i B_i <= ns rounds (checked from the History's frames), on two bandwidth draws."""
    for seed in (0, 3):
        system = SystemConfig(source="lognormal", sigma=1.0)
        cfg = BASE.replace(seed=seed, rounds=6, system=system,
                           strategy=QSFLConfig(use_qj=False, p=1.0, ns=6, segmentation=mode))
        sim = Simulation(cfg)
        h = sim.run()
        s = sim.strategy
        per_client = s.client_counts if mode == "count" else -(-N_PARAMS // s.client_sizes)
        bound = int(per_client.min())
        assert bound <= 6
        frames = [(np.array(a), np.array(b)) for a, b in zip(h.df["frame_starts"], h.df["frame_sizes"])]
        for t0 in range(len(frames) - bound + 1):
            assert covered_by(frames[t0:t0 + bound], N_PARAMS).all()
        # with p = 1 the uplink carries every entry of every frame: values only, no index
        assert (h.df["uplink_bytes"] == [12 * 6 + 4 * sum(sizes) for sizes in h.df["frame_sizes"]]).all()


def test_the_frame_columns_survive_save_and_load(tmp_path):
    h = simulate(BASE.replace(rounds=2, system=HETERO, strategy=QSFLConfig(k=4, segmentation="count")))
    back = type(h).load(h.save(tmp_path / "run"))
    for col in ("frame_starts", "frame_sizes", "segment_ids", "segment_counts", "covered_share"):
        assert back.df[col].tolist() == h.df[col].tolist(), col
    assert max(max(c) for c in h.df["segment_counts"]) > 6   # a slow client with more, smaller segments
