"""``qsfl report``: read a study's output directory and write one self-contained report.html plus report.md.

The HTML embeds every figure as a base64 PNG and carries its own CSS: it opens offline, from an e-mail
attachment or a CI artifact, and reads without sideways scrolling (one column, wrapping tables). The parts:
reports.study (what is read), reports.tables, reports.compare and reports.figures (what is shown),
reports.render (HTML and Markdown).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qsfl.io import atomic_write_text
from reports import plots
from reports.figures import study_figures
from reports.render import build_html, build_markdown
from reports.study import load_report_study


def write_report(out_dir: str | Path, *, formats: Sequence[str] = ("png", "svg")) -> Path:
    """Write figures/*.png|svg, report.md and a self-contained report.html; return the HTML's path."""
    if "png" not in formats:
        raise ValueError(f"formats: {formats!r} must include 'png' (the HTML embeds it)")
    study = load_report_study(out_dir)
    figures = study_figures(study)
    fig_dir = study.out_dir / "figures"
    pngs: dict[str, bytes] = {}
    for f in figures:
        plots.save_figure(f.figure, fig_dir / f.name, formats)
        pngs[f.name] = (fig_dir / f"{f.name}.png").read_bytes()
    path = study.out_dir / "report.html"
    atomic_write_text(path, build_html(study, figures, pngs))
    atomic_write_text(study.out_dir / "report.md", build_markdown(study, figures))
    return path
