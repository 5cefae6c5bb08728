"""The searcher interface of every study: ``ask`` points, ``tell`` their evaluations, ``state`` / ``restore``
for the checkpoint (in the style of Optuna's ``BaseSampler`` and its ask/tell interface).

One loop drives every searcher (:func:`tuning.study.run_study`): ask -> evaluate -> tell -> checkpoint. A searcher
never evaluates anything itself; it only proposes points and learns from their evaluations. To add one, write a
module in ``tuning/search/`` with a :class:`Searcher` subclass decorated with :func:`register` (its ``[section]``
of the study spec is parsed by its ``parse_settings``): the spec, the CLI and the loop find it by its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from qsfl.config import SimConfig
from tuning.objective import Evaluation, Objective
from tuning.space import SearchSpace


@dataclass
class Candidate:
    """A point proposed by a searcher: the params it asks for, and where its rows go in the trials table.

    ``trial`` is the searcher's own trial number (Optuna) or None (the loop numbers the evaluations);
    ``generation`` is the GA generation (-1 for searchers without generations); ``token`` is the searcher's
    private handle (picklable: it may be saved in the checkpoint with a batch that is being evaluated);
    ``start``: a start point (with ``[fidelity]`` it is always promoted, so it is evaluated at full rounds).
    """

    params: dict[str, Any]
    generation: int = -1
    trial: int | None = None
    token: Any = None
    start: bool = False


@dataclass(frozen=True)
class SearchContext:
    """What a searcher may know about the study (built by the loop from the spec)."""

    name: str
    space: SearchSpace
    objective: Objective
    base: SimConfig
    seed: int                                   # the study's search_seed
    fingerprint: str = ""
    out_dir: Path | None = None
    storage: str | None = None                  # Optuna: --storage URL (None: OUT/study.db, owned)
    workers: int = 1
    start_points: tuple[Mapping[str, Any], ...] = ()   # evaluated first (the authors' defaults, spec's starts)
    fidelity: bool = False                      # successive halving over rounds is on (GA: rung-aware selection)
    batch: int = 1                              # points per ask for searchers without a natural batch


class Searcher(ABC):
    """Proposes points and learns from their evaluations; see the module docstring.

    Contract: the loop calls ``ask`` and then ``tell`` with exactly the candidates that ``ask`` returned (each
    evaluation at the fidelity where it stopped: ``Evaluation.rounds`` and ``Evaluation.rung``) before it asks
    again. ``state()`` is pickled into the checkpoint after every ``ask`` and every ``tell``; a searcher restored
    with ``restore(state)`` continues exactly where that state was taken.
    """

    name: ClassVar[str]
    section: ClassVar[str]               # its table in the study spec ([ga], [optuna], [random])
    settings_type: ClassVar[type]
    resumable_keys: ClassVar[tuple[str, ...]] = ()   # keys of its section that may change on --resume
    owns_trials: ClassVar[bool] = False  # True: the trials rows live in the searcher's storage (Optuna)

    def __init__(self, settings: Any, ctx: SearchContext) -> None:
        self.settings = settings
        self.ctx = ctx

    @classmethod
    @abstractmethod
    def parse_settings(cls, table: Mapping[str, Any], *, dim: int, n_objectives: int, rounds: int) -> Any:
        """Validate the searcher's ``[section]`` table (ConfigError naming the key) into its settings."""

    @abstractmethod
    def ask(self, n: int) -> list[Candidate]:
        """Up to ``n`` new points ([] when the budget is used up); the GA returns a whole generation."""

    @abstractmethod
    def tell(self, candidates: Sequence[Candidate], evaluations: Sequence[Evaluation]) -> None:
        """Learn the evaluations of the candidates of the last ``ask`` (same order)."""

    @abstractmethod
    def state(self) -> Any:
        """Everything needed to continue (picklable; trusted-local checkpoint)."""

    @abstractmethod
    def restore(self, state: Any) -> None:
        """Continue from a ``state()``."""

    @abstractmethod
    def finished(self) -> bool:
        """Is the budget used up?"""

    def start(self, points: Sequence[Mapping[str, Any]]) -> None:
        """A fresh study: evaluate these points first (like Optuna's ``enqueue_trial``)."""
        return None

    def batch_size(self) -> int:
        """How many points one ``ask`` should return when the loop has no other reason to choose."""
        return 1

    def report_rung(self, candidate: Candidate, evaluation: Evaluation) -> None:
        """[fidelity]: the candidate's evaluation at a rung below the last (before the promotion decision)."""
        return None

    def expected_evaluations(self) -> int | None:
        """The number of points the whole budget asks for (progress bars), None when unknown."""
        return None

    def progress(self) -> tuple[int, int | None]:
        """(steps done, steps in the budget): generations for the GA, trials for the others."""
        return 0, None

    def exact_evaluations(self) -> bool:
        """Is :meth:`expected_evaluations` exact (every asked point is one evaluation) rather than a ceiling?"""
        return True

    # ----- hooks for searchers that keep the trials themselves (Optuna) -----------------------------------
    def record(self, candidate: Candidate, rows: Sequence[Mapping[str, Any]]) -> None:
        """The candidate's trials rows (one per rung it reached, the last is its final one), just before ``tell``;
        only called when ``owns_trials``."""
        return None

    def rows(self) -> list[dict[str, Any]]:
        """The whole trials table from the searcher's storage; only called when ``owns_trials``."""
        return []

    # ----- hooks for searchers that stop evaluations early (Optuna's pruners) -----------------------------
    def prune_stages(self, rounds: int) -> list[int]:
        """Rounds at which :meth:`should_prune` is asked (ascending, < rounds); [] = never."""
        return []

    def should_prune(self, candidate: Candidate, curve: Sequence[tuple[int, float]]) -> bool:
        """After a stage: report the first seed's accuracy ``curve`` [(round, accuracy)] and decide."""
        return False

    def close(self) -> None:
        """Release resources (storages, threads)."""
        return None


REGISTRY: dict[str, type[Searcher]] = {}


def register(cls: type[Searcher]) -> type[Searcher]:
    """Class decorator: make a searcher available as ``study.engine = cls.name``."""
    REGISTRY[cls.name] = cls
    return cls

