"""The report as one self-contained HTML page (inline CSS, base64 figures) and as Markdown."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence

import pandas as pd

from qsfl.config import dump_toml
from reports.compare import (
    FAIRNESS_NOTE,
    display_table,
    fairness_display,
    fairness_summary,
    objective_texts,
    significance,
    summarise,
    summary_note,
    tests_display,
    tests_note,
    verdicts,
)
from reports.figures import FigureEntry
from reports.format import html_table, md_table
from reports.grid import level_tables
from reports.study import Study
from reports.tables import best_table, facts, seeds_note, top_trials

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:#1d2330;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:980px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:1.7em;margin:.2em 0 .1em}h2{font-size:1.3em;margin:1.8em 0 .5em;padding-bottom:.2em;
border-bottom:2px solid #e3e6eb}h3{font-size:1.05em;margin:1.4em 0 .4em}
.sub{color:#5a6275;margin:0 0 1em}
table{border-collapse:collapse;width:100%;margin:.6em 0 1em;font-size:.88em;table-layout:auto}
th,td{border:1px solid #dfe3e8;padding:5px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f0f2f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}tr:nth-child(even) td{background:#fafbfc}
table.wide{font-size:.8em}table.wide th,table.wide td{padding:4px 5px}table.wide td.n{white-space:normal}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f4f5f7;border:1px solid #e3e6eb;
border-radius:6px;padding:10px 12px;font-size:.82em;line-height:1.4}
figure{margin:1.2em 0 1.8em}figure img{display:block;width:100%;max-width:780px;height:auto;margin:0 auto}
figcaption{color:#5a6275;font-size:.88em;margin:.4em auto 0;max-width:780px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:.4em 0 1em}
dl.facts dt{color:#5a6275}dl.facts dd{margin:0;overflow-wrap:anywhere}
.note{color:#5a6275;font-size:.88em}
.ci{color:#5a6275;font-size:.85em}
nav ul{padding-left:1.2em;columns:2;margin:.3em 0}
@media (max-width:760px){main{padding:14px 12px 32px}table{font-size:.76em}th,td{padding:3px 4px}
td.n{white-space:normal}table.wide{font-size:.68em}nav ul{columns:1}
dl.facts{grid-template-columns:1fr}dl.facts dd{margin-bottom:4px}}
"""


