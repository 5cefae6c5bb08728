"""The local-training spec (qsfl.engine.local): optimizer steps equal torch.optim, FedProx, reported losses,
and the batched engine equal to the sequential reference for every option."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import qsfl
from qsfl.config import SimConfig, StrategyConfig
from qsfl.engine import LocalTraining, make_engine
from qsfl.engine import local as lt
from qsfl.engine.batched import BatchedEngine
from qsfl.engine.common import flat_weights
from qsfl.engine.sequential import SequentialEngine
from qsfl.errors import ConfigError
from qsfl.models import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def client_data(shape, classes, sizes, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=gen).to(device), torch.randint(0, classes, (n,), generator=gen).to(device))
            for n in sizes]


# ------------------------------------------------------------------------ the optimizer step itself

STEP_CASES = {
    "sgd": dict(lr=0.1),
    "sgd_momentum_wd": dict(lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": dict(optimizer="adam", lr=0.01),
    "adam_wd_betas": dict(optimizer="adam", lr=0.02, weight_decay=1e-2, adam_beta1=0.8, adam_beta2=0.99,
                          adam_eps=1e-6),
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step_equals_torch_optim_bit_for_bit(case, device):
    spec = LocalTraining(**STEP_CASES[case])
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(37, generator=gen).to(device)
    grads = [(torch.randn(37, generator=gen) * (0.1 + i)).to(device) for i in range(7)]
    grads[2][5] = 0.0
    param = torch.nn.Parameter(w0.clone())
    opt = lt.torch_optimizer(spec, [param])
    w = w0.clone()
    state = lt.init_state(spec, w)
    for g in grads:
        param.grad = g.clone()
        opt.step()
        lt.step_(spec, w, g.clone(), state)
        assert torch.equal(w, param.detach())
    assert state.steps == len(grads)


def test_first_adam_step_by_hand():
    """Adam's first bias-corrected step is lr * g / (|g| + eps) (m_hat = g, v_hat = g^2)."""
    spec = LocalTraining(optimizer="adam", lr=0.5, adam_eps=0.25)
    w = torch.tensor([1.0, -2.0, 3.0])
    g = torch.tensor([0.5, -0.25, 0.0])
    lt.step_(spec, w, g.clone(), lt.init_state(spec, w))
    want = torch.tensor([1.0 - 0.5 * 0.5 / 0.75, -2.0 + 0.5 * 0.25 / 0.5, 3.0])
    torch.testing.assert_close(w, want, atol=1e-7, rtol=0)


def test_sgd_momentum_by_hand():
    """buf = g on the first step, then m*buf + g (+ wd*w); w -= lr*buf."""
    spec = LocalTraining(lr=0.5, momentum=0.5, weight_decay=0.25)
    w = torch.tensor([2.0])
    state = lt.init_state(spec, w)
    lt.step_(spec, w, torch.tensor([1.0]), state)     # d = 1 + 0.5 = 1.5; buf = 1.5; w = 2 - 0.75 = 1.25
    assert w.item() == 1.25
    lt.step_(spec, w, torch.tensor([0.0]), state)     # d = 0.3125; buf = 0.75 + 0.3125 = 1.0625
    assert w.item() == pytest.approx(1.25 - 0.5 * 1.0625)


# ----------------------------------------------------------------------------------------- the loss

def test_client_loss_adds_the_proximal_term():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    start = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    ce = torch.nn.functional.cross_entropy(logits, y)
    total, data = lt.client_loss(logits, y, params, start, prox_mu=0.5)
    assert data.item() == pytest.approx(ce.item())
    assert total.item() == pytest.approx(ce.item() + 0.25 * (1 + 4 + 4))
    total0, data0 = lt.client_loss(logits, y, params, None, prox_mu=0.0)
    assert total0 is data0


def test_regularised_grad_is_the_gradient_of_the_proximal_term():
    gen = torch.Generator().manual_seed(2)
    w, w0 = torch.randn(9, generator=gen, requires_grad=True), torch.randn(9, generator=gen)
    spec = LocalTraining(prox_mu=0.3)
    penalty = lt.client_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), [w], [w0], 0.3)[0]
    (auto,) = torch.autograd.grad(penalty, [w])
    g = torch.zeros(9)
    lt.regularise_grad_(spec, g, w.detach(), w0)
    torch.testing.assert_close(g, auto, atol=1e-7, rtol=0)


