import pandas as pd
import pytest
from helpers import run_qsfl

from qsfl.config import load_toml
from qsfl_cli import main


def test_simulate_writes_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["simulate", "--dataset", "digits", "--clients", "5", "--rounds", "2", "--strategy", "qsfl",
               "--set", "strategy.beta=0.5", "--set", "strategy.ns=2", "--out", str(out), "--quiet"])
    assert rc == 0
    for name in ("history.csv", "history.parquet", "config.toml"):
        assert (out / name).is_file()
    cfg = load_toml(out / "config.toml")
    assert cfg["strategy"]["beta"] == 0.5 and cfg["clients"] == 5
    assert len(pd.read_parquet(out / "history.parquet")) == 2
    assert "compression ratio" in capsys.readouterr().out


def test_config_file_then_flags(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('clients = 4\nrounds = 1\n[strategy]\nname = "topk"\np = 0.2\n')
    out = tmp_path / "run"
    assert main(["simulate", "--config", str(conf), "--rounds", "2", "--out", str(out), "--quiet"]) == 0
    cfg = load_toml(out / "config.toml")
    assert cfg["rounds"] == 2 and cfg["strategy"]["name"] == "topk" and cfg["strategy"]["p"] == 0.2


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "imagenet"], "dataset: unknown value 'imagenet'; valid:"),
    (["--model", "vgg"], "model: unknown value 'vgg'"),
    (["--strategy", "fedprox"], "strategy.name: unknown value 'fedprox'"),
    (["--partition", "weird"], "partition: unknown value 'weird'"),
    (["--clients", "100000"], "clients: 100000 is out of range"),
    (["--lr", "0"], "lr: 0.0 is out of range"),
    (["--rounds", "0"], "rounds: 0 is out of range"),
    (["--set", "strategy.gamma=1"], "strategy.gamma: unknown key"),
    (["--set", "nonsense"], "expected key=value"),
    (["--config", "/nonexistent/file.toml"], "no such file"),
])
def test_bad_input_exit_code_2(args, fragment, tmp_path, capsys):
    assert main(["simulate", *args, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "imagenet"], "dataset: unknown value 'imagenet'; valid:"),
    (["--set", "strategy.p=2"], "strategy.p: 2 is out of range; allowed (0.0, 1.0]"),
])
def test_bad_input_in_a_real_process_has_no_traceback(args, fragment, tmp_path):
    proc = run_qsfl("simulate", *args, "--out", str(tmp_path), "--quiet", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_toml_is_reported(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("clients = = 3")
    proc = run_qsfl("simulate", "--config", str(conf), "--out", str(tmp_path / "o"), timeout=120)
    assert proc.returncode == 2 and "invalid TOML" in proc.stderr and "Traceback" not in proc.stderr
