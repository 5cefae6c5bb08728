"""Vectorised engine: trains the whole cohort at once on stacked parameters, equal to the sequential loop.

Every client's weights are one row of a ``(C, n)`` matrix. Each of the cohort's minibatch steps is one
vectorised computation for all clients together; the SGD update (momentum, weight decay: exactly
torch.optim.SGD's formulas) is then a handful of element-wise ops on the whole matrix.

Clients of different sizes: the cohort runs ``max_i steps_i`` steps; a sample slot of a partial last
batch has weight 0 (its loss is the mean over the batch's real samples), and a client that has run all
its own steps keeps its weights and momentum unchanged (``torch.where``). The minibatch indices of every
step are gathered up front from :func:`~qsfl.engine.common.epoch_orders`, so the step loop does no
per-step Python work beyond the vectorised call, and the losses stay on the device until the end.

Three ways to compute one step's per-client gradients (``method``; ``auto`` picks the first that applies):

``linear``  Linear/ReLU chains (logreg, mlp): forward and backward written by hand as ``baddbmm``/``bmm``
            on the stacked weights. No autograd or functorch overhead, the fastest on small models.
``fold``    models whose parameters all live in ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` (cnn1d,
            femnist_cnn): a ``torch.fx`` copy of the model in which the clients are folded into the batch
            dimension, every parameter layer is replaced by its batched form (``baddbmm``; a grouped
            convolution with one group per client), and plain autograd computes all clients' gradients
            in one backward pass. Checked against ``vmap`` on random inputs when the engine is built.
``vmap``    anything else that is buffer-free: ``vmap(grad_and_value(functional_call))``.

The cohort is split into chunks whose estimated memory (parameters, momentum, gradients, gathered
minibatches and the activations of one step, measured by a dry run) stays under ``max_chunk_mb``.
"""

from __future__ import annotations

import logging
import math
import operator
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qsfl.engine.common import CohortResult, epoch_orders

log = logging.getLogger(__name__)

METHODS = ("auto", "linear", "fold", "vmap")
# What one client's step holds besides activations, in units of its parameter vector: the local weights,
# the momentum buffer, the flat gradient, the per-parameter gradients before they are flattened and the
# temporaries of the update.
_PARAM_COPIES = 6
# Safety factor on the dry run's activation bytes: the batched forms add transposed copies of conv inputs.
_ACTIVATION_FACTOR = 2.0


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be vectorised over clients (None when it can)."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return f"model has buffers ({', '.join(buffers[:3])}{', ...' if len(buffers) > 3 else ''}), " \
               f"e.g. BatchNorm running statistics, which torch.func cannot stack per client"
    params = list(model.parameters())
    if not params:
        return "model has no parameters"
    if any(p.dtype != torch.float32 for p in params):
        return "model parameters are not all float32"
    if len({p.device for p in params}) > 1:
        return "model parameters live on several devices"
    if any(not p.requires_grad for p in params):
        return "model has frozen parameters (requires_grad=False)"
    return None


# ---------------------------------------------------------------------------------------- batched layers

def _batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """nn.Linear with one weight per client; ``x`` has the clients folded into its first dim."""
    clients = weight.shape[0]
    xs = x.reshape(clients, -1, x.shape[-1])
    out = torch.bmm(xs, weight.transpose(1, 2)) if bias is None else \
        torch.baddbmm(bias.unsqueeze(1), xs, weight.transpose(1, 2))
    return out.reshape(*x.shape[:-1], weight.shape[1])


def _batched_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any,
                  dilation: Any, groups: int, dims: int) -> torch.Tensor:
    """nn.ConvNd with one weight per client, as one grouped convolution with a group per client."""
    clients, cb = weight.shape[0], x.shape[0]
    batch = cb // clients
    spatial = x.shape[2:]
    xs = x.reshape(clients, batch, *x.shape[1:]).transpose(0, 1).reshape(batch, clients * x.shape[1], *spatial)
    w = weight.reshape(clients * weight.shape[1], *weight.shape[2:])
    b = None if bias is None else bias.reshape(-1)
    conv = F.conv1d if dims == 1 else F.conv2d
    out = conv(xs, w, b, stride, padding, dilation, groups * clients)
    out_spatial = out.shape[2:]
    return out.reshape(batch, clients, -1, *out_spatial).transpose(0, 1).reshape(cb, -1, *out_spatial)


def _param_names(module: nn.Module, prefix: str) -> tuple[str, str | None]:
    weight = f"{prefix}.weight" if prefix else "weight"
    bias = (f"{prefix}.bias" if prefix else "bias") if module.bias is not None else None
    return weight, bias


