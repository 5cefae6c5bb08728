"""One look for every figure: colour-blind-safe palette, print-friendly sizes, fixed colours per baseline."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg", force=False)  # never open a window; harmless when a notebook chose its backend already

from cycler import cycler
from matplotlib import rc_context

F = TypeVar("F", bound=Callable[..., Any])

# Okabe & Ito (2008): distinguishable with the common colour-vision deficiencies and in greyscale print.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
# Baselines keep the same colour in every figure; tuned configs take the rest of the palette in order.
BASELINE_COLORS = {
    "fedavg": "#000000",
    "topk": "#E69F00",
    "qj-only": "#56B4E9",
    "scss-only": "#CC79A7",
    "qsfl-default": "#D55E00",
}
TUNED_COLORS = ["#0072B2", "#009E73", "#8C564B", "#7F3C8D", "#11A579", "#3969AC", "#F2B701", "#E73F74"]
BASELINE_STYLES = {"fedavg": ":", "topk": "-.", "qj-only": "--", "scss-only": "--", "qsfl-default": "-"}

WIDTH_IN = 7.0          # fits an A4/letter column with margins and a 960 px HTML column at 150 dpi
HEIGHT_IN = 4.0
DPI = 150

RC: dict[str, Any] = {
    "figure.figsize": (WIDTH_IN, HEIGHT_IN),
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.facecolor": "white",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=PALETTE),
    "grid.color": "#d9d9d9",
    "grid.linewidth": 0.6,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "image.cmap": "viridis",
    "svg.fonttype": "none",   # SVG keeps real text: searchable, scalable, small
}


def styled(func: F) -> F:
    """Decorator: build the figure under the package's rc settings without touching global state."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with rc_context(RC):  # type: ignore[arg-type]  # RC's keys are valid rcParams
            return func(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


# other spellings of the baselines' labels: a grid's arms are named by the user (FedAvg, QSFL = QSFL's defaults)
BASELINE_ALIASES = {"qsfl": "qsfl-default", "qj_only": "qj-only", "scss_only": "scss-only"}


def baseline_key(label: str) -> str | None:
    """The baseline a label names (case-insensitive, with :data:`BASELINE_ALIASES`), or None."""
    key = str(label).lower()
    key = BASELINE_ALIASES.get(key, key)
    return key if key in BASELINE_COLORS else None


def color_for(label: str, index: int = 0) -> str:
    """Colour of a run label: fixed for baselines, the ``index``-th tuned colour otherwise."""
    key = baseline_key(label)
    return BASELINE_COLORS[key] if key else TUNED_COLORS[index % len(TUNED_COLORS)]


TUNED_STYLES: list[Any] = ["-", (0, (5, 1.5)), (0, (1.5, 1)), (0, (6, 1.5, 1.5, 1.5))]
BASELINE_MARKERS = {"fedavg": "s", "topk": "D", "qj-only": "v", "scss-only": "^", "qsfl-default": "o"}
TUNED_MARKERS = ["P", "X", "*", "h", "p", "<", ">", "d"]


def linestyle_for(label: str, index: int = 0) -> Any:
    """Dash pattern of a run label: fixed for baselines, the ``index``-th pattern for tuned configs, so lines
    stay distinguishable in greyscale print and where they overlap."""
    key = baseline_key(label)
    return BASELINE_STYLES[key] if key else TUNED_STYLES[index % len(TUNED_STYLES)]


def marker_for(label: str, index: int = 0) -> str:
    """Marker of a run label: fixed for baselines, the ``index``-th tuned marker otherwise."""
    key = baseline_key(label)
    return BASELINE_MARKERS[key] if key else TUNED_MARKERS[index % len(TUNED_MARKERS)]


def mb(n_bytes: float) -> float:
    """Bytes -> megabytes (10^6, as network traffic is usually counted)."""
    return float(n_bytes) / 1e6


def byte_unit(max_bytes: float) -> tuple[str, float]:
    """A readable unit and its divisor for a range of byte counts."""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if max_bytes >= div:
            return unit, div
    return "B", 1.0
