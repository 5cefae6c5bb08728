import numpy as np
import pytest
import torch

from qsfl.segments import (
    SegmentLayout,
    SparseSegment,
    ceil_fraction,
    encode_segment,
    kth_largest,
    segment_bounds,
    segment_id,
    top_k_rows,
    top_p_indices,
)


def test_segment_bounds_array_split_semantics():
    assert np.diff(segment_bounds(10, 3)).tolist() == [4, 3, 3]
    assert segment_bounds(10, 3).tolist() == [0, 4, 7, 10]
    for n, ns in [(10, 1), (10, 10), (110526, 6), (7, 4)]:
        b = segment_bounds(n, ns)
        sizes = np.diff(b)
        assert b[0] == 0 and b[-1] == n and len(sizes) == ns
        assert sizes.max() - sizes.min() <= 1
        assert sizes.tolist() == [len(a) for a in np.array_split(np.arange(n), ns)]
    with pytest.raises(ValueError):
        segment_bounds(5, 6)


def test_cyclic_segment_ids():
    assert [segment_id(t, 4, 3) for t in range(4)] == [1, 2, 0, 1]
    assert [segment_id(0, c, 6) for c in range(7)] == [0, 1, 2, 3, 4, 5, 0]
    # over NS consecutive rounds a client visits every segment once
    assert sorted(segment_id(t, 11, 5) for t in range(5)) == [0, 1, 2, 3, 4]


def test_ceil_fraction_is_immune_to_float_noise():
    assert 0.55 * 100 != 55  # the trap: naive ceil would give 56
    assert ceil_fraction(0.55, 100) == 55
    assert ceil_fraction(0.7, 10) == 7
    assert ceil_fraction(0.4, 3) == 2
    assert ceil_fraction(0.01, 5) == 1
    assert ceil_fraction(1.0, 9) == 9


