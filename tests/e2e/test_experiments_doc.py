"""docs/experiments.md: its numbers are what scripts/experiments.py prints for a fresh run of
studies/paper_clients.toml (slow: the study takes one to two minutes on 2 cores), its figures exist, and the script
computes its numbers from the trials rows (fast, on a tiny grid with the same arms)."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
from helpers import REPO, run_tune

from tuning.results import load_study
from tuning.spec import parse_spec

DOC = REPO / "docs" / "experiments.md"


def experiments():
    """scripts/experiments.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("experiments", REPO / "scripts" / "experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_doc_has_the_block_its_command_and_its_figures():
    text = DOC.read_text()
    exp = experiments()
    assert exp.doc_block(text)
    assert "qsfl tune studies/paper_clients.toml --out out/paper_clients" in text
    assert "python scripts/experiments.py out/paper_clients" in text
    for name in re.findall(r"\]\((experiments/[^)]+\.png)\)", text):
        assert (REPO / "docs" / name).is_file(), name
    assert len(re.findall(r"\]\((experiments/[^)]+\.png)\)", text)) >= 4


TINY = {
    "study": {"name": "tiny_paper", "engine": "grid", "seeds": [0, 1, 2]},
    "base": {"dataset": "digits", "model": "logreg", "rounds": 6, "batch_size": 20, "target_accuracy": 0.75},
    "metrics": {"oscillation_warmup": 1},
    "grid": {"factors": {"clients": [4, 6]},
             "arms": {"FedAvg": {"name": "fedavg"}, "QJ-only": {"name": "qsfl", "use_scss": False},
                      "SCSS-only": {"name": "qsfl", "use_qj": False}, "QSFL": {"name": "qsfl"}}},
}


def test_the_script_takes_its_numbers_from_the_trials_rows(tmp_path):
    from tuning.study import run_study

    out = tmp_path / "out"
    run_study(parse_spec(TINY), out)
    exp = experiments()
    r = load_study(out)
    text = exp.block(r)
    assert text.startswith("Study `tiny_paper`: 8 grid points x 3 seeds (0, 1, 2), 6 rounds, target accuracy 0.75.")
    rows = r.trials
    for clients in (4, 6):
        row = rows[(rows["param_clients"] == clients) & (rows["param_arm"] == "QJ-only")].iloc[0]
        values = [s["metrics"]["oscillation"] for s in json.loads(row["per_seed"])]
        assert exp.per_seed(r, "QJ-only", clients, "oscillation").tolist() == values
        assert f"{exp._g(np.mean(values))} at C = {clients}" in text
    assert exp.main([str(out)]) == 0


@pytest.mark.slow
def test_the_docs_numbers_are_what_a_fresh_run_of_the_paper_study_prints(tmp_path):
    out = tmp_path / "paper_clients"
    run_tune(REPO / "studies" / "paper_clients.toml", out)
    exp = experiments()
    assert exp.block(load_study(out)) == exp.doc_block(DOC.read_text())