def test_reported_losses_by_hand():
    """Two rows, 2 epochs, batch 2: sizes 5 (3 steps/epoch) and 2 (1 step/epoch, done after step 1)."""
    losses = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 99.0], [4.0, 99.0], [5.0, 99.0], [6.0, 99.0]])
    counts = np.array([[2, 2], [2, 2], [1, 0], [2, 0], [2, 0], [1, 0]])
    per_epoch = np.array([3, 1])
    last = lt.reported_losses(losses, counts, per_epoch, 2, "last_epoch")
    np.testing.assert_allclose(last, [(4 * 2 + 5 * 2 + 6 * 1) / 5, 20.0])
    every = lt.reported_losses(losses, counts, per_epoch, 2, "all_batches")
    np.testing.assert_allclose(every, [21 / 6, 15.0])
    with pytest.raises(ConfigError, match="loss_report"):
        lt.reported_losses(losses, counts, per_epoch, 2, "mean")


# ------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("field, value, match", [
    ("optimizer", "rmsprop", r"optimizer: unknown value 'rmsprop'; valid: sgd, adam"),
    ("adam_beta1", 1.0, r"adam_beta1: 1.0 is out of range; allowed \[0.0, 1.0\)"),
    ("adam_beta2", -0.1, r"adam_beta2: -0.1 is out of range; allowed \[0.0, 1.0\)"),
    ("adam_eps", 0.0, r"adam_eps: 0.0 is out of range; allowed \(0.0, inf\]"),
    ("prox_mu", -1.0, r"prox_mu: -1.0 is out of range; allowed \[0.0, inf\]"),
    ("prox_mu", "big", r"prox_mu: expected a number"),
    ("loss_report", "mean", r"loss_report: unknown value 'mean'; valid: last_epoch, all_batches"),
])
def test_bad_local_training_fields(field, value, match):
    with pytest.raises(ConfigError, match=match):
        SimConfig(**{field: value})
    with pytest.raises(ConfigError, match=match):
        LocalTraining(**{field: value})


def test_local_training_fields_round_trip():
    cfg = SimConfig().with_overrides({"optimizer": "adam", "adam_beta1": 0.8, "prox_mu": 0.01,
                                      "loss_report": "all_batches"})
    assert SimConfig.from_dict(cfg.to_dict()) == cfg
    spec = LocalTraining.from_config(cfg)
    assert (spec.optimizer, spec.adam_beta1, spec.prox_mu, spec.loss_report) == ("adam", 0.8, 0.01, "all_batches")
    assert (spec.epochs, spec.lr) == (cfg.local_epochs, cfg.lr)
    default = SimConfig()
    assert (default.optimizer, default.adam_beta1, default.adam_beta2, default.adam_eps, default.prox_mu,
            default.loss_report) == ("sgd", 0.9, 0.999, 1e-8, 0.0, "last_epoch")
    with pytest.raises(ValueError, match="either"):
        LocalTraining.build(spec, {"lr": 0.1})
    with pytest.raises(ConfigError, match="local training"):
        LocalTraining.build(None, {"learning_rate": 0.1})


# ------------------------------------------------------------- batched engine == sequential reference

SPECS = {
    "sgd_momentum_wd": dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": dict(optimizer="adam", lr=0.01),
    "adam_wd_betas": dict(optimizer="adam", lr=0.01, weight_decay=1e-3, adam_beta1=0.8, adam_beta2=0.99,
                          adam_eps=1e-6),
    "fedprox_sgd": dict(lr=0.05, momentum=0.5, prox_mu=0.1),
    "fedprox_adam": dict(optimizer="adam", lr=0.01, prox_mu=0.05),
    "all_batches": dict(lr=0.05, momentum=0.9, loss_report="all_batches"),
    "adam_all_batches": dict(optimizer="adam", lr=0.01, loss_report="all_batches"),
}
# (model, method): mlp by the hand-written linear path, a CNN by the fold path, and the mlp forced to vmap.
PATHS = {"linear": ("mlp", "auto", (64,), 10, [13, 7, 25, 10], 5, 1e-5),
         "fold": ("cnn1d", "auto", (40,), 10, [9, 4, 12], 4, 5e-5),
         "vmap": ("mlp", "vmap", (64,), 10, [13, 7, 25, 10], 5, 1e-5)}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(SPECS))
