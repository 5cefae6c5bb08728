"""Searchers: the DEAP GA / NSGA-II (``ga``), Optuna (``optuna``), random search (``random``), behind one
:class:`~tuning.search.base.Searcher` interface; rounds as a fidelity for any of them (``fidelity``).

Every module of this package that defines a :func:`~tuning.search.base.register`-ed searcher is found by
:func:`searchers`: adding a searcher is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from tuning.search.base import REGISTRY, Candidate, SearchContext, Searcher, register

_HELPERS = ("base", "fidelity")


def searchers() -> dict[str, type[Searcher]]:
    """The registered searchers by name (imports every module of this package once)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _HELPERS:
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(REGISTRY)


__all__ = ["REGISTRY", "Candidate", "SearchContext", "Searcher", "register", "searchers"]
