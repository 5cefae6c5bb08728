import numpy as np
import pytest
import torch

from qsfl.engine import SequentialEngine, make_engine
from qsfl.engine.common import flat_weights, load_flat
from qsfl.models import build_model


def make_data(sizes, features=6, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, features, generator=gen), torch.randint(0, classes, (n,), generator=gen)) for n in sizes]


def test_load_flat_copies_instead_of_aliasing():
    model = build_model("mlp", (6,), 3, hidden=[4])
    flat = torch.arange(sum(p.numel() for p in model.parameters()), dtype=torch.float32)
    load_flat(model, flat)
    first = next(model.parameters())
    assert torch.equal(flat_weights(model), flat)
    with torch.no_grad():
        first.add_(100.0)
    assert torch.equal(flat, torch.arange(len(flat), dtype=torch.float32))   # untouched
    assert torch.equal(flat_weights(model)[:first.numel()], flat[:first.numel()] + 100.0)


@pytest.mark.parametrize("kind", ["sequential", "auto"])
def test_clients_train_independently_of_the_cohort(kind):
    """A client's result must not depend on who trained before it, and the global vector stays intact."""
    model = build_model("mlp", (6,), 3, hidden=[8], seed=1)
    data = make_data([13, 7, 10])
    engine = make_engine(kind, model, data, epochs=2, batch_size=4, lr=0.1, momentum=0.9, weight_decay=1e-3,
                         seed=0)
    w0 = flat_weights(model)
    keep = w0.clone()
    together = engine.train(w0, np.array([0, 1, 2]), round_index=3)
    assert torch.equal(w0, keep)
    for row, cid in enumerate([0, 1, 2]):
        alone = engine.train(w0, np.array([cid]), round_index=3)
        torch.testing.assert_close(together.weights[row], alone.weights[0], atol=1e-6, rtol=1e-6)
        assert together.losses[row] == pytest.approx(alone.losses[0], rel=1e-6)


def test_sequential_matches_a_hand_written_sgd_step():
    model = build_model("logreg", (6,), 3, seed=2)
    (x, y), = make_data([5])
    engine = SequentialEngine(model, [(x, y)], epochs=1, batch_size=5, lr=0.5, seed=0)
    w0 = flat_weights(model)
    out = engine.train(w0, np.array([0]), 0)
    ref = build_model("logreg", (6,), 3, seed=2)
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    expected = torch.cat([(p - 0.5 * g).detach().flatten() for p, g in zip(ref.parameters(), grads)])
    torch.testing.assert_close(out.weights[0], expected)
    assert out.losses[0] == pytest.approx(loss.item(), rel=1e-6)
