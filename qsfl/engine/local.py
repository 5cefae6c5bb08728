"""One local-training spec for both engines: the loss, the optimizer step and the reported loss.

In the spirit of FedJAX's ``client_init``/``client_step``, everything a client does in one local step is a
plain function of explicit state, shared by the two engines:

* the loss: mean cross-entropy of the minibatch plus FedProx's proximal term
  ``prox_mu / 2 * ||w - w_start||^2`` (``w_start``: the weights this row started the round from);
  :func:`client_loss` (autograd, the sequential engine) and :func:`regularise_grad_` (its gradient, added by
  hand in the batched engine) are the two forms of it;
* the optimizer step: :func:`init_state` and :func:`step_` apply exactly ``torch.optim.SGD``'s formulas
  (momentum, dampening 0, weight decay as L2: ``d = g + wd*w``; ``buf = d`` on the first step, then
  ``buf = m*buf + d``; ``w -= lr*buf``) or ``torch.optim.Adam``'s (L2 weight decay, bias correction, eps
  added after the square root), op for op as torch's single-tensor implementations write them, on any
  tensor layout (the batched engine passes a whole cohort's flat buffers);
* the reported loss (:func:`reported_losses`): the mean loss over the last local epoch's samples
  (``last_epoch``, the design's default) or the mean of the per-batch losses over all local epochs
  (``all_batches``, what the QSFL authors' code reports). It is the data loss, without the proximal term.

The sequential engine is the reference: it trains with ``torch.optim`` itself (:func:`torch_optimizer`), so
the engine equivalence tests prove that the hand-written steps the batched engine runs equal torch's.
The state functions update their tensors in place (a cohort's buffers are large and reused every step);
all state is explicit, nothing is hidden in a module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qsfl.errors import ConfigError, check_choice, check_range

OPTIMIZERS = ("sgd", "adam")
LOSS_REPORTS = ("last_epoch", "all_batches")


def check_local_options(cfg: Any) -> None:
    """Validate the local-training fields of ``cfg`` (a SimConfig or a LocalTraining) beyond the basic ones.

    Fields: ``optimizer``, ``adam_beta1``, ``adam_beta2``, ``adam_eps``, ``prox_mu``, ``loss_report``.
    ``adam_*`` apply to Adam only and ``momentum`` to SGD only; both are kept (not an error) when they do
    not apply, so that a search space may hold both optimizers' parameters.
    """
    check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    check_range("adam_beta1", cfg.adam_beta1, 0.0, 1.0, hi_open=True)
    check_range("adam_beta2", cfg.adam_beta2, 0.0, 1.0, hi_open=True)
    # torch accepts eps = 0, but then an entry whose gradient was always 0 divides 0 by 0 (NaN)
    check_range("adam_eps", cfg.adam_eps, 0.0, None, lo_open=True)
    check_range("prox_mu", cfg.prox_mu, 0.0, None)
    check_choice("loss_report", cfg.loss_report, LOSS_REPORTS)


@dataclass(frozen=True)
class LocalTraining:
    """What every client does locally each round (validated; field names as in SimConfig, ``epochs`` =
    ``local_epochs``)."""

    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    prox_mu: float = 0.0
    loss_report: str = "last_epoch"

    def __post_init__(self) -> None:
        check_range("local_epochs", self.epochs, 1, None, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("lr", self.lr, 0.0, None, lo_open=True)
        check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, None)
        check_local_options(self)

    @classmethod
    def from_config(cls, cfg: Any) -> LocalTraining:
        """The local-training part of a SimConfig (or any object with its field names)."""
        return cls(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                   weight_decay=cfg.weight_decay, optimizer=cfg.optimizer, adam_beta1=cfg.adam_beta1,
                   adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps, prox_mu=cfg.prox_mu,
                   loss_report=cfg.loss_report)

    @classmethod
    def build(cls, local: LocalTraining | None, fields: dict[str, Any]) -> LocalTraining:
        """``local`` itself, or a spec from keyword ``fields`` (an engine takes either, not both)."""
        if local is None:
            try:
                return cls(**fields)
            except TypeError as exc:
                raise ConfigError(f"local training: {exc}") from None
        if fields:
            raise ValueError(f"give either local= or its fields, not both (got {sorted(fields)})")
        return local

    def state_copies(self) -> int:
        """Per-parameter buffers the optimizer keeps for a row (and its temporaries), for memory estimates."""
        if self.optimizer == "adam":
            return 4   # exp_avg, exp_avg_sq, and sqrt + denominator temporaries
        return 1 if self.momentum else 0


# ---------------------------------------------------------------------------------------- the loss

def client_loss(logits: torch.Tensor, y: torch.Tensor, params: Sequence[torch.Tensor],
                start: Sequence[torch.Tensor] | None, prox_mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to differentiate, data loss to report) of one minibatch: mean cross-entropy, plus
    ``prox_mu/2 * ||params - start||^2`` when ``prox_mu > 0`` (FedProx)."""
    data = torch.nn.functional.cross_entropy(logits, y)
    if not prox_mu:
        return data, data
    assert start is not None
    prox = sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
    return data + (prox_mu / 2) * prox, data