def test_top_p_count_and_ties():
    v = torch.tensor([0.1, -5.0, 3.0, 3.0, -3.0, 0.2])
    assert top_p_indices(v, 0.5).tolist() == [1, 2, 3]       # the 3.0 tie goes to the lower indices
    assert top_p_indices(v, 0.01).tolist() == [1]
    assert top_p_indices(v, 1.0).tolist() == list(range(6))
    assert top_p_indices(torch.zeros(4), 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("encoding", ["int32", "bitmap", "auto"])
@pytest.mark.parametrize("size, p", [(50, 0.1), (50, 0.5), (17, 0.99), (8, 1.0)])
def test_encode_decode_round_trip_and_exact_bytes(encoding, size, p):
    gen = torch.Generator().manual_seed(size)
    values = torch.randn(size, generator=gen)
    seg = encode_segment(client_id=7, segment=2, values=values, p=p, encoding=encoding)
    wire = seg.to_bytes()
    assert len(wire) == seg.message_size.total
    back = SparseSegment.from_bytes(wire, size, encoding)
    assert back.client_id == 7 and back.segment == 2
    np.testing.assert_array_equal(back.decode(), seg.decode())
    dense = values.numpy().copy()
    kept = np.zeros(size, dtype=bool)
    kept[seg.indices] = True
    dense[~kept] = 0
    np.testing.assert_array_equal(seg.decode(), dense)


def test_top_p_equals_a_stable_sort_reference_with_many_ties():
    gen = torch.Generator().manual_seed(0)
    for _trial in range(200):
        n = int(torch.randint(1, 60, (1,), generator=gen))
        values = torch.randint(-3, 4, (n,), generator=gen).float()   # lots of equal magnitudes
        p = float(torch.rand(1, generator=gen)) * 0.99 + 0.01
        k = ceil_fraction(p, n)
        ref = torch.sort(torch.sort(values.abs(), descending=True, stable=True).indices[:k]).values
        assert top_p_indices(values, p).tolist() == ref.tolist()


def test_top_k_rows_hand_computed():
    values = torch.tensor([[3.0, -1.0, 0.5, 2.0, -2.0, 9.0],
                           [1.0, 1.0, 1.0, 1.0, 5.0, 0.0],
                           [0.0, 0.0, 0.0, 4.0, 4.0, 4.0]])
    # row 0: 2 of [0, 6); row 1: 2 of [1, 4) (all ties: lowest indices); row 2: whole segment [3, 6)
    mask = top_k_rows(values, np.array([0, 1, 3]), np.array([6, 4, 6]), np.array([2, 2, 3]))
    assert mask.tolist() == [[True, False, False, False, False, True],
                             [False, True, True, False, False, False],
                             [False, False, False, True, True, True]]


def test_top_k_rows_equals_top_p_indices_row_by_row_with_many_ties():
    gen = torch.Generator().manual_seed(1)
    for _trial in range(50):
        rows, n = int(torch.randint(1, 8, (1,), generator=gen)), int(torch.randint(1, 40, (1,), generator=gen))
        values = torch.randint(-3, 4, (rows, n), generator=gen).float()
        lo = torch.randint(0, n, (rows,), generator=gen).numpy()
        hi = np.array([int(torch.randint(int(a) + 1, n + 1, (1,), generator=gen)) for a in lo])
        p = (torch.rand(rows, generator=gen) * 0.99 + 0.01).tolist()
        k = np.array([ceil_fraction(q, int(b - a)) for q, a, b in zip(p, lo, hi)])
        mask = top_k_rows(values, lo, hi, k)
        for r in range(rows):
            expected = top_p_indices(values[r, lo[r]:hi[r]], p[r]) + int(lo[r])
            assert torch.nonzero(mask[r]).squeeze(1).tolist() == expected.tolist()


def test_kth_largest_hand_computed_and_equal_to_torch_topk_with_nan_and_ties():
    rows = torch.tensor([[3.0, 1.0, 2.0, 2.0], [0.0, -1.0, 5.0, 4.0]])
    assert kth_largest(rows, 2).tolist() == [[2.0], [4.0]]
    assert kth_largest(rows, 4).tolist() == [[1.0], [-1.0]]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (30, 101), generator=gen).to(torch.float32)   # many ties
    x[3, 5] = float("nan")                                                   # NaN counts as the largest
    for k in (1, 2, 50, 100):
        topk = torch.topk(x, k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
        got = kth_largest(x, k)
        assert torch.equal(got[4:], topk[4:]) and torch.equal(got[:3], topk[:3])
        assert (torch.isnan(got[3]) and torch.isnan(topk[3])) or torch.equal(got[3], topk[3])
        assert torch.equal(kth_largest(x.double(), k)[:3], topk[:3].double())


def test_top_k_rows_rejects_a_count_outside_the_segment():
    with pytest.raises(ValueError, match="1 <= k <= hi - lo"):
        top_k_rows(torch.zeros(1, 4), np.array([0]), np.array([2]), np.array([3]))


def test_segment_slots_hand_computed():
    """n=10, NS=3: segments [0,4) [4,7) [7,10), width 4; the short segments' last slot is padding."""
    layout = SegmentLayout(10, 3)
    x = torch.arange(20, dtype=torch.float32).view(2, 10)          # row 1 holds 10..19
    rows, segments = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 2, 2])
    slots = layout.segment_slots(x, rows, segments)
    real = [[0, 1, 2, 3], [14, 15, 16], [17, 18, 19], [7, 8, 9]]
    for r, want in enumerate(real):
        assert slots[r, :len(want)].tolist() == want
    masked = layout.mask_padding(slots.clone(), segments, -1.0)
    assert masked[:, 3].tolist() == [3.0, -1.0, -1.0, -1.0]        # segment 0 is full, the others padded
    assert torch.equal(masked[:, :3], slots[:, :3])


@pytest.mark.parametrize("n, ns", [(9610, 6), (10, 5), (11, 4), (7, 7), (7, 1), (101, 9)])
def test_segment_slots_equal_the_column_gather(n, ns):
    layout = SegmentLayout(n, ns)
    x = torch.randn(4, n, generator=torch.Generator().manual_seed(n + ns))
    rows = torch.tensor([r % 4 for r in range(2 * ns)])
    segments = torch.tensor([s % ns for s in range(2 * ns)])
    inside = layout.inside[segments]
    got = layout.segment_slots(x, rows, segments)
    assert torch.equal(got[inside], x[rows.unsqueeze(1), layout.cols[segments]][inside])
    assert torch.equal(layout.mask_padding(got.clone(), segments, -7.0) == -7.0, ~inside)
