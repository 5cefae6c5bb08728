"""Progress of a study: a tqdm bar on a terminal, and timestamped log lines that work without one (nohup, SLURM,
CI) written to ``OUT/study.log`` and, unless quiet or a bar is shown, to stderr.

The bar counts evaluations (trials rows), so its ETA is known from the first finished evaluation; its postfix
shows the best fitness so far and the defaults', or the size of the Pareto front for several objectives. The log
has one line per evaluation and one per batch (GA generation, Optuna / random batch) with the count, the best
so far and the ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuning.objective import Evaluation, dominates
from tuning.storage import RedactingFormatter

log = logging.getLogger("tuning.progress")
FORMAT = "%(asctime)s %(message)s"


def _fmt(xs: Sequence[float]) -> str:
    return "/".join(f"{x:.4g}" for x in xs)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


class Progress:
    """Bar + log lines for one session of a study; see the module docstring."""

    def __init__(self, *, bar: bool, total: int | None, desc: str, signs: Sequence[float], full_rounds: int,
                 baseline: Sequence[float] | None = None, exact: bool = True) -> None:
        self.exact = exact               # False: ``total`` is an estimate, printed as "/~N" and revised per batch
        self.signs = tuple(signs)
        self.full_rounds = full_rounds
        self.baseline = list(baseline) if baseline else None
        self.total = total
        self.done = 0
        self.resumed_at = 0              # evaluations that were in the table when this session started
        self.start = time.perf_counter()
        self.best: list[float] | None = None
        self.front: list[list[float]] = []
        self.bar: Any = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="eval", desc=desc, dynamic_ncols=True)

    # ----- what happened ---------------------------------------------------------------------------------
    def evaluation(self, ev: Evaluation, trial: int | None, generation: int) -> None:
        """One finished evaluation (a trials row)."""
        self.done += 1
        if self.total is not None and self.done > self.total:   # the budget's row count is an estimate
            self.set_total(self.done)
        if ev.ok and ev.rounds >= self.full_rounds:
            self._improve(list(ev.fitness))
        where = f"gen {generation} " if generation >= 0 else ""
        fidelity = f" at {ev.rounds} rounds" if ev.rounds and ev.rounds < self.full_rounds else ""
        result = _fmt(ev.fitness) if ev.ok else f"{ev.state} ({ev.reason[:80]})"
        log.info("evaluation %d%s: %strial %s%s -> %s | %s", self.done, self._of(), where,
                 "-" if trial is None else trial, fidelity, result, self._status())
        if self.bar is not None:
            self.bar.update(1)
            self._postfix()

    def resumed(self, evaluations: Sequence[Evaluation]) -> None:
        """The evaluations already in the trials table of a resumed study (counted, and in the best so far)."""
        for ev in evaluations:
            self.done += 1
            if ev.ok and ev.rounds >= self.full_rounds:
                self._improve(list(ev.fitness))
        self.resumed_at = self.done
        if self.bar is not None:
            self.bar.update(self.done)
            self._postfix()

    def batch(self, text: str, new: int, failed: int) -> None:
        """A finished batch (a GA generation, an Optuna / random batch), described by ``text``."""
        log.info("%s: %d new evaluations, %d failed, %d%s so far | %s", text, new, failed, self.done, self._of(),
                 self._status())

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self.bar is not None and total is not None:
            self.bar.total = max(total, self.bar.n)
            self.bar.refresh()

    # ----- helpers ---------------------------------------------------------------------------------------
    def _improve(self, fit: list[float]) -> None:
        if len(fit) == 1:
            if self.best is None or self.signs[0] * fit[0] > self.signs[0] * self.best[0]:
                self.best = fit
            return
        if any(dominates(f, fit, self.signs) or f == fit for f in self.front):
            return
        self.front = [f for f in self.front if not dominates(fit, f, self.signs)] + [fit]

    def _of(self) -> str:
        if not self.total:
            return ""
        return f"/{self.total}" if self.exact else f"/~{self.total}"

    def revise_total(self, steps_done: int, steps: int | None) -> None:
        """Re-estimate the row count from the rows per step so far (exact once no step is left)."""
        if not steps or steps_done <= 0:
            return
        left = max(steps - steps_done, 0)
        if left == 0:
            self.exact = True
            self.set_total(self.done)
        elif not self.exact:
            self.set_total(self.done + round(left * self.done / steps_done))

    def _status(self) -> str:
        if len(self.signs) > 1:
            best = f"Pareto front {len(self.front)} points"
        else:
            best = f"best {_fmt(self.best)}" if self.best else "best -"
        if self.baseline and len(self.signs) == 1:
            best += f" (defaults {_fmt(self.baseline)})"
        elapsed = time.perf_counter() - self.start
        eta = ""
        new = self.done - self.resumed_at
        if self.total and new > 0:
            eta = f", ETA {_duration(elapsed / new * max(self.total - self.done, 0))}"
        return f"{best}; {_duration(elapsed)} elapsed{eta}"

    def _postfix(self) -> None:
        post: dict[str, str] = {}
        if len(self.signs) > 1:
            post["front"] = str(len(self.front))
        else:
            post["best"] = _fmt(self.best) if self.best else "-"
            if self.baseline:
                post["defaults"] = _fmt(self.baseline)
        self.bar.set_postfix(post, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LogSetup:
    """Send the progress log to ``OUT/study.log`` (always) and stderr (``stderr=True``) for one study session."""

    def __init__(self, out_dir: Path, stderr: bool) -> None:
        self.handlers: list[logging.Handler] = [logging.FileHandler(out_dir / "study.log", encoding="utf-8")]
        if stderr:
            self.handlers.append(logging.StreamHandler(sys.stderr))
        fmt = RedactingFormatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
        for h in self.handlers:
            h.setFormatter(fmt)
            log.addHandler(h)
        self.level, self.propagate = log.level, log.propagate
        log.setLevel(logging.INFO)
        log.propagate = False      # the root logger's handler (WARNING, the CLI's) would print it a second time

    def close(self) -> None:
        for h in self.handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(self.level)
        log.propagate = self.propagate
