"""qsfl.system: per-client device profiles and simulated round time, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from qsfl.errors import ConfigError
from qsfl.system import (
    Profiles,
    SystemConfig,
    Tier,
    client_profiles,
    client_round_times,
    round_duration,
    system_from_config,
    tier_counts,
)


def test_fixed_profiles():
    prof = client_profiles(SystemConfig(uplink=100.0, downlink=200.0, compute=10.0), 4, seed=0)
    assert len(prof) == 4
    assert prof.uplink.tolist() == [100.0] * 4 and prof.downlink.tolist() == [200.0] * 4
    assert prof.compute.tolist() == [10.0] * 4


def test_round_time_by_hand():
    prof = Profiles(uplink=np.array([100.0, 50.0, 1.0]), downlink=np.array([200.0, 400.0, 1.0]),
                    compute=np.array([10.0, 20.0, 1.0]))
    # client 0: 400/200 + 40/10 + 100/100 = 2 + 4 + 1; client 1: 400/400 + 40/20 + 100/50 = 1 + 2 + 2
    times = client_round_times(prof, [0, 1], [400, 400], [40, 40], [100, 100])
    np.testing.assert_allclose(times, [7.0, 5.0])
    assert round_duration(prof, [1, 0], [400, 400], [40, 40], [100, 100]) == 7.0
    # the slow client 2 is not in the round: it does not count
    assert round_duration(prof, [1], [400], [40], [100]) == 5.0
    assert round_duration(prof, [], [], [], []) == 0.0
    with pytest.raises(ValueError, match="one entry per client"):
        client_round_times(prof, [0, 1], [400], [40, 40], [100, 100])


def test_tier_counts_are_exact():
    assert tier_counts([0.1, 0.9], 20).tolist() == [2, 18]
    assert tier_counts([1 / 3, 1 / 3, 1 / 3], 10).tolist() == [4, 3, 3]
    assert tier_counts([0.25, 0.75], 3).tolist() == [1, 2]
    assert tier_counts([1.0], 7).tolist() == [7]


def test_tiers_slowest_tenth_ten_times_slower():
    system = SystemConfig(source="tiers", uplink=1000.0, downlink=4000.0, compute=50.0,
                          tiers=(Tier(share=0.1, scale=0.1), Tier(share=0.9, compute=80.0)))
    prof = client_profiles(system, 20, seed=3)
    slow = np.flatnonzero(prof.uplink == 100.0)
    assert len(slow) == 2
    np.testing.assert_array_equal(prof.downlink[slow], [400.0, 400.0])
    np.testing.assert_array_equal(prof.compute[slow], [5.0, 5.0])
    fast = np.setdiff1d(np.arange(20), slow)
    assert set(prof.uplink[fast]) == {1000.0} and set(prof.compute[fast]) == {80.0}
    again = client_profiles(system, 20, seed=3)
    np.testing.assert_array_equal(again.uplink, prof.uplink)
    other = [np.flatnonzero(client_profiles(system, 20, seed=s).uplink == 100.0).tolist() for s in range(4, 10)]
    assert any(o != slow.tolist() for o in other)


def test_lognormal_median_and_spread():
    system = SystemConfig(source="lognormal", uplink=1000.0, downlink=4000.0, compute=50.0, sigma=0.5,
                          compute_sigma=0.0)
    prof = client_profiles(system, 20001, seed=1)
    assert np.median(prof.uplink) == pytest.approx(1000.0, rel=0.03)
    assert np.median(prof.downlink) == pytest.approx(4000.0, rel=0.03)
    assert np.std(np.log(prof.uplink)) == pytest.approx(0.5, rel=0.03)
    assert set(prof.compute) == {50.0}
    # a quantity's own sigma changes only that quantity
    wider = client_profiles(SystemConfig(source="lognormal", uplink=1000.0, downlink=4000.0, compute=50.0,
                                         sigma=0.5, compute_sigma=2.0), 20001, seed=1)
    np.testing.assert_array_equal(wider.uplink, prof.uplink)
    assert np.std(np.log(wider.compute)) == pytest.approx(2.0, rel=0.03)
    np.testing.assert_array_equal(client_profiles(system, 50, seed=1).uplink, prof.uplink[:50])
    assert not np.array_equal(client_profiles(system, 50, seed=2).uplink, prof.uplink[:50])
    flat = client_profiles(SystemConfig(source="lognormal", uplink=7.0, sigma=0.0), 5, seed=0)
    assert flat.uplink.tolist() == [7.0] * 5


def test_trace_csv(tmp_path):
    path = tmp_path / "devices.csv"
    path.write_text("client,uplink,downlink,compute,model\n"
                    "2,300,3000,30,phone\n0,100,1000,10,phone\n5,9,9,9,tablet\n1,200,2000,20,laptop\n")
    prof = client_profiles(SystemConfig(source="trace", trace=str(path)), 3, seed=0)
    assert prof.uplink.tolist() == [100.0, 200.0, 300.0]
    assert prof.downlink.tolist() == [1000.0, 2000.0, 3000.0]
    assert prof.compute.tolist() == [10.0, 20.0, 30.0]
    rows = tmp_path / "rows.csv"
    rows.write_text("uplink,downlink,compute\n1,2,3\n4,5,6\n")
    assert client_profiles(SystemConfig(source="trace", trace=str(rows)), 2, seed=0).compute.tolist() == [3.0, 6.0]
    # 4 = 100/100 + 10/10 + 2000/1000 = 1 + 1 + 2
    assert round_duration(prof, [0], [2000], [10], [100]) == 4.0


@pytest.mark.parametrize("text, clients, match", [
    ("uplink,downlink,compute\n1,2,3\n", 2, r"no row for client\(s\) \[1\]"),
    ("client,uplink,downlink,compute\n0,1,2,3\n0,1,2,3\n", 1, "client 0 appears twice"),
    ("uplink,downlink,compute\n1,fast,3\n", 1, "line 2: downlink 'fast' is not a number"),
    ("uplink,downlink,compute\n1,0,3\n", 1, r"downlink 0.0 is out of range"),
    ("uplink,compute\n1,3\n", 1, r"missing column\(s\) downlink"),
    ("uplink,downlink,compute\n", 1, "no rows"),
    ("client,uplink,downlink,compute\nx,1,2,3\n", 1, "client 'x' is not an integer"),
])
def test_bad_trace(tmp_path, text, clients, match):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        client_profiles(SystemConfig(source="trace", trace=str(path)), clients, seed=0)


def test_missing_trace_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        client_profiles(SystemConfig(source="trace", trace=str(tmp_path / "none.csv")), 2, seed=0)


@pytest.mark.parametrize("data, match", [
    ({"source": "gauss"}, r"system.source: unknown value 'gauss'; valid: fixed, lognormal, tiers, trace"),
    ({"uplink": 0}, r"system.uplink: 0 is out of range; allowed \(0.0, inf\]"),
    ({"sigma": -1.0}, r"system.sigma: -1.0 is out of range"),
    ({"compute_sigma": -1.0}, r"system.compute_sigma: -1.0 is out of range"),
    ({"speed": 1}, r"system.speed: unknown key"),
    ({"source": "tiers"}, "needs at least one tier"),
    ({"source": "tiers", "tiers": [{"share": 0.5}]}, r"the shares sum to 0.5; allowed: 1.0"),
    ({"source": "tiers", "tiers": [{"scale": 0.5}]}, r"system.tiers\[0\].share: missing"),
    ({"source": "tiers", "tiers": [{"share": 1.0, "scale": 0}]}, r"system.tiers\[0\].scale: 0 is out of range"),
    ({"source": "tiers", "tiers": [{"share": 1.0, "fast": 1}]}, r"system.tiers\[0\].fast: unknown key"),
    ({"tiers": [{"share": 1.0}]}, "applies to source 'tiers' only"),
    ({"source": "trace"}, "needs a CSV path"),
    ({"trace": "x.csv"}, "applies to source 'trace' only"),
    ({"tiers": 3}, "expected a list of tier tables"),
])
def test_bad_system_config(data, match):
    with pytest.raises(ConfigError, match=match):
        SystemConfig.from_dict(data)


def test_system_config_round_trip():
    system = SystemConfig.from_dict({"source": "tiers", "uplink": 2e6,
                                     "tiers": [{"share": 0.1, "scale": 0.1}, {"share": 0.9, "uplink": 3e6}]})
    assert system.tiers[1] == Tier(share=0.9, uplink=3e6)
    assert SystemConfig.from_dict(system.to_dict()) == system
    assert "trace" not in system.to_dict()
    assert system_from_config(None) is None
    assert system_from_config(system) is system
    assert system_from_config({"source": "fixed"}) == SystemConfig()
    with pytest.raises(ConfigError, match="system: expected a table"):
        system_from_config("fast")