def anchor(text: str) -> str:
    """An HTML id for a section title."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _comparison(study: Study) -> tuple[list[tuple[str, str, pd.DataFrame]], list[str]]:
    """(subtitle, note, table) blocks of the comparison section and its verdict sentences (shown after the first
    block); both empty without a comparison."""
    c = study.compare
    if c is None:
        return [], []
    summary = summarise(c)
    said = verdicts(c, summary)
    blocks = [("", summary_note(c, summary), display_table(summary, objective_texts(c)))]
    tests = significance(c)
    if len(tests):
        blocks.append(("Tuned vs baselines", tests_note(tests), tests_display(tests)))
    fair = fairness_summary(c)
    if len(fair):
        blocks.append(("Per-client accuracy and uploads", FAIRNESS_NOTE, fairness_display(fair)))
    return blocks, said


GRID_SECTION = "Results per level"


def _kind(study: Study) -> str:
    return "grid study" if study.results.is_grid else "hyperparameter study"


def _grid_note(study: Study) -> str:
    seeds = study.results.spec_seeds()[0]
    return (f"Each cell: the mean over the {len(seeds)} seeds ({', '.join(map(str, seeds))}) and its 95 % confidence "
            "interval (Student t; none under three seeds), from the trials table's per-seed values; (n/N): the metric "
            "is defined on n of the N seeds (rounds to target and slowdown need the target reached, slowdown by "
            "FedAvg too). Slowdown = rounds to target / FedAvg's on the same seed and setting; oscillation = rounds "
            "after the warm-up whose accuracy fell by more than the threshold (docs/tuning.md).")


def _sections(study: Study, figures: Sequence[FigureEntry]) -> list[str]:
    if study.results.is_grid:
        return ["Summary", GRID_SECTION, *dict.fromkeys(f.section for f in figures), "Study spec"]
    return ["Summary", "Best configurations"] + ["Comparison with baselines"] * (study.compare is not None) + \
        list(dict.fromkeys(f.section for f in figures)) + ["Top evaluations", "Study spec"]


def build_html(study: Study, figures: Sequence[FigureEntry], pngs: dict[str, bytes]) -> str:
    """The report as one HTML string with inline CSS and base64 images."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{e(study.name)} \u2013 QSFL tuning report</title><style>{CSS}</style></head><body><main>",
             f"<h1>{e(study.name)}</h1><p class=\"sub\">QSFL {_kind(study)} report</p>"]
    parts.append("<nav><ul>" + "".join(f'<li><a href="#{anchor(s)}">{e(s)}</a></li>' for s in
                                       _sections(study, figures)) + "</ul></nav>")
    parts.append(f'<h2 id="{anchor("Summary")}">Summary</h2><dl class="facts">'
                 + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts(study)) + "</dl>")
    grid = study.results.is_grid
    if grid:
        parts.append(f'<h2 id="{anchor(GRID_SECTION)}">{GRID_SECTION}</h2><p class="note">{e(_grid_note(study))}</p>')
        for title, table in level_tables(study.results):
            parts.append(f"<h3>{e(title)}</h3>" + html_table(table))
    best = best_table(study) if not grid else pd.DataFrame()
    if not grid:
        parts.append(f'<h2 id="{anchor("Best configurations")}">Best configurations</h2>')
        parts.append(html_table(best) if len(best) else '<p class="note">No complete evaluation yet.</p>')
    if len(best):
        parts.append(f'<p class="note">{e(seeds_note(study))}; configurations that simulate identically share a '
                     "row. The comparison below re-runs the best on fresh seeds.</p>")
    blocks, said = _comparison(study)
    if blocks:
        parts.append(f'<h2 id="{anchor("Comparison with baselines")}">Comparison with baselines</h2>')
        for title, note, table in blocks:
            parts.append((f"<h3>{e(title)}</h3>" if title else "") + html_table(table)
                         + f'<p class="note">{e(note)}</p>')
            if not title and said:
                parts.append("<h3>Verdict</h3><ul>" + "".join(f"<li>{e(v)}</li>" for v in said) + "</ul>")
    section = None
    for f in figures:
        if f.section != section:
            section = f.section
            parts.append(f'<h2 id="{anchor(section)}">{e(section)}</h2>')
        b64 = base64.b64encode(pngs[f.name]).decode("ascii")
        parts.append(f'<figure><img alt="{e(f.caption)}" src="data:image/png;base64,{b64}">'
                     f"<figcaption>{e(f.caption)}</figcaption></figure>")
    if not grid:
        top = top_trials(study)
        parts.append(f'<h2 id="{anchor("Top evaluations")}">Top evaluations</h2>')
        parts.append(html_table(top) if len(top) else '<p class="note">No complete evaluation yet.</p>')
    parts.append(f'<h2 id="{anchor("Study spec")}">Study spec</h2><pre>{e(dump_toml(study.results.spec))}</pre>')
    parts.append("</main></body></html>")
    return "\n".join(parts)


def build_markdown(study: Study, figures: Sequence[FigureEntry]) -> str:
    """The report as Markdown, figures linked from figures/*.png."""
    lines = [f"# {study.name}", "", f"QSFL {_kind(study)} report", "", "## Summary", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts(study)]
    grid = study.results.is_grid
    if grid:
        lines += ["", f"## {GRID_SECTION}", "", _grid_note(study)]
        for title, table in level_tables(study.results):
            lines += ["", f"### {title}", "", md_table(table)]
    best = best_table(study) if not grid else pd.DataFrame()
    if not grid:
        lines += ["", "## Best configurations", "", md_table(best) if len(best) else "No complete evaluation yet."]
    if len(best):
        lines += ["", seeds_note(study) + "; configurations that simulate identically share a row."]
    blocks, said = _comparison(study)
    if blocks:
        lines += ["", "## Comparison with baselines"]
        for title, note, table in blocks:
            lines += ([""] + [f"### {title}", ""] * bool(title)) + [md_table(table), "", note]
            if not title and said:
                lines += ["", "### Verdict", ""] + [f"- {v}" for v in said]
    section = None
    for f in figures:
        if f.section != section:
            section = f.section
            lines += ["", f"## {section}"]
        lines += ["", f"![{f.caption}](figures/{f.name}.png)", "", f"*{f.caption}*"]
    if not grid:
        top = top_trials(study)
        lines += ["", "## Top evaluations", "", md_table(top) if len(top) else "No complete evaluation yet."]
    lines += ["", "## Study spec", "", "```toml", dump_toml(study.results.spec).rstrip(), "```", ""]
    return "\n".join(lines)