def build_folded(model: nn.Module) -> tuple[torch.fx.GraphModule, list[str]] | None:
    """A torch.fx copy of ``model`` taking ``(x, *stacked_params)`` with clients folded into the batch dim.

    Returns (module, parameter names in argument order), or None when the model holds parameters
    outside nn.Linear/nn.Conv1d/nn.Conv2d or cannot be traced.
    """
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:   # noqa: BLE001 - any tracing failure means "use vmap"
        log.debug("fold: cannot trace %s: %s", type(model).__name__, exc)
        return None
    graph = gm.graph
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return None
    names = [name for name, _ in model.named_parameters()]
    slots: dict[str, torch.fx.Node] = {}
    with graph.inserting_after(inputs[0]):
        for name in reversed(names):   # each insert lands right after the input: reverse keeps the order
            slots[name] = graph.placeholder("p_" + name.replace(".", "_"))
    used: set[str] = set()
    for node in list(graph.nodes):
        if node.op == "get_attr":
            return None   # the forward reads a parameter directly: leave it to vmap
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.Linear):
            weight, bias = _param_names(module, node.target)
            args = (node.args[0], slots[weight], slots[bias] if bias else None)
            fn: Callable = _batched_linear
        elif type(module) in (nn.Conv1d, nn.Conv2d) and module.padding_mode == "zeros":
            weight, bias = _param_names(module, node.target)
            args = (node.args[0], slots[weight], slots[bias] if bias else None, module.stride, module.padding,
                    module.dilation, module.groups, 1 if isinstance(module, nn.Conv1d) else 2)
            fn = _batched_conv
        elif next(module.parameters(), None) is None:
            continue   # parameter-free module: runs on the folded batch as it is
        else:
            return None
        if len(node.args) != 1 or node.kwargs:
            return None
        used.update(n for n in (weight, bias) if n)
        with graph.inserting_before(node):
            new = graph.call_function(fn, args)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    if used != set(names):
        return None
    _relu_modules_to_functions(gm)
    graph.lint()
    gm.recompile()
    by_slot = {"p_" + name.replace(".", "_"): name for name in names}
    return gm, [by_slot[n.target] for n in list(graph.nodes)[1:] if n.op == "placeholder"]


def linear_chain_params(gm: torch.fx.GraphModule) -> list[str] | None:
    """Parameter names [w0, b0, w1, b1, ...] in forward order when ``gm`` (from build_folded) is an
    input -> [flatten(1)] -> linear (-> relu -> linear)* chain with biases, else None."""
    if not _is_linear_chain(gm.graph):
        return None
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is _batched_linear:
            if node.args[2] is None:
                return None
            out += [node.args[1].target, node.args[2].target]
    return out


_RELUS = {torch.relu, F.relu, torch.nn.functional.relu}


def _is_linear_chain(graph: torch.fx.Graph) -> bool:
    """True when the graph is input -> [flatten(1)] -> linear (-> relu -> linear)* -> output."""
    nodes = [n for n in graph.nodes if n.op != "placeholder"]
    prev: Any = next(n for n in graph.nodes if n.op == "placeholder")
    expect_linear, seen_linear = True, False
    for i, node in enumerate(nodes):
        if node.op == "output":
            return seen_linear and not expect_linear and node.args[0] is prev
        if node.args[0] is not prev:
            return False
        if node.target is _batched_linear:
            if not expect_linear:
                return False
            expect_linear, seen_linear = False, True
        elif _is_relu(node):
            if expect_linear:
                return False
            expect_linear = True
        elif i == 0 and _is_flatten1(node):
            pass
        else:
            return False
        prev = node
    return False


