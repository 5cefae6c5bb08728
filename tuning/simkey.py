"""The canonical simulation key of a config: two configs with the same key simulate identically, so a study
simulates them once (issue 13: e.g. two ``p`` values that keep the same number of entries in every segment).

The key is a hash of the SimConfig without its ``seed`` and ``rounds`` (the cache adds both) after rewriting the
strategy parameters to what the simulator actually uses:

* ``qsfl`` with QJ and top-K selection: K = ``qualified_count(C, k, alpha)`` replaces ``k`` and ``alpha``; when
  K = C every sampled client qualifies, so the scores (``beta``, ``relevance``) do not matter. Without QJ,
  ``beta``, ``k``, ``alpha``, ``selection`` and ``relevance`` are unused.
* ``qsfl`` with SCSS: ``p`` is replaced by the number of entries kept in each segment size
  (``ceil_fraction(p, size)`` over the sizes of ``segment_bounds(n, ns)``); without SCSS ``ns`` and ``p`` are
  unused.
* ``topk``: ``p`` becomes ``ceil_fraction(p, n)``; the QSFL-only fields are unused. ``fedavg`` uses none of them.

The rewrite uses the simulator's own functions (:mod:`qsfl.qualification`, :mod:`qsfl.segments`). It only applies
to strategy tables whose fields it knows (:data:`KNOWN_FIELDS`): any other field with a non-default value keeps
the raw table in the key, so an unknown option can never make two different simulations share a result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache
from typing import Any

from qsfl.config import SimConfig, strategy_fields
from qsfl.qualification import qualified_count
from qsfl.segments import ceil_fraction, segment_bounds

KNOWN_FIELDS = frozenset({"name", "use_qj", "beta", "k", "alpha", "selection", "relevance", "use_scss", "ns", "p",
                          "aggregate", "error_feedback", "index_encoding"})
QSFL_ONLY = ("use_qj", "beta", "k", "alpha", "selection", "relevance", "use_scss", "ns", "aggregate")


def _defaults() -> dict[str, Any]:
    return {name: f.default for name, f in strategy_fields().items()}


@lru_cache(maxsize=64)
def _model_size(model: str, model_options: str, dataset: str, dataset_options: str) -> int:
    from qsfl.models import build_model
    from qsfl.sim import get_dataset

    ds = get_dataset(dataset, json.loads(dataset_options))
    net = build_model(model, ds.input_shape, ds.num_classes, seed=0, **json.loads(model_options))
    return int(sum(p.numel() for p in net.parameters()))


def model_size(config: SimConfig) -> int:
    """The number of parameters of the config's model on its dataset (loads the dataset once per process)."""
    return _model_size(config.model, json.dumps(dict(config.model_options), sort_keys=True),
                       config.dataset, json.dumps(dict(config.dataset_options), sort_keys=True, default=str))


def canonical_strategy(config: SimConfig, n_params: int) -> dict[str, Any]:
    """The strategy table as the simulator uses it (see the module docstring)."""
    raw = {k: v for k, v in dataclasses.asdict(config.strategy).items() if v is not None}
    # selection, relevance and aggregate default to the variant's values (None = unset): use the resolved ones,
    # so unset and explicitly set project values share a key; a non-default variant or any other authors_code
    # option keeps the raw table (they are not in KNOWN_FIELDS)
    options = getattr(config.strategy, "options", None)    # QSFLConfig only
    if options is not None:
        raw.update({k: getattr(options, k) for k in ("selection", "relevance", "aggregate")})
    if raw.get("variant") == "default":
        raw.pop("variant")
    defaults = _defaults()
    if any(k not in KNOWN_FIELDS and v != defaults.get(k) for k, v in raw.items()):
        return raw
    s = dict(raw)
    if s["name"] == "fedavg":
        return {"name": "fedavg"}
    if s["name"] == "topk":
        for key in QSFL_ONLY:
            s.pop(key, None)
        s["p"] = ceil_fraction(float(s["p"]), n_params)
        return s
    if s["name"] != "qsfl":
        return raw
    if not s["use_qj"]:
        for key in ("beta", "k", "alpha", "selection", "relevance"):
            s.pop(key, None)
    elif s.get("selection", "topk") == "topk":   # unset: the default variant's top-K
        c = config.cohort_size
        s["k"] = qualified_count(c, s.get("k"), float(s["alpha"]))
        s.pop("alpha", None)
        if s["k"] >= c:
            s.pop("beta", None)
            s.pop("relevance", None)
    if not s["use_scss"]:
        s.pop("ns", None)
        s.pop("p", None)
    elif 1 <= int(s["ns"]) <= n_params:
        sizes = sorted(set(int(x) for x in segment_bounds(n_params, int(s["ns"]))[1:]
                           - segment_bounds(n_params, int(s["ns"]))[:-1]))
        s["p"] = [[size, ceil_fraction(float(s["p"]), size)] for size in sizes]
    return s


def canonical_config(config: SimConfig, n_params: int | None = None) -> dict[str, Any]:
    """The config dict that determines a simulation, without ``seed`` and ``rounds``."""
    n = model_size(config) if n_params is None else n_params
    data = config.to_dict()
    data.pop("seed", None)
    data.pop("rounds", None)
    data["strategy"] = canonical_strategy(config, n)
    return data


def simulation_key(config: SimConfig, n_params: int | None = None) -> str:
    """A short stable hash of :func:`canonical_config` (seed and rounds excluded)."""
    text = json.dumps(canonical_config(config, n_params), sort_keys=True, default=repr)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