def regularise_grad_(spec: LocalTraining, g: torch.Tensor, w: torch.Tensor, w_start: torch.Tensor | None) -> None:
    """Add the proximal term's gradient ``prox_mu * (w - w_start)`` to the data-loss gradient ``g`` in place
    (the optimizer's weight decay is added by :func:`step_`, as torch.optim does)."""
    if spec.prox_mu:
        assert w_start is not None
        g.add_(w - w_start, alpha=spec.prox_mu)


# ----------------------------------------------------------------------------------- the optimizer

@dataclass
class OptState:
    """A client's (or a whole cohort's, on flat buffers) optimizer state."""

    steps: int = 0                               # steps taken (equal for every row still training)
    momentum: torch.Tensor | None = None         # SGD momentum buffer
    exp_avg: torch.Tensor | None = None          # Adam first moment
    exp_avg_sq: torch.Tensor | None = None       # Adam second moment

    def tensors(self) -> list[torch.Tensor]:
        """The state tensors, in a fixed order."""
        return [t for t in (self.momentum, self.exp_avg, self.exp_avg_sq) if t is not None]


def init_state(spec: LocalTraining, like: torch.Tensor,
               new: Callable[[str], torch.Tensor] | None = None) -> OptState:
    """A fresh optimizer state for weights shaped like ``like``; ``new(name)`` may supply the (reused,
    uninitialised) buffers. SGD's momentum buffer needs no initial value: the first step copies into it."""
    make = new if new is not None else (lambda name: torch.empty_like(like))
    if spec.optimizer == "adam":
        return OptState(exp_avg=make("exp_avg").zero_(), exp_avg_sq=make("exp_avg_sq").zero_())
    return OptState(momentum=make("momentum") if spec.momentum else None)


def step_(spec: LocalTraining, w: torch.Tensor, g: torch.Tensor, state: OptState) -> None:
    """One optimizer step on ``w`` with gradient ``g`` (both updated in place: ``g`` is consumed)."""
    if spec.weight_decay:
        g.add_(w, alpha=spec.weight_decay)
    if spec.optimizer == "adam":
        _adam_step_(spec, w, g, state)
    else:
        _sgd_step_(spec, w, g, state)


def _sgd_step_(spec: LocalTraining, w: torch.Tensor, g: torch.Tensor, state: OptState) -> None:
    # torch.optim.sgd._single_tensor_sgd (dampening 0, no nesterov, not maximize)
    update = g
    if state.momentum is not None:
        buf = state.momentum
        if state.steps == 0:
            buf.copy_(g)
        else:
            buf.mul_(spec.momentum).add_(g)
        update = buf
    w.add_(update, alpha=-spec.lr)
    state.steps += 1


def _adam_step_(spec: LocalTraining, w: torch.Tensor, g: torch.Tensor, state: OptState) -> None:
    # torch.optim.adam._single_tensor_adam (no amsgrad, not capturable/differentiable, L2 weight decay)
    assert state.exp_avg is not None and state.exp_avg_sq is not None
    state.steps += 1
    step = float(state.steps)
    beta1, beta2 = spec.adam_beta1, spec.adam_beta2
    state.exp_avg.lerp_(g, 1 - beta1)
    state.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = spec.lr / bias_correction1
    denom = (state.exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(spec.adam_eps)
    w.addcdiv_(state.exp_avg, denom, value=-step_size)


def torch_optimizer(spec: LocalTraining, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    """The torch.optim optimizer the reference engine trains with (single-tensor code path)."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=(spec.adam_beta1, spec.adam_beta2), eps=spec.adam_eps,
                                weight_decay=spec.weight_decay, foreach=False)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                           foreach=False)


# ------------------------------------------------------------------------------- the reported loss

def reported_losses(step_losses: np.ndarray, counts: np.ndarray, per_epoch: np.ndarray, epochs: int,
                    mode: str) -> np.ndarray:
    """Each row's reported loss from its per-step minibatch losses.

    ``step_losses`` (S, C): mean data loss of each step's minibatch; ``counts`` (S, C): its real samples
    (0 once the row has finished its own ``epochs * per_epoch[c]`` steps); ``per_epoch`` (C,): minibatches
    per epoch. ``last_epoch``: the mean over the last epoch's samples; ``all_batches``: the mean of the
    per-batch losses of all epochs (a partial last batch counts as one batch, as in the authors' code).
    """
    check_choice("loss_report", mode, LOSS_REPORTS)
    losses = np.asarray(step_losses, dtype=np.float64)
    counts = np.asarray(counts)
    per_epoch = np.asarray(per_epoch, dtype=np.int64)
    step = np.arange(losses.shape[0])[:, None]
    own = step < epochs * per_epoch[None, :]
    if mode == "last_epoch":
        chosen = own & (step >= (epochs - 1) * per_epoch[None, :])
        weight = np.where(chosen, counts, 0).astype(np.float64)
    else:
        chosen, weight = own, own.astype(np.float64)
    total = np.where(chosen, losses, 0.0) * weight
    return total.sum(0) / weight.sum(0)
