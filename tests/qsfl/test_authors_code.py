"""qsfl.authors_code: the authors_code options against a transcription of the authors' code, and each switch
alone on hand-computed cases (issue 11)."""

from __future__ import annotations

from dataclasses import replace

import authors_transcription as T
import numpy as np
import pytest
import torch

from qsfl import authors_code as A
from qsfl.comm import Ledger
from qsfl.config import SimConfig, StrategyConfig
from qsfl.engine.common import CohortResult
from qsfl.errors import ConfigError
from qsfl.segments import segment_bounds, top_p_indices
from qsfl.strategies import QSFL

# layer shapes: the digits MLP 64-128-10 (9610), the authors' FEMNIST CNN (110,526), and sizes that NS
# does not divide, including ones where NS * round(n / NS) falls short of n (tail) or passes it (overflow)
SHAPES = {
    9610: [(128, 64), (128,), (10, 128), (10,)],
    110526: [(16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (62, 1568), (62,)],
    1003: [(17, 59)],
    4097: [(4096,), (1,)],
    250: [(10, 25)],
    15: [(3, 5)],
    9: [(9,)],
    61: [(61,)],
}


def _layers(flat: np.ndarray, shapes) -> list[np.ndarray]:
    out, at = [], 0
    for s in shapes:
        size = int(np.prod(s))
        out.append(flat[at:at + size].reshape(s).copy())
        at += size
    return out


def _draw_case(rng: np.random.Generator, n: int) -> dict:
    """One random round: sizes, cohort, hyperparameters, weights (often with ties in |value|)."""
    c = int(rng.integers(5, 13 if n > 50000 else 41))
    ns = int(rng.choice([6, int(rng.integers(1, min(12, n) + 1))]))
    p = float(rng.choice([0.4, rng.uniform(0.005, 1.0), 1.0, rng.uniform(0.01, 0.15)]))
    alpha = float(rng.choice([0.7, rng.uniform(0.05, 1.0)]))
    beta = float(rng.choice([0.9, rng.uniform(0.0, 1.0)]))
    ties = bool(rng.random() < 0.5)

    def draw(shape):
        if ties:   # few distinct magnitudes, signs and zeros: ties in |value| and in sign everywhere
            return (rng.integers(-4, 5, size=shape) / 8.0).astype(np.float32)
        return rng.normal(0.0, 0.3, size=shape).astype(np.float32)

    global_w = draw(n)
    weights = global_w + draw((c, n))
    if ties:
        weights = draw((c, n))
    losses = rng.uniform(0.1, 3.0, size=c)
    sizes = rng.integers(1, 200, size=c)
    if rng.random() < 0.3:       # equal losses and sizes for a few clients: equal contributions
        losses[: c // 2] = losses[0]
        sizes[: c // 2] = sizes[0]
    ids = rng.permutation(c)     # the project's ids 0..C-1, in any order
    return dict(n=n, c=c, ns=ns, p=p, alpha=alpha, beta=beta, ties=ties, round=int(rng.integers(0, 100)),
                global_w=global_w, base=rng.normal(0.0, 0.3, size=n).astype(np.float32), weights=weights,
                losses=losses, sizes=sizes, ids=ids)


def _ours(case: dict, options: A.Options = A.AUTHORS_CODE) -> A.RoundOutput:
    hyper = A.Hyperparameters(beta=case["beta"], alpha=case["alpha"], ns=case["ns"], p=case["p"])
    return A.aggregate_round(case["round"], torch.from_numpy(case["base"]), torch.from_numpy(case["global_w"]),
                             case["ids"], torch.from_numpy(case["weights"]), case["losses"], case["sizes"],
                             hyper, options)


def _theirs(case: dict, *, clip_overflow: bool = False, num_seg: int | None = None, p: float | None = None,
            pretrained: np.ndarray | None = None):
    """(per-client messages keyed by the project's id, new flat weights, qualified project ids)."""
    shapes = SHAPES.get(case["n"], [(case["n"],)])
    ns = case["ns"] if num_seg is None else num_seg
    p = case["p"] if p is None else p
    global_layers = _layers(case["global_w"], shapes)
    updates = {}
    for row, cid in enumerate(case["ids"].tolist()):
        msg = T.client_update(case["round"], cid + 1, _layers(case["weights"][row], shapes), global_layers,
                              num_seg=ns, p=p)
        msg.update(train_size=int(case["sizes"][row]), train_loss=float(case["losses"][row]))
        updates[cid] = msg
    base = case["base"] if pretrained is None else pretrained
    new, qualified = T.server_round(list(updates.values()), current_round=case["round"],
                                    pretrained_weights=_layers(base, shapes), beta=case["beta"],
                                    alpha=case["alpha"], num_seg=ns, clip_overflow=clip_overflow)
    flat = np.concatenate([x.reshape(-1) for x in new])
    return updates, flat, [q - 1 for q in qualified]


def _overflows(n: int, ns: int) -> bool:
    return ns * A.authors_segment_length(n, ns) > n


def _mismatch(case: dict, ours: A.RoundOutput, updates: dict, flat: np.ndarray, qualified: list[int],
              ns: int | None = None) -> str:
    """What differs between our round and the transcription's ("" when nothing does)."""
    ns = case["ns"] if ns is None else ns
    length = A.authors_segment_length(case["n"], ns)
    if ours.qualified.tolist() != sorted(qualified):
        return f"qualified {ours.qualified.tolist()} != {sorted(qualified)}"
    if sorted(ours.entries) != sorted(updates):              # every contacted client uploads
        return f"senders {sorted(ours.entries)} != {sorted(updates)}"
    for cid, msg in updates.items():
        start = ((case["round"] + cid + 1) % ns) * length
        rel = np.asarray(msg["remained_paras_index"], dtype=np.int64).reshape(-1)
        vals = np.asarray(msg["compressed_paras"], dtype=np.float64).reshape(-1)
        order = np.argsort(rel)
        if not np.array_equal(ours.entries[cid].numpy(), start + rel[order]):
            return f"entries of client {cid}"
        if not np.array_equal(ours.values[cid].numpy().astype(np.float64), vals[order]):
            return f"values of client {cid}"
    gap = float(np.max(np.abs(ours.weights.numpy().astype(np.float64) - flat)))
    return "" if gap <= 1e-6 else f"global weights differ by {gap}"


def _assert_same(*args, **kwargs) -> None:
    problem = _mismatch(*args, **kwargs)
    assert not problem, problem


def _cases(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    sizes = [9610] * 6 + [110526] + [1003, 4097, 250, 15, 9, 61] * 2
    return [_draw_case(rng, int(rng.choice(sizes))) for _ in range(count)]


def test_authors_code_equals_the_transcription_on_220_random_rounds():
    stats = dict(overflow=0, tail=0, ties_mattered=0, whole_segment=0, big=0, mlp=0)
    for case in _cases(220, seed=11):
        ours = _ours(case)
        try:
            updates, flat, qualified = _theirs(case)
        except ValueError:     # their server fails writing a segment past the model's end
            assert _overflows(case["n"], case["ns"])
            stats["overflow"] += 1
            updates, flat, qualified = _theirs(case, clip_overflow=True)
        _assert_same(case, ours, updates, flat, qualified)
        length = A.authors_segment_length(case["n"], case["ns"])
        stats["tail"] += case["ns"] * length < case["n"]
        stats["big"] += case["n"] == 110526
        stats["mlp"] += case["n"] == 9610
        stats["whole_segment"] += any(round(case["p"] * len(m["remained_paras_index"])) == 0 and
                                      len(m["remained_paras_index"]) > 1 for m in updates.values())
        if case["ties"]:
            low = _ours(case, replace(A.AUTHORS_CODE, tie_break="low"))
            stats["ties_mattered"] += any(not torch.equal(low.entries[c], ours.entries[c]) for c in ours.entries)
    # the cases exercise what they are meant to (none of these may be zero)
    assert all(v > 0 for v in stats.values()), stats


def test_every_authors_switch_is_needed():
    """Reverting any one switch of AUTHORS_CODE to this project's default breaks the equality on some round."""
    cases = [c for c in _cases(60, seed=2) if c["n"] <= 9610][:30]
    theirs = [_theirs(c, clip_overflow=True) for c in cases]
    for name, (project, _) in A.SWITCHES.items():
        reverted = replace(A.AUTHORS_CODE, **{name: project})
        broken = sum(bool(_mismatch(c, _ours(c, reverted), *t)) for c, t in zip(cases, theirs))
        assert broken > 0, name


def test_pretraining_round_is_their_round_zero_with_one_segment_and_p_one():
    for case in _cases(12, seed=5):
        ours = A.pretraining_round(case["ids"], torch.from_numpy(case["weights"]), case["losses"], case["sizes"],
                                   torch.from_numpy(case["global_w"]),
                                   A.Hyperparameters(beta=case["beta"], alpha=case["alpha"], ns=case["ns"],
                                                     p=case["p"]), A.AUTHORS_CODE)
        case = dict(case, round=0)
        updates, flat, qualified = _theirs(case, num_seg=1, p=1.0)
        _assert_same(case, ours, updates, flat, qualified, ns=1)


def test_their_default_argsort_keeps_the_same_magnitudes_as_the_stable_one(monkeypatch):
    """DEPARTURE 1 only decides which of several equal |values| are kept, never how many or how large."""
    for case in _cases(15, seed=3):
        stable, _, _ = _theirs(case, clip_overflow=True)
        monkeypatch.setattr(T, "ARGSORT_KIND", "quicksort")
        default, _, _ = _theirs(case, clip_overflow=True)
        monkeypatch.setattr(T, "ARGSORT_KIND", "stable")
        for cid in stable:
            a = np.sort(np.abs(np.asarray(stable[cid]["compressed_paras"], dtype=np.float64).reshape(-1)))
            b = np.sort(np.abs(np.asarray(default[cid]["compressed_paras"], dtype=np.float64).reshape(-1)))
            np.testing.assert_array_equal(a, b)
            if not case["ties"]:
                np.testing.assert_array_equal(np.sort(stable[cid]["remained_paras_index"].reshape(-1)),
                                              np.sort(default[cid]["remained_paras_index"].reshape(-1)))


def test_their_server_reads_scores_by_client_id_minus_one():
    """With a cohort that is not exactly clients 1..C, line 147 reads another client's score or fails."""
    n, shapes = 12, [(12,)]
    rng = np.random.default_rng(0)
    g = rng.normal(size=n).astype(np.float32)
    msgs = []
    for cid in (2, 3):       # clients 2 and 3 of 3 contacted: the scores list has 2 entries
        m = T.client_update(0, cid, _layers(rng.normal(size=n).astype(np.float32), shapes), [g], num_seg=2, p=0.5)
        m.update(train_size=10, train_loss=1.0)
        msgs.append(m)
    with pytest.raises(IndexError):
        T.server_round(msgs, current_round=0, pretrained_weights=[g], num_seg=2)


# ----- each switch alone, hand-computed -------------------------------------------------------------

def _round(options: A.Options, weights, global_w, *, ids=None, ns=1, p=1.0, losses=None, samples=None,
           base=None, round_index=0, use_qj=False, last=None, **hyper) -> A.RoundOutput:
    w = torch.tensor(weights, dtype=torch.float32)
    c = w.shape[0]
    return A.aggregate_round(round_index, None if base is None else torch.tensor(base, dtype=torch.float32),
                             torch.tensor(global_w, dtype=torch.float32),
                             np.arange(c) if ids is None else np.asarray(ids), w,
                             np.ones(c) if losses is None else np.asarray(losses, dtype=float),
                             np.ones(c, dtype=np.int64) if samples is None else np.asarray(samples),
                             A.Hyperparameters(ns=ns, p=p, use_qj=use_qj, **hyper), options,
                             None if last is None else torch.tensor(last, dtype=torch.float32))


D = A.PROJECT_DEFAULT


def test_switch_relevance():
    # g_{t-1} = [1,-1,1,1]; a's update agrees on 4/4 signs, b's on 1/4; by weights, b agrees 4/4 with w_t, a 3/4
    g, last = [1.0, -1.0, 1.0, -1.0], [1.0, -1.0, 1.0, 1.0]
    w = [[2.0, -2.0, 2.0, 2.0], [0.5, -0.5, 0.5, -0.5]]
    kw = dict(use_qj=True, beta=0.0, k=1, last=last)
    assert _round(D, w, g, **kw).qualified.tolist() == [0]
    assert _round(replace(D, relevance="weights"), w, g, **kw).qualified.tolist() == [1]


def test_switch_selection():
    # beta = 1: scores = contributions 0.1..0.4; alpha 0.6: K = ceil(2.4) = 3; 40th percentile = 0.22
    w, g = [[0.0]] * 4, [0.0]
    kw = dict(use_qj=True, beta=1.0, alpha=0.6, losses=[1, 2, 3, 4])
    assert _round(D, w, g, **kw).qualified.tolist() == [1, 2, 3]
    assert _round(replace(D, selection="percentile"), w, g, **kw).qualified.tolist() == [2, 3]


def test_switch_aggregate():
    g, w = [1.0, 1.0, 1.0, 1.0], [[1.5, 3.0, 1.0, 0.0]]      # update [0.5, 2, 0, -1]: top-2 = indices 1, 3
    torch.testing.assert_close(_round(D, w, g, p=0.5).weights, torch.tensor([1.0, 3.0, 1.0, 0.0]))
    # official: the mean of the sparse *weights*, zeros where nothing was sent
    torch.testing.assert_close(_round(replace(D, aggregate="official"), w, g, p=0.5).weights,
                               torch.tensor([0.0, 3.0, 0.0, 0.0]))


def test_switch_rank_by():
    g, w = [1.0, 1.0, 1.0, 1.0], [[1.5, 3.0, 1.0, 0.0]]      # |w| = [1.5, 3, 1, 0]: top-2 = indices 0, 1
    assert _round(D, w, g, p=0.5).entries[0].tolist() == [1, 3]
    out = _round(replace(D, rank_by="weights"), w, g, p=0.5)
    assert out.entries[0].tolist() == [0, 1]
    torch.testing.assert_close(out.weights, torch.tensor([1.5, 3.0, 1.0, 1.0]))


def test_switch_k_rounding():
    assert [A.entry_count(0.5, 5, "ceil"), A.entry_count(0.5, 5, "round")] == [3, 2]     # round(2.5) = 2
    assert [A.entry_count(0.7, 5, "ceil"), A.entry_count(0.7, 5, "round")] == [4, 4]     # 3.5 -> 4 both
    assert [A.entry_count(0.1, 5, "ceil"), A.entry_count(0.1, 5, "round")] == [1, 5]     # round(0.5) = 0: all
    w, g = [[5.0, 4.0, 3.0, 2.0, 1.0]], [0.0] * 5
    assert _round(D, w, g, p=0.1).entries[0].tolist() == [0]
    assert _round(replace(D, k_rounding="round"), w, g, p=0.1).entries[0].tolist() == [0, 1, 2, 3, 4]


def test_switch_segment_layout_bounds():
    assert segment_bounds(9, 6).tolist() == [0, 2, 4, 6, 7, 8, 9]
    assert A.layout_bounds(9, 6, "array_split").tolist() == [0, 2, 4, 6, 7, 8, 9]
    # round(9 / 6) = round(1.5) = 2: segment 4 is cut to [8, 9) (their server fails on it), segment 5 is empty
    assert A.layout_bounds(9, 6, "authors").tolist() == [0, 2, 4, 6, 8, 9, 9]
    # round(13 / 6) = 2: six segments of 2, index 12 in none; round(15 / 6) = round(2.5) = 2 (half to even)
    assert A.layout_bounds(13, 6, "authors").tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert A.layout_bounds(15, 6, "authors").tolist() == [0, 2, 4, 6, 8, 10, 12]


def test_switch_segment_layout_leaves_the_tail_at_the_base_and_sends_empty_segments():
    g = [0.0] * 13
    w = [[1.0] * 13] * 6                  # round 0, ids 0..5: every segment sent, whole (p = 1)
    assert _round(D, w, g, ns=6).weights.tolist() == [1.0] * 13
    assert _round(replace(D, segment_layout="authors"), w, g, ns=6).weights.tolist() == [1.0] * 12 + [0.0]
    # n = 9: segment 5 of the authors' layout is empty -> a header-only message (12 B), nothing changes
    out = _round(replace(D, segment_layout="authors"), [[1.0] * 9], [0.0] * 9, ns=6, ids=[5])
    assert out.entries[5].tolist() == [] and out.uplink_bytes == 12
    assert out.weights.tolist() == [0.0] * 9
    out = _round(replace(D, segment_layout="authors"), [[1.0] * 9], [0.0] * 9, ns=6, ids=[4])
    assert out.entries[4].tolist() == [8] and out.weights.tolist() == [0.0] * 8 + [1.0]


def test_switch_base():
    g, b, w = [1.0, 1.0, 1.0, 1.0], [7.0, 7.0, 7.0, 7.0], [[3.0, 3.0, 3.0, 3.0]]   # ns 2: client 0 sends [0, 2)
    torch.testing.assert_close(_round(D, w, g, ns=2, base=b).weights, torch.tensor([3.0, 3.0, 1.0, 1.0]))
    # pretrained: the unsent segment is the base's; the sent one is base + mean update (aggregate="delta")
    torch.testing.assert_close(_round(replace(D, base="pretrained"), w, g, ns=2, base=b).weights,
                               torch.tensor([9.0, 9.0, 7.0, 7.0]))
    with pytest.raises(ValueError, match="base weights"):
        _round(replace(D, base="pretrained"), w, g, ns=2)


def test_switch_client_numbering():
    g, w = [0.0] * 3, [[1.0, 2.0, 3.0]]   # ns 3, round 4, client 2: (4 + 2) % 3 = 0, from 1: (4 + 3) % 3 = 1
    out = _round(D, w, g, ns=3, ids=[2], round_index=4)
    assert out.segment_ids == {2: 0} and out.weights.tolist() == [1.0, 0.0, 0.0]
    out = _round(replace(D, client_numbering=1), w, g, ns=3, ids=[2], round_index=4)
    assert out.segment_ids == {2: 1} and out.weights.tolist() == [0.0, 2.0, 0.0]


def test_switch_tie_break():
    g, w = [0.0] * 4, [[1.0, -2.0, 2.0, 2.0]]     # |update| = [1, 2, 2, 2], keep 2
    assert _round(D, w, g, p=0.5).entries[0].tolist() == [1, 2]
    assert _round(replace(D, tie_break="high"), w, g, p=0.5).entries[0].tolist() == [2, 3]


def test_switch_segment_mean():
    g, w = [0.0, 0.0], [[4.0, 4.0], [0.0, 0.0]]
    torch.testing.assert_close(_round(D, w, g, samples=[1, 3]).weights, torch.tensor([1.0, 1.0]))   # 4 * 1/4
    torch.testing.assert_close(_round(replace(D, segment_mean="plain"), w, g, samples=[1, 3]).weights,
                               torch.tensor([2.0, 2.0]))


def test_switch_upload():
    # 4 clients, K = 2; each sends 4 of 8 entries with int32 indices: 12 + 16 + 16 = 44 B; metadata 24 B each
    g = [0.0] * 8
    w = [[float(i + 1)] * 8 for i in range(4)]
    kw = dict(use_qj=True, k=2, p=0.5, index_encoding="int32", losses=[1, 2, 3, 4])
    qual = _round(D, w, g, **kw)
    every = _round(replace(D, upload="all"), w, g, **kw)
    assert qual.uplink_bytes == 4 * 24 + 2 * 44
    assert every.uplink_bytes == 4 * 24 + 4 * 44
    assert sorted(every.entries) == [0, 1, 2, 3] and sorted(qual.entries) == [2, 3]
    torch.testing.assert_close(qual.weights, every.weights)       # the server discards what it did not qualify


def test_top_entries_low_is_the_projects_top_p():
    rng = np.random.default_rng(1)
    for _ in range(50):
        size = int(rng.integers(1, 60))
        v = torch.from_numpy((rng.integers(-3, 4, size=size) / 4.0).astype(np.float32))
        p = float(rng.uniform(0.01, 1.0))
        expected = top_p_indices(v, p)
        got = A.top_entries(v, A.entry_count(p, size, "ceil"), "low")
        torch.testing.assert_close(got, expected)


def test_options_validation_names_the_field():
    with pytest.raises(ConfigError, match="strategy.rank_by"):
        A.Options(rank_by="gradient")
    with pytest.raises(ConfigError, match="strategy.client_numbering"):
        A.Options(client_numbering=2)
    assert A.PROJECT_DEFAULT.switched() == []
    assert A.AUTHORS_CODE.switched() == list(A.SWITCHES)


def test_project_default_options_equal_the_qsfl_strategy():
    rng = np.random.default_rng(7)
    for trial in range(12):
        n, c = int(rng.integers(20, 400)), int(rng.integers(3, 15))
        ns = int(rng.integers(1, 8))
        g = torch.from_numpy(rng.normal(size=n).astype(np.float32))
        w = g + torch.from_numpy(rng.normal(0, 0.1, size=(c, n)).astype(np.float32))
        last = None if trial % 3 == 0 else torch.from_numpy(rng.normal(size=n).astype(np.float32))
        losses, samples = rng.uniform(0.1, 2, size=c), rng.integers(1, 50, size=c)
        ids = np.sort(rng.choice(100, size=c, replace=False))
        cfg = SimConfig(clients=100, strategy=StrategyConfig(name="qsfl", ns=ns, p=float(rng.uniform(0.05, 1))))
        ledger = Ledger()
        new, info = QSFL(cfg, n).aggregate(trial, g, last, ids, CohortResult(w, losses, samples), ledger)
        s = cfg.strategy
        out = A.aggregate_round(trial, None, g, ids, w, losses, samples,
                                A.Hyperparameters(beta=s.beta, alpha=s.alpha, ns=s.ns, p=s.p), D, last)
        torch.testing.assert_close(out.weights, new, rtol=0, atol=1e-6)
        assert out.qualified.tolist() == info.qualified
        assert out.segment_ids == info.segment_ids and out.coverage == info.segment_coverage
        assert out.uplink_bytes == ledger.close_round()["uplink_bytes"]


# ----- the variant in the config and the qsfl strategy --------------------------------------------------

def test_variant_is_a_preset_each_field_overrides_alone():
    assert StrategyConfig(name="qsfl").options == A.PROJECT_DEFAULT
    assert StrategyConfig(name="qsfl", variant="authors_code").options == A.AUTHORS_CODE
    one = StrategyConfig(name="qsfl", variant="authors_code", base="global").options
    assert one == replace(A.AUTHORS_CODE, base="global")
    assert StrategyConfig(name="qsfl", tie_break="high").options.switched() == ["tie_break"]
    cfg = SimConfig(strategy=StrategyConfig(name="qsfl", variant="authors_code", upload="qualified"))
    assert SimConfig.from_dict(cfg.to_dict()) == cfg
    # the variant can be changed by an override; fields left unset follow it, set ones stay
    other = cfg.with_overrides({"strategy.variant": "default"})
    assert other.strategy.options == replace(A.PROJECT_DEFAULT, upload="qualified")
    assert cfg.with_overrides({"strategy.tie_break": "low"}).strategy.options.tie_break == "low"


def test_variant_bad_input_names_the_field():
    with pytest.raises(ConfigError, match="strategy.variant: unknown value 'authors'"):
        StrategyConfig(name="qsfl", variant="authors")
    with pytest.raises(ConfigError, match="strategy.segment_layout: unknown value"):
        SimConfig.from_dict({"strategy": {"name": "qsfl", "segment_layout": "even"}})
    with pytest.raises(ConfigError, match="strategy.client_numbering"):
        StrategyConfig(name="qsfl", client_numbering=True)
    with pytest.raises(ConfigError, match="strategy.error_feedback: true is not available with strategy.rank_by"):
        StrategyConfig(name="qsfl", variant="authors_code", error_feedback=True)


def _cohort_round(rng, n, c):
    g = torch.from_numpy(rng.normal(size=n).astype(np.float32))
    w = g + torch.from_numpy(rng.normal(0, 0.2, size=(c, n)).astype(np.float32))
    return g, CohortResult(w, rng.uniform(0.1, 2, size=c), rng.integers(1, 50, size=c))


def test_qsfl_strategy_with_the_variant_runs_the_round_function_and_keeps_the_pretrained_base():
    rng = np.random.default_rng(4)
    n, c = 250, 9
    cfg = SimConfig(clients=c, strategy=StrategyConfig(name="qsfl", variant="authors_code"))
    strat = QSFL(cfg, n)
    hyper = A.Hyperparameters()
    ids = np.arange(c)
    g0, res0 = _cohort_round(rng, n, c)
    ledger = Ledger()
    new0, info0 = strat.aggregate(0, g0, None, ids, res0, ledger)
    pre = A.pretraining_round(ids, res0.weights, res0.losses, res0.num_samples, g0, hyper, A.AUTHORS_CODE)
    want0 = A.aggregate_round(0, pre.weights, g0, ids, res0.weights, res0.losses, res0.num_samples, hyper,
                              A.AUTHORS_CODE)
    torch.testing.assert_close(new0, want0.weights)
    assert info0.qualified == want0.qualified.tolist() and info0.segment_ids == want0.segment_ids
    assert ledger.close_round()["uplink_bytes"] == pre.uplink_bytes + want0.uplink_bytes   # pretraining billed
    # round 1: rebuilt from the same pretrained base, no second pretraining
    g1, res1 = _cohort_round(rng, n, c)
    new1, _ = strat.aggregate(1, g1, g1 - g0, ids, res1, ledger)
    want1 = A.aggregate_round(1, pre.weights, g1, ids, res1.weights, res1.losses, res1.num_samples, hyper,
                              A.AUTHORS_CODE)
    torch.testing.assert_close(new1, want1.weights)
    assert ledger.close_round()["uplink_bytes"] == want1.uplink_bytes
    torch.testing.assert_close(strat.state_dict()["pretrained"], pre.weights)


def test_vectorised_path_takes_the_three_qj_aggregate_switches_from_the_variant():
    rng = np.random.default_rng(9)
    n, c = 120, 8
    g, res = _cohort_round(rng, n, c)
    ids = np.arange(c)
    for opts in (dict(relevance="weights"), dict(selection="percentile"), dict(aggregate="official")):
        cfg = SimConfig(clients=c, strategy=StrategyConfig(name="qsfl", **opts))
        ledger = Ledger()
        new, info = QSFL(cfg, n).aggregate(3, g, g * 0.1, ids, res, ledger)
        want = A.aggregate_round(3, None, g, ids, res.weights, res.losses, res.num_samples, A.Hyperparameters(),
                                 replace(A.PROJECT_DEFAULT, **opts), g * 0.1)
        torch.testing.assert_close(new, want.weights, rtol=0, atol=1e-6)
        assert info.qualified == want.qualified.tolist()
        assert ledger.close_round()["uplink_bytes"] == want.uplink_bytes


# ----- end to end: a short authors_code run ------------------------------------------------------------

def _authors_run_config(rounds: int = 3) -> SimConfig:
    """Their experiments' local training (Adam, per-batch mean loss), shortened: 2 epochs, batch 10."""
    return SimConfig(dataset="digits", model="mlp", clients=6, rounds=rounds, batch_size=10, local_epochs=2,
                     optimizer="adam", lr=0.001, loss_report="all_batches", seed=1,
                     strategy=StrategyConfig(name="qsfl", variant="authors_code"))


def test_authors_code_simulation_bills_every_client_and_pretrains_once():
    from qsfl.comm import meta_message, sparse_message
    from qsfl.sim import Simulation

    cfg = _authors_run_config()
    sim = Simulation(cfg)
    h = sim.run()
    df = h.df
    n, c = sim.n_params, cfg.clients
    length = A.authors_segment_length(n, 6)              # 9610 / 6 = 1601.67 -> 1602: the last segment is cut
    sizes = np.diff(A.layout_bounds(n, 6, "authors"))
    assert sizes.tolist() == [length] * 5 + [n - 5 * length]
    meta = meta_message().total * c

    def round_bytes(t):     # every client uploads round(0.4 * size) entries of segment (t + id + 1) % 6
        return meta + sum(sparse_message(round(0.4 * int(sizes[(t + i + 1) % 6])), int(sizes[(t + i + 1) % 6]))
                          .total for i in range(c))
    pretraining = meta + c * sparse_message(n, n).total
    assert df.uplink_bytes.tolist() == [pretraining + round_bytes(0), round_bytes(1), round_bytes(2)]
    assert (df.n_qualified < c).all() and np.isfinite(df.test_accuracy).all()


def test_authors_code_simulation_paused_and_continued_is_the_same_run():
    from qsfl.sim import Simulation

    cfg = _authors_run_config()
    whole = Simulation(cfg).run()
    first = Simulation(cfg)
    first.run(until=1)
    resumed = Simulation.from_state(cfg, first.state()).run()
    cols = ["test_accuracy", "train_loss", "n_qualified", "uplink_bytes"]
    assert resumed.df[cols].equals(whole.df[cols])


def test_authors_experiment_training_is_a_valid_simconfig():
    cfg = SimConfig(**A.AUTHORS_EXPERIMENT_TRAINING, strategy=StrategyConfig(name="qsfl", variant="authors_code"))
    assert (cfg.optimizer, cfg.local_epochs, cfg.batch_size, cfg.loss_report) == ("adam", 10, 2, "all_batches")


def test_authors_code_in_simulate_many_equals_its_own_simulate():
    from qsfl.sim import simulate, simulate_many

    authors = _authors_run_config()
    configs = [authors, authors.replace(strategy=StrategyConfig(name="qsfl")),
               authors.replace(strategy=StrategyConfig(name="qsfl", variant="authors_code", base="global"))]
    for many, cfg in zip(simulate_many(configs), configs):
        alone = simulate(cfg).df
        assert many.df.uplink_bytes.tolist() == alone.uplink_bytes.tolist()
        assert many.df.n_qualified.tolist() == alone.n_qualified.tolist()
        np.testing.assert_allclose(many.df.test_accuracy, alone.test_accuracy, atol=1e-5)


def test_simulation_key_resolves_the_variant_and_never_merges_authors_options():
    from tuning.simkey import simulation_key

    def key(**strategy):
        return simulation_key(SimConfig(strategy=StrategyConfig(name="qsfl", **strategy)), n_params=9610)

    assert key() == key(selection="topk", relevance="update", aggregate="delta", variant="default")
    assert key(relevance="weights") != key()
    assert len({key(), key(variant="authors_code"), key(k_rounding="round"), key(tie_break="high")}) == 4
    # p = 0.4 and 0.4001 keep the same ceil counts (one simulation), not the same round() counts under authors_code
    assert key(p=0.4) == key(p=0.4001)
    assert key(variant="authors_code", p=0.4) != key(variant="authors_code", p=0.4001)
