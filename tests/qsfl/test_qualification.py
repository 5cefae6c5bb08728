import numpy as np
import pytest
import torch

from qsfl import qualification as qj

# Hand-computed 5-client example.
LOSSES = np.array([1.0, 2.0, 0.5, 1.5, 1.0])
SAMPLES = np.array([10, 20, 5, 10, 20])
G = torch.tensor([1.0, -1.0, 1.0, -1.0])
UPDATES = torch.tensor([[2.0, -3.0, 1.0, -1.0],     # agrees on 4/4
                        [1.0, 1.0, -1.0, -1.0],     # 2/4
                        [1.0, -1.0, 1.0, 1.0],      # 3/4
                        [-1.0, 1.0, -1.0, -1.0],    # 1/4
                        [-1.0, -1.0, 1.0, 1.0]])    # 2/4
IDS = np.array([0, 1, 2, 3, 4])


def test_contribution_is_normalised_loss_per_sample():
    # c = [0.1, 0.1, 0.1, 0.15, 0.05], sum 0.5
    np.testing.assert_allclose(qj.contribution(LOSSES, SAMPLES), [0.2, 0.2, 0.2, 0.3, 0.1])
    np.testing.assert_allclose(qj.contribution(np.zeros(4), np.ones(4)), [0.25] * 4)


def test_relevance_sign_agreement():
    np.testing.assert_allclose(qj.relevance(UPDATES, G), [1.0, 0.5, 0.75, 0.25, 0.5])
    np.testing.assert_allclose(qj.relevance(UPDATES, None), [1.0] * 5)   # round 0


def test_relevance_counts_zero_signs_as_agreeing_only_with_zero():
    reference = torch.tensor([0.0, 1.0, -1.0, 0.0, 2.0])
    rows = torch.tensor([[0.0, 3.0, -2.0, 0.0, 1.0],     # 5/5
                         [1.0, 0.0, 0.0, -1.0, 0.0],     # 0/5
                         [-0.0, -1.0, -1.0, 5.0, 0.0]])  # -0.0 is zero: 2/5
    want = [1.0, 0.0, 0.4]
    np.testing.assert_allclose(qj.relevance(rows, reference), want)
    np.testing.assert_allclose(qj.relevance(rows.double(), reference.double()), want)   # the int8 path


def test_relevance_weights_variant():
    w = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    np.testing.assert_allclose(qj.relevance_weights(w, torch.tensor([1.0, -1.0])), [0.5, 0.0])


def test_scores_and_both_selection_modes():
    s = qj.score(qj.contribution(LOSSES, SAMPLES), qj.relevance(UPDATES, G), beta=0.5)
    np.testing.assert_allclose(s, [0.6, 0.35, 0.475, 0.275, 0.3])
    # alpha = 0.7: K = ceil(3.5) = 4 -> the four best scores
    assert qj.qualified_count(5, None, 0.7) == 4
    assert qj.select_top(s, IDS, 4).tolist() == [0, 1, 2, 4]
    # authors' percentile cut at 30: 0.3 + 0.2 * (0.35 - 0.3) = 0.31 -> only three clients pass
    assert qj.select_percentile(s, IDS, 0.7).tolist() == [0, 1, 2]
    # alpha = 0.3: K = 2; percentile 70 = 0.45
    assert qj.select_top(s, IDS, qj.qualified_count(5, None, 0.3)).tolist() == [0, 2]
    assert qj.select_percentile(s, IDS, 0.3).tolist() == [0, 2]


def test_beta_extremes():
    c, r = qj.contribution(LOSSES, SAMPLES), qj.relevance(UPDATES, G)
    np.testing.assert_allclose(qj.score(c, r, 1.0), c)
    np.testing.assert_allclose(qj.score(c, r, 0.0), r)


def test_ties_go_to_lower_client_id():
    assert qj.select_top(np.array([0.5, 0.5, 0.5]), np.array([7, 3, 5]), 2).tolist() == [3, 5]
    assert qj.select_top(np.array([0.1, 0.9, 0.9]), np.array([0, 9, 4]), 1).tolist() == [4]


@pytest.mark.parametrize("k, alpha, cohort, expected", [(3, 0.5, 10, 3), (12, 0.5, 10, 10),
                                                        (None, 0.7, 10, 7), (None, 0.01, 10, 1)])
def test_qualified_count(k, alpha, cohort, expected):
    assert qj.qualified_count(cohort, k, alpha) == expected
