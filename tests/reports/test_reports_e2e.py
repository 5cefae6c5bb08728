"""End to end: a real tiny `qsfl tune` study, then `qsfl compare` and `qsfl report` through the CLI."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from helpers import spec_text

SPEC = spec_text("e2e-tiny", rounds=2, batch_size=30, target_accuracy=0.3, eval_seeds=[100], uplink_weight=0.05,
                 population=3, generations=1)


@pytest.mark.slow
def test_tune_compare_report(tmp_path, capsys):
    import torch

    from qsfl.history import History
    from qsfl_cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (tmp_path / "tiny.toml").write_text(SPEC)
        out = tmp_path / "out"
        assert main(["tune", str(tmp_path / "tiny.toml"), "--out", str(out), "--quiet"]) == 0
        first = (out / "report.html").read_text()  # qsfl tune wrote it at the end of the study
        assert "e2e-tiny" in first and "Comparison with baselines" not in first

        assert main(["compare", str(out), "--top", "1", "--quiet"]) == 0
        assert main(["report", str(out), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()

    table = pd.read_csv(out / "compare.csv")
    assert list(table["label"]) == ["qsfl-tuned-1", "fedavg", "topk", "qj-only", "scss-only", "qsfl-default"]
    assert (table["seeds"].astype(str) == "100").all()  # the spec's eval_seeds, unused by the search
    for _, row in table.iterrows():
        h = History.load(out / "compare" / row["label"] / "seed100")
        assert row["final_accuracy_mean"] == pytest.approx(h.summary["final_accuracy"])
        assert row["uplink_mb_mean"] == pytest.approx(h.summary["total_uplink_bytes"] / 1e6)

    text = (out / "report.html").read_text()
    assert "Comparison with baselines" in text and "Best configurations" in text
    assert "http://" not in text and "https://" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) >= 12 and all(s.startswith("data:image/png;base64,") for s in srcs)
    trials = pd.read_parquet(out / "trials.parquet")
    assert f"<dt>evaluations</dt><dd>{len(trials)} (" in text and "wall clock" in text