def test_batched_equals_sequential_for_every_option(case, path, device, tol):
    name, method, shape, classes, sizes, batch, atol = PATHS[path]
    model = build_model(name, shape, classes, seed=1).to(device)
    data = client_data(shape, classes, sizes, device=device)
    spec = LocalTraining(epochs=2, batch_size=batch, **SPECS[case])
    w0 = flat_weights(model)
    ids = list(range(len(sizes)))[::-1]
    want = SequentialEngine(model, data, local=spec, seed=3).train(w0, ids, 4)
    engine = BatchedEngine(model, data, local=spec, seed=3, method=method)
    assert engine.method == ("linear" if path == "linear" else path)
    got = engine.train(w0, ids, 4)
    torch.testing.assert_close(got.weights, want.weights, atol=tol(atol), rtol=0)
    np.testing.assert_allclose(got.losses, want.losses, atol=tol(1e-5), rtol=0)
    assert not torch.allclose(got.weights, w0.expand_as(got.weights), atol=1e-4)   # it did train


@pytest.mark.parametrize("kind", ["sequential", "batched"])
@pytest.mark.parametrize("base", [dict(lr=0.05, momentum=0.9, weight_decay=1e-3), dict(optimizer="adam", lr=0.01)])
def test_prox_mu_zero_is_plain_training_bit_for_bit(kind, base, device):
    model = build_model("mlp", (64,), 10, seed=4).to(device)
    data = client_data((64,), 10, [13, 7, 25], device=device)
    w0 = flat_weights(model)
    runs = [make_engine(kind, model, data, seed=0, local=LocalTraining(epochs=2, batch_size=5, **base, **extra))
            .train(w0, [0, 1, 2], 1) for extra in ({}, {"prox_mu": 0.0})]
    assert torch.equal(runs[0].weights, runs[1].weights)
    assert np.array_equal(runs[0].losses, runs[1].losses)


@pytest.mark.parametrize("kind", ["sequential", "batched"])
def test_prox_pulls_towards_the_start_and_reports_the_data_loss(kind, device):
    model = build_model("mlp", (64,), 10, seed=4).to(device)
    data = client_data((64,), 10, [30, 20], device=device)
    w0 = flat_weights(model)

    def run(mu, **kw):
        spec = LocalTraining(epochs=3, batch_size=5, lr=0.05, prox_mu=mu, **kw)
        return make_engine(kind, model, data, seed=0, local=spec).train(w0, [0, 1], 0)

    plain, prox = run(0.0), run(5.0)
    assert torch.all((prox.weights - w0).norm(dim=1) < 0.8 * (plain.weights - w0).norm(dim=1))
    # one step over the whole data: the reported loss is the start weights' cross-entropy, without the prox term
    x, y = data[0]
    ce = torch.nn.functional.cross_entropy(build_model("mlp", (64,), 10, seed=4).to(device)(x), y).item()
    one = make_engine(kind, model, data, seed=0, local=LocalTraining(epochs=1, batch_size=30, lr=0.05,
                                                                    prox_mu=100.0)).train(w0, [0, 1], 0)
    assert one.losses[0] == pytest.approx(ce, rel=1e-6)