def _is_relu(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _RELUS and not node.kwargs
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False   # ReLU modules are parameter-free call_module nodes; handled by the caller


def _is_flatten1(node: torch.fx.Node) -> bool:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return ((node.op == "call_method" and node.target == "flatten") or
            (node.op == "call_function" and node.target is torch.flatten)) and start == 1 and len(node.args) <= 2


def _relu_modules_to_functions(gm: torch.fx.GraphModule) -> None:
    """Replace nn.ReLU call_module nodes by torch.relu so the chain check sees one form."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.ReLU:
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(torch.relu, node.args)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    gm.recompile()


# --------------------------------------------------------------------------------- per-step gradients

class _StepFn:
    """Per-client gradients and mean losses of one minibatch step for stacked parameters."""

    def __call__(self, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 sw: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(per-parameter gradients (C, *shape), per-client losses (C,)); ``sw`` (C, B) sample weights."""
        raise NotImplementedError


class _LinearStep(_StepFn):
    """Hand-written forward/backward of a Linear/ReLU chain with baddbmm/bmm."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers

    def __call__(self, params, x, y, sw):
        clients, batch = sw.shape
        h = x.reshape(clients, batch, -1)
        acts = [h]
        for layer in range(self.num_layers):
            w, b = params[2 * layer], params[2 * layer + 1]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if layer < self.num_layers - 1:
                h = h.relu_()
                acts.append(h)
        logp = torch.log_softmax(h, dim=-1)
        yb = y.reshape(clients, batch, 1)
        losses = -(logp.gather(2, yb).squeeze(2) * sw).sum(1)
        # d(sum_b sw_b * CE_b)/dlogits = sw_b * (softmax - onehot)
        gz = logp.exp_()
        gz.scatter_add_(2, yb, torch.full_like(yb, -1, dtype=gz.dtype))
        gz.mul_(sw.unsqueeze(2))
        grads: list[torch.Tensor] = [None] * len(params)   # type: ignore[list-item]
        for layer in range(self.num_layers - 1, -1, -1):
            a = acts[layer]
            grads[2 * layer] = torch.bmm(gz.transpose(1, 2), a)
            grads[2 * layer + 1] = gz.sum(1)
            if layer > 0:
                gz = torch.bmm(gz, params[2 * layer]).mul_(a > 0)
        return grads, losses


class _FoldStep(_StepFn):
    """Batched fx forward on the folded batch, one autograd backward for all clients."""

    def __init__(self, folded: torch.fx.GraphModule) -> None:
        self.folded = folded

    def __call__(self, params, x, y, sw):
        params = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
        with torch.enable_grad():
            logits = self.folded(x, *params)
            ce = F.cross_entropy(logits, y, reduction="none").view_as(sw)
            losses = (ce * sw).sum(1)
            grads = torch.autograd.grad(losses.sum(), params)
        return list(grads), losses.detach()


class _VmapStep(_StepFn):
    """vmap(grad_and_value(functional_call)) over the clients."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        from torch.func import functional_call, grad_and_value, vmap

        def loss(params: tuple[torch.Tensor, ...], xb: torch.Tensor, yb: torch.Tensor, w: torch.Tensor):
            logits = functional_call(model, dict(zip(names, params)), (xb,))
            return (F.cross_entropy(logits, yb, reduction="none") * w).sum()

        self.fn = vmap(grad_and_value(loss))

    def __call__(self, params, x, y, sw):
        clients, batch = sw.shape
        grads, losses = self.fn(tuple(params), x.reshape(clients, batch, *x.shape[1:]),
                                y.reshape(clients, batch), sw)
        return list(grads), losses


# ------------------------------------------------------------------------------------------ the engine

class BatchedEngine:
    """Trains a whole cohort with stacked parameters; same contract and results as SequentialEngine."""

    name = "batched"

    def __init__(self, model: nn.Module, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                 epochs: int, batch_size: int, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 seed: int = 0, max_chunk_mb: float = 1024.0, method: str = "auto") -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"batched engine cannot vectorise {type(model).__name__}: {reason}")
        if method not in METHODS:
            raise ValueError(f"method: unknown value {method!r}; valid: {', '.join(METHODS)}")
        self.model = model
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.momentum, self.weight_decay, self.seed = float(momentum), float(weight_decay), int(seed)
        self.max_chunk_mb = float(max_chunk_mb)
        self.device = next(model.parameters()).device
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in model.named_parameters()]
        self.numels = [p.numel() for p in model.parameters()]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).astype(np.int64)
        self.n_params = int(self.offsets[-1])
        self.sizes = np.asarray([len(y) for _, y in client_data], dtype=np.int64)
        if np.any(self.sizes <= 0):
            raise ValueError(f"client(s) {np.flatnonzero(self.sizes <= 0)[:5].tolist()} have no samples")
        # One copy of all clients' data, so a step gathers every client's minibatch with one index op.
        self.x_all = torch.cat([x.to(self.device) for x, _ in client_data])
        self.y_all = torch.cat([y.to(self.device) for _, y in client_data])
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.method, self.step_fn, self.order = self._pick_method(method)
        self._per_client_bytes: float | None = None

    # ----- method selection -------------------------------------------------------------------------
    def _pick_method(self, method: str) -> tuple[str, _StepFn, list[int]]:
        folded = build_folded(self.model) if method in ("auto", "linear", "fold") else None
        if folded is not None:
            gm, names = folded
            slot_names = {"p_" + n.replace(".", "_"): n for n in self.names}
            chain = linear_chain_params(gm)
            if chain is not None and method in ("auto", "linear"):
                order = [self.names.index(slot_names[s]) for s in chain]
                step: _StepFn = _LinearStep(len(order) // 2)
                if self._check(step, order):
                    return "linear", step, order
            if method == "linear":
                raise ValueError(f"method 'linear' needs a Linear/ReLU chain; {type(self.model).__name__} is not")
            order = [self.names.index(n) for n in names]
            step = _FoldStep(gm)
            if method in ("auto", "fold") and self._check(step, order):
                return "fold", step, order
        if method in ("linear", "fold"):
            raise ValueError(f"method {method!r} does not apply to {type(self.model).__name__}")
        return "vmap", _VmapStep(self.model, self.names), list(range(len(self.names)))

    def _check(self, step: _StepFn, order: list[int]) -> bool:
        """Does ``step`` give vmap's gradients on random stacked weights (clients=3, batch=4)?"""
        gen = torch.Generator(device="cpu").manual_seed(1234)
        clients, batch = 3, 4
        idx = torch.randint(0, len(self.y_all), (clients * batch,), generator=gen).to(self.device)
        x, y = self.x_all[idx], self.y_all[idx]
        sw = torch.rand(clients, batch, generator=gen).to(self.device)
        sw[0, -1] = 0.0
        params = [(p.detach().unsqueeze(0) * (1 + 0.1 * torch.randn(clients, *p.shape, generator=gen)
                                              .to(self.device))).contiguous() for p in self.model.parameters()]
        try:
            got_g, got_l = step([params[i] for i in order], x, y, sw)
        except Exception as exc:   # noqa: BLE001 - a failing fast path means "use vmap"
            log.debug("%s fails on %s: %s", type(step).__name__, type(self.model).__name__, exc)
            return False
        want_g, want_l = _VmapStep(self.model, self.names)(params, x, y, sw)
        want_g = [want_g[i] for i in order]
        ok = torch.allclose(got_l, want_l, rtol=1e-4, atol=1e-5) and all(
            g.shape == w.shape and torch.allclose(g, w, rtol=1e-3, atol=1e-5) for g, w in zip(got_g, want_g))
        if not ok:
            log.warning("batched %s path disagrees with vmap on %s; using vmap",
                        type(step).__name__, type(self.model).__name__)
        return ok

    # ----- memory -----------------------------------------------------------------------------------
    def per_client_bytes(self, steps: int) -> float:
        """Estimated bytes one client adds to a chunk that runs ``steps`` minibatch steps."""
        if self._per_client_bytes is None:
            self._per_client_bytes = _ACTIVATION_FACTOR * _dry_run_bytes(self.model, self.x_all, self.y_all,
                                                                         self.batch_size)
        sample_bytes = self.x_all[:1].numel() * self.x_all.element_size() + 8 + 8 + 4
        return (_PARAM_COPIES * 4 * self.n_params + self._per_client_bytes
                + steps * self.batch_size * sample_bytes)

    def chunk_size(self, steps: int) -> int:
        """Clients per chunk so that one chunk stays under ``max_chunk_mb``."""
        return max(1, int(self.max_chunk_mb * 2**20 // self.per_client_bytes(steps)))

    # ----- training ---------------------------------------------------------------------------------
    def train(self, global_weights: torch.Tensor, client_ids: Sequence[int], round_index: int) -> CohortResult:
        """Train all ``client_ids`` from ``global_weights``; return their weights, last-epoch losses, sizes."""
        ids = np.asarray([int(c) for c in client_ids], dtype=np.int64)
        sizes = self.sizes[ids]
        steps = self.epochs * -(-sizes // self.batch_size)
        w0 = global_weights.detach().to(self.device, torch.float32).reshape(-1)
        if len(ids) == 0:
            return CohortResult(torch.empty(0, self.n_params, device=self.device), np.zeros(0), sizes)
        chunk = self.chunk_size(int(steps.max()))
        weights, losses = [], []
        for lo in range(0, len(ids), chunk):
            w, loss = self._train_chunk(w0, ids[lo:lo + chunk], round_index)
            weights.append(w)
            losses.append(loss)
        out = weights[0] if len(weights) == 1 else torch.cat(weights)
        return CohortResult(out, np.concatenate(losses), sizes)

    def _plan(self, ids: np.ndarray, round_index: int):
        """The chunk's (S, C, B) global sample indices, (S, C) real-sample counts and loss weights."""
        batch, epochs = self.batch_size, self.epochs
        sizes = self.sizes[ids]
        per_epoch = -(-sizes // batch)
        total = int(epochs * per_epoch.max())
        clients = len(ids)
        idx = np.empty((total, clients, batch), dtype=np.int64)
        counts = np.zeros((total, clients), dtype=np.int64)
        last = np.zeros((total, clients), dtype=bool)
        for j, (cid, n, s) in enumerate(zip(ids.tolist(), sizes.tolist(), per_epoch.tolist())):
            order = epoch_orders(self.seed, round_index, cid, n, epochs) + self.starts[cid]
            width = s * batch
            if width != n:   # pad a partial last batch with the client's own samples (weight 0)
                order = np.concatenate([order, order[:, :width - n]], axis=1)
            idx[:epochs * s, j] = order.reshape(epochs * s, batch)
            idx[epochs * s:, j] = self.starts[cid]
            counts[:epochs * s, j] = batch
            counts[s - 1:epochs * s:s, j] = n - (s - 1) * batch
            last[(epochs - 1) * s:epochs * s, j] = True
        return idx, counts, last

    def _train_chunk(self, w0: torch.Tensor, ids: np.ndarray, round_index: int) -> tuple[torch.Tensor, np.ndarray]:
        dev, batch, clients = self.device, self.batch_size, len(ids)
        idx_np, counts_np, last_np = self._plan(ids, round_index)
        total = idx_np.shape[0]
        full = (counts_np > 0).all(axis=1).tolist()    # steps where every client trains
        idx = torch.from_numpy(idx_np).to(dev)
        counts = torch.from_numpy(counts_np).to(dev)
        mask = torch.arange(batch, device=dev) < counts.unsqueeze(2)
        sw = mask / counts.clamp(min=1).unsqueeze(2).to(torch.float32)          # (S, C, B)
        active = (counts > 0).unsqueeze(2)                                       # (S, C, 1)
        xs = self.x_all.index_select(0, idx.reshape(-1)).reshape(total, clients * batch, *self.x_all.shape[1:])
        ys = self.y_all.index_select(0, idx.reshape(-1)).reshape(total, clients * batch)

        w = w0.unsqueeze(0).repeat(clients, 1)                                   # (C, n) local weights
        g = torch.empty_like(w)
        buf = torch.empty_like(w) if self.momentum else None
        params = [w[:, int(self.offsets[i]):int(self.offsets[i + 1])].view(clients, *self.shapes[i])
                  for i in self.order]
        if self.method == "fold":   # autograd leaves that share storage with w (updated in place)
            params = [p.detach().requires_grad_() for p in params]
        grad_views = [g[:, int(self.offsets[i]):int(self.offsets[i + 1])] for i in self.order]
        lr, mom, wd = self.lr, self.momentum, self.weight_decay
        step_losses = torch.empty(total, clients, device=dev)
        for s in range(total):
            grads, loss = self.step_fn(params, xs[s], ys[s], sw[s])
            step_losses[s] = loss
            _flat_into(g, grads, grad_views, clients)
            if wd:
                g.add_(w, alpha=wd)
            if full[s]:
                if buf is not None:
                    if s == 0:
                        buf.copy_(g)
                    else:
                        buf.mul_(mom).add_(g)
                w.sub_(buf if buf is not None else g, alpha=lr)
            else:   # some clients are done: leave their weights and momentum untouched
                act = active[s]
                if buf is not None:
                    buf.copy_(torch.where(act, buf * mom + g, buf))
                w.copy_(torch.where(act, w - lr * (buf if buf is not None else g), w))
        last = torch.from_numpy(last_np).to(dev)
        weights_ = torch.where(last, counts, 0).to(torch.float64)
        loss_sum = torch.where(last, step_losses.to(torch.float64), 0.0).mul(weights_).sum(0)
        losses = (loss_sum / torch.as_tensor(self.sizes[ids], device=dev, dtype=torch.float64)).cpu().numpy()
        return w.detach(), losses


def _flat_into(g: torch.Tensor, grads: list[torch.Tensor], views: list[torch.Tensor], clients: int) -> None:
    """Copy per-parameter gradients into the flat (C, n) gradient matrix."""
    if len(grads) == 1:
        views[0].copy_(grads[0].reshape(clients, -1))
        return
    torch._foreach_copy_(views, [gr.reshape(clients, -1) for gr in grads])


def _dry_run_bytes(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, batch: int) -> float:
    """Bytes of every tensor created by one forward+backward of a single client's minibatch (upper bound)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    _Count.total += t.numel() * t.element_size()
            return out

    n = min(batch, len(y_all))
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    from torch.func import functional_call
    names = [name for name, _ in model.named_parameters()]
    with _Count():
        logits = functional_call(model, dict(zip(names, params)), (x_all[:n],))
        loss = F.cross_entropy(logits, y_all[:n])
        torch.autograd.grad(loss, params)
    return float(_Count.total) * batch / n
