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


def test_simulate_refuses_a_non_empty_out_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["simulate", "--clients", "4", "--rounds", "1", "--out", str(out), "-q"]
    assert main(args) == 0
    before = (out / "history.parquet").read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "history.parquet").read_bytes() == before        # nothing was touched
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert load_toml(out / "config.toml")["seed"] == 1


def test_history_csv_numbers_rounds_from_1(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", "--clients", "4", "--rounds", "3", "--out", str(out), "-q"]) == 0
    assert pd.read_csv(out / "history.csv")["round"].tolist() == [1, 2, 3]
    assert pd.read_parquet(out / "history.parquet")["round"].tolist() == [0, 1, 2]   # the algorithm's index t


def test_summary_of_a_run_without_uplink_says_na_not_infx():
    from qsfl_cli import format_summary

    summary = {"status": "diverged", "reason": "NaN/inf training loss at round 0", "rounds_run": 0, "n_params": 10,
               "final_accuracy": float("nan"), "best_accuracy": float("nan"), "total_uplink_bytes": 0,
               "total_downlink_bytes": 0, "compression_ratio": float("inf"), "target_accuracy": 0.85,
               "rounds_to_target": None, "uplink_bytes_to_target": None, "wall_time_s": 0.1}
    text = format_summary(summary)
    assert "infx" not in text and "compression ratio   n/a" in text


def test_diverged_run_prints_na(tmp_path, capsys):
    assert main(["simulate", "--clients", "4", "--rounds", "2", "--lr", "1e6", "--out", str(tmp_path / "o"),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "status              diverged" in out and "infx" not in out


def test_version_and_verbosity_after_the_subcommand(tmp_path, capsys):
    from qsfl import __version__
    from qsfl_cli import build_parser

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"qsfl-tune {__version__}"
    parser = build_parser()
    for argv, verbose, quiet in ((["-v", "report", "x"], True, False), (["report", "x", "-v", "-q"], True, True),
                                 (["report", "x"], False, False), (["-q", "simulate"], False, True),
                                 (["simulate", "--quiet"], False, True), (["tune", "s.toml", "-v"], True, False)):
        args = parser.parse_args(argv)
        assert (args.verbose, args.quiet) == (verbose, quiet), argv


def test_data_check_prints_what_it_found(tmp_path, capsys):
    from fixtures_data import write_leaf, write_mnist

    write_leaf(tmp_path / "femnist" / "data", {"w0": (6, 2), "w1": (4, 3), "w2": (5, 1)})
    assert main(["data", "check", str(tmp_path / "femnist"), "--dataset", "femnist"]) == 0
    out = capsys.readouterr().out
    assert "train samples       15" in out and "test samples        6" in out
    assert "natural clients     3 (samples per client: min 4, median 5, max 6)" in out
    assert "input shape         (1, 28, 28)" in out and "data/train/all_data_0_train.json" in out
    write_mnist(tmp_path / "mnist", n_train=12, n_test=5)
    assert main(["data", "check", str(tmp_path / "mnist"), "--dataset", "mnist", "-q"]) == 0
    assert "train samples       12" in capsys.readouterr().out


@pytest.mark.parametrize("make, dataset, fragment", [
    (lambda p: p.mkdir(), "femnist", "no json files in 'train/' and 'test/'"),
    (lambda p: None, "femnist", "no such file or directory"),
    (lambda p: p.mkdir(), "mnist", "lacks train-images-idx3-ubyte"),
    (lambda p: p.mkdir(), "digits", "--dataset: unknown value 'digits'"),
])
def test_data_check_errors_are_one_line(tmp_path, capsys, make, dataset, fragment):
    make(tmp_path / "d")
    assert main(["data", "check", str(tmp_path / "d"), "--dataset", dataset]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1, err


def test_ctrl_c_surfacing_as_another_exception_is_still_one_line(monkeypatch, capsys):
    """An import of a C extension interrupted by Ctrl-C fails with ImportError("initialization failed") caused by
    the KeyboardInterrupt (seen with matplotlib's ft2font): still 'interrupted', exit 130; a plain ImportError is
    not swallowed."""
    import qsfl_cli

    def interrupted_import(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(qsfl_cli, "run_simulate", interrupted_import)
    assert main(["simulate"]) == 130
    assert capsys.readouterr().err == "interrupted\n"

    def broken_import(args):
        raise ImportError("no module named x")

    monkeypatch.setattr(qsfl_cli, "run_simulate", broken_import)
    with pytest.raises(ImportError, match="no module named x"):
        main(["simulate"])
    assert qsfl_cli.interrupted(KeyboardInterrupt()) and not qsfl_cli.interrupted(ValueError())


def test_strategy_help_lists_every_builtin_strategy():
    import re

    from qsfl.strategy_config import config_class, strategy_names
    from qsfl_cli import STRATEGY_HELP

    builtin = {n for n in strategy_names() if config_class(n).__module__ == "qsfl.strategy_config"}
    listed = set(re.findall(r"\w+", STRATEGY_HELP.split("(")[0]))
    assert listed == builtin