@pytest.mark.parametrize("kind", ["sequential", "batched"])
def test_loss_report_modes_by_hand(kind, device):
    """lr tiny -> every minibatch loss is the start weights' loss on that minibatch; check both reports."""
    model = build_model("logreg", (6,), 3, seed=0).to(device)
    data = client_data((6,), 3, [7], device=device)
    w0 = flat_weights(model)
    from qsfl.engine.common import epoch_orders

    orders = epoch_orders(9, 2, 0, 7, 2)
    x, y = data[0]
    per_batch = [[torch.nn.functional.cross_entropy(model(x[o[s:s + 3].tolist()]), y[o[s:s + 3].tolist()]).item()
                  for s in range(0, 7, 3)] for o in orders]
    last_epoch = (per_batch[1][0] * 3 + per_batch[1][1] * 3 + per_batch[1][2]) / 7
    all_batches = float(np.mean(per_batch))
    for mode, want in (("last_epoch", last_epoch), ("all_batches", all_batches)):
        spec = LocalTraining(epochs=2, batch_size=3, lr=1e-9, loss_report=mode)
        got = make_engine(kind, model, data, seed=9, local=spec).train(w0, [0], 2)
        assert got.losses[0] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("case", ["adam_wd_betas", "fedprox_adam", "sgd_momentum_wd"])
def test_finished_client_keeps_weights_and_optimizer_state(case, device, tol):
    """A 2-sample client runs 2 steps while a 40-sample one runs 16: it must equal training alone."""
    model = build_model("mlp", (64,), 10, seed=0).to(device)
    data = client_data((64,), 10, [2, 40], device=device)
    spec = LocalTraining(epochs=2, batch_size=5, **SPECS[case])
    w0 = flat_weights(model)
    together = BatchedEngine(model, data, local=spec, seed=1).train(w0, [0, 1], 7)
    alone = BatchedEngine(model, data, local=spec, seed=1).train(w0, [0], 7)
    torch.testing.assert_close(together.weights[0], alone.weights[0], atol=tol(1e-6), rtol=0)
    want = SequentialEngine(model, data, local=spec, seed=1).train(w0, [0, 1], 7)
    torch.testing.assert_close(together.weights, want.weights, atol=tol(1e-5), rtol=0)
    np.testing.assert_allclose(together.losses, want.losses, atol=tol(1e-5), rtol=0)


def test_simulation_with_adam_fedprox_all_batches_is_the_same_on_both_engines(device, tol):
    cfg = SimConfig(dataset="digits", model="mlp", clients=8, client_fraction=0.75, rounds=3, batch_size=16,
                    local_epochs=2, lr=0.005, optimizer="adam", prox_mu=0.01, loss_report="all_batches", seed=3,
                    device=device.type,
                    partition="dirichlet", partition_options={"alpha": 0.5},
                    strategy=StrategyConfig(name="qsfl", k=4, ns=3, p=0.3))
    seq = qsfl.simulate(cfg.replace(engine="sequential")).df
    bat = qsfl.simulate(cfg.replace(engine="batched")).df
    exact = ["round", "n_sampled", "n_qualified", "sampled_clients", "qualified_clients", "uplink_bytes",
             "downlink_bytes"]
    pd.testing.assert_frame_equal(seq[exact], bat[exact], check_exact=True)
    for col in ("test_accuracy", "test_loss", "train_loss"):
        np.testing.assert_allclose(bat[col], seq[col], atol=tol(1e-5), rtol=0)
    assert bat["test_accuracy"].iloc[-1] > 0.5


@pytest.mark.parametrize("kind", ["sequential", "batched"])
def test_optimizer_state_starts_fresh_every_round(kind, device):
    """A client's round-1 result does not depend on its round 0: no momentum or Adam moments carry over."""
    model = build_model("mlp", (64,), 10, seed=2).to(device)
    data = client_data((64,), 10, [13, 7], device=device)
    w0 = flat_weights(model)
    for spec in (LocalTraining(epochs=2, batch_size=5, optimizer="adam", lr=0.01),
                 LocalTraining(epochs=2, batch_size=5, lr=0.05, momentum=0.9)):
        used = make_engine(kind, model, data, seed=0, local=spec)
        used.train(w0, [0, 1], 0)
        again = used.train(w0, [0, 1], 1)
        fresh = make_engine(kind, model, data, seed=0, local=spec).train(w0, [0, 1], 1)
        assert torch.equal(again.weights, fresh.weights)
        assert np.array_equal(again.losses, fresh.losses)
