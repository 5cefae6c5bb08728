"""Formatting numbers and tables for the reports: one cell style for HTML, Markdown and the terminal."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

DASH = "\u2013"
NA = "n/a"


def fmt_num(v: Any, digits: int = 4) -> str:
    """A table cell: ints as ints, floats to ``digits`` significant digits, missing as an en dash, inf as n/a."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isinf(v):
            return NA
        return f"{v:.{digits}g}"
    return str(v)


def fmt_ratio(v: Any) -> str:
    """A compression ratio as ``12.34x``; undefined (no uplink at all, a run that diverged at once) as n/a."""
    if v is None or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
        return NA
    return f"{float(v):.2f}x"


def format_duration(seconds: float) -> str:
    """3725 -> '1 h 2 min 5 s'."""
    if not math.isfinite(seconds):
        return DASH
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    parts = [f"{h} h"] * bool(h) + [f"{m} min"] * bool(m) + [f"{sec} s"]
    return " ".join(parts) if s else f"{seconds:.2f} s"


def params_text(params: Mapping[str, Any]) -> str:
    """'beta=0.5, k=4, ns=2, p=0.2'."""
    return ", ".join(f"{k}={fmt_num(v)}" for k, v in params.items())


_NUMERIC_TEXT = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?\S*( \u00b1 [\d.,]+\S*)?( \[[^\]]*\])?( \(\d+/\d+\))?$"
                           r"|^\u2013( \(\d+/\d+\))?$|^n/a$|^< [\d.]+$")


def is_num(v: Any) -> bool:
    """A real number (not a bool)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def looks_numeric(v: Any) -> bool:
    """Numbers and 'mean \u00b1 std' strings: right-aligned, never broken across lines."""
    return is_num(v) or (isinstance(v, str) and bool(_NUMERIC_TEXT.match(v)))


def html_table(df: pd.DataFrame) -> str:
    """An HTML table (escaped; numbers right-aligned)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    wide = ' class="wide"' if len(df.columns) > 9 else ""
    body = []
    for _, row in df.iterrows():
        cells = "".join(f'<td class="n">{_numeric_cell(v)}</td>' if looks_numeric(v)
                        else f"<td>{html.escape(fmt_num(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table{wide}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _numeric_cell(v: Any) -> str:
    """A number; 'mean [low, high]' puts its interval on a second, smaller line so wide tables still fit."""
    text = fmt_num(v)
    if isinstance(v, str) and " [" in text:
        mean, interval = text.split(" [", 1)
        return f'{html.escape(mean)}<br><span class="ci">[{html.escape(interval)}</span>'
    return html.escape(text)


def md_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes escaped)."""
    def cell(v: Any) -> str:
        return fmt_num(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |",
             "|" + "|".join("---:" if len(df) and all(is_num(v) for v in df[c]) else "---"
                            for c in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for _, row in df.iterrows()]
    return "\n".join(lines)
