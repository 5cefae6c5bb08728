"""`qsfl tune` end to end on a tiny study: the documented outputs and columns, one row per evaluation,
resume, failed (diverging) evaluations, and bad specs -> exit code 2 naming the key, no traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_qsfl, spec_text

from qsfl.config import load_toml
from qsfl_cli import main
from tuning.objective import METRICS

TINY = spec_text(save_histories=False)   # digits, mlp, 6 clients, 3 rounds, GA 4 x 2

DOCUMENTED = ["study", "engine", "generation", "trial", "individual", "param_beta", "param_k", "param_ns", "param_p",
              "seeds", "fitness", "state", "reason", "duration_s", "finished_at"]


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_tiny_ga_study_writes_the_documented_outputs(tiny_spec, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tune", str(tiny_spec), "--out", str(out), "--no-report"]) == 0
    for name in ("spec.toml", "trials.parquet", "trials.csv", "logbook.csv", "checkpoint.pkl", "best.toml",
                 "baseline.toml"):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "trials.parquet")
    for col in DOCUMENTED + [f"metric_{m}" for m in METRICS] + [f"metric_{m}_std" for m in METRICS]:
        assert col in df.columns, col
    logbook = pd.read_csv(out / "logbook.csv")
    assert list(logbook["gen"]) == [0, 1, 2]
    assert {"nevals", "min_0", "mean_0", "max_0", "std_0"} <= set(logbook.columns)
    assert len(df) == logbook["nevals"].sum()                      # one row per evaluation
    assert df["trial"].tolist() == list(range(len(df))) and df["individual"].is_unique
    assert set(df["engine"]) == {"ga"} and set(df["state"]) == {"complete"}
    assert df["generation"].min() == 0 and df["generation"].max() <= 2
    assert (df["param_k"] >= 1).all() and (df["param_ns"] <= df["param_k"]).all()   # NS <= K repaired
    assert df["param_k"].dtype.kind == "i"
    csv = pd.read_csv(out / "trials.csv", keep_default_na=False, na_values=[""])
    assert len(csv) == len(df)
    doc = load_toml(out / "best.toml")
    best = doc["best"]
    # validated: ranked by validation fitness (the search's best is among them), the answer first
    assert pytest.approx(df["fitness"].max()) in [b["fitness"][0] for b in best]
    validation = pd.read_csv(out / "validation.csv")
    chosen = validation[validation["answer"]].iloc[0]
    assert best[0]["validation_fitness"][0] == pytest.approx(chosen["validation_fitness"])
    assert doc["answer"] in ("tuned", "defaults") and bool(best[0].get("defaults")) == (doc["answer"] == "defaults")
    baseline = load_toml(out / "baseline.toml")
    assert baseline["params"]["beta"] == 0.9 and baseline["params"]["ns"] == 6 and baseline["state"] == "complete"
    assert load_toml(out / "spec.toml")["ga"]["population"] == 4
    text = capsys.readouterr().out
    assert "authors' defaults" in text and "answer params:" in text and "validation:" in text


def test_rerun_without_resume_refuses_and_resume_extends(tiny_spec, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tune", str(tiny_spec), "--out", str(out), "--no-report", "--quiet"]) == 0
    assert main(["tune", str(tiny_spec), "--out", str(out), "--no-report", "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    before = pd.read_parquet(out / "trials.parquet")
    assert main(["tune", str(tiny_spec), "--out", str(out), "--no-report", "--quiet", "--resume",
                 "--set", "ga.generations=3"]) == 0
    after = pd.read_parquet(out / "trials.parquet")
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)    # finished rows kept as they were
    assert after["trial"].is_unique and len(pd.read_csv(out / "logbook.csv")) == 4
    assert main(["tune", str(tiny_spec), "--out", str(out), "--no-report", "--quiet", "--resume",
                 "--set", "ga.population=6"]) == 2
    assert "spec differs" in capsys.readouterr().err


def test_diverging_evaluations_are_recorded_as_failed(tiny_spec, tmp_path):
    out = tmp_path / "out"
    spec = tiny_spec.read_text() + "\n[space.lr]\nlow = 200.0\nhigh = 400.0\n"
    tiny_spec.write_text(spec)
    # every evaluation failed: the study's outputs are written, and it exits non-zero (issue 13)
    assert main(["tune", str(tiny_spec), "--out", str(out), "--no-report", "--quiet",
                 "--set", "ga.generations=1"]) == 1
    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) >= 4 and set(df["state"]) == {"failed"}
    assert df["reason"].str.contains("diverged").all() and df["fitness"].isna().all()
    assert load_toml(out / "best.toml").get("best", []) == []
    assert pd.read_csv(out / "logbook.csv")["nfailed"].iloc[0] == 4


@pytest.mark.parametrize("sets, fragment", [
    (["study.bogus=1"], "study.bogus: unknown key; valid keys: study.name"),
    (["space.beta.low=0.9", "space.beta.high=0.1"], "space.beta: low 0.9 > high 0.1"),
    (["ga.population=1"], "ga.population: 1 is out of range; allowed [2, inf]"),
    (["optuna.sampler=grid"], "optuna.sampler: unknown value 'grid'; valid: tpe, gp, cmaes, nsga2, random, ga"),
    (["space.ns.high=0"], "space.ns.high: 0 is out of range; allowed [1, inf]"),
    (["space.k.high=7"], "space.k.high: 7 is out of range; allowed [1, 6]"),
    (["objective.formula=\"__import__('os')\""], "objective.formula: call of '__import__' is not allowed"),
    (["nosection.x=1"], "nosection: unknown section in --set nosection.x; valid sections: study"),
    (["base.rounds=0"], "base.rounds: 0 is out of range"),
])
def test_bad_spec_exit_code_2_names_the_key(tiny_spec, tmp_path, capsys, sets, fragment):
    args = ["tune", str(tiny_spec), "--out", str(tmp_path / "o"), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err, err


@pytest.mark.parametrize("content, fragment", [
    ("", "empty study spec"),
    ("[study\n", "invalid TOML"),
    ("[base]\nclients = 4\n[objective]\nformula = \"final_accuracy\"\ndirection = \"maximize\"\n", "space: missing"),
])
def test_broken_spec_files(tmp_path, capsys, content, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    assert main(["tune", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert fragment in capsys.readouterr().err


def test_missing_spec_and_bad_flags(tmp_path, tiny_spec, capsys):
    assert main(["tune", str(tmp_path / "nope.toml"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["tune", str(tiny_spec), "--workers", "0", "--quiet"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["tune", str(tiny_spec), "--storage", "sqlite:///x.db", "--quiet"]) == 2
    assert "--storage: only for study.engine" in capsys.readouterr().err


def test_bad_spec_in_a_real_process_has_no_traceback(tiny_spec, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("population = 4", "population = 1\nmutation = \"flip\""))
    proc = run_qsfl("tune", str(bad), "--out", str(tmp_path / "o"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "ga.population" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_serial_and_two_workers_give_the_same_trials_table(tiny_spec, tmp_path):
    for name, workers in (("serial", "1"), ("pool", "2")):
        assert main(["tune", str(tiny_spec), "--out", str(tmp_path / name), "--workers", workers, "--no-report",
                     "--quiet", "--set", "ga.population=6", "--set", "ga.generations=3"]) == 0
    drop = ["duration_s", "finished_at", "per_seed"]
    a = pd.read_parquet(tmp_path / "serial" / "trials.parquet").drop(columns=drop)
    b = pd.read_parquet(tmp_path / "pool" / "trials.parquet").drop(columns=drop)
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "serial" / "logbook.csv").read_text() == (tmp_path / "pool" / "logbook.csv").read_text()


@pytest.mark.slow
def test_study_resumed_after_generation_2_equals_uninterrupted(tiny_spec, tmp_path):
    from tuning.spec import load_spec
    from tuning.study import run_study

    spec = load_spec(tiny_spec, ["ga.generations=4", "ga.population=6"])
    run_study(spec, tmp_path / "full")
    run_study(spec, tmp_path / "part", stop_after=2)
    run_study(spec, tmp_path / "part", resume=True)
    drop = ["duration_s", "finished_at", "per_seed"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "full" / "trials.parquet").drop(columns=drop),
                                  pd.read_parquet(tmp_path / "part" / "trials.parquet").drop(columns=drop))
    for name in ("logbook.csv", "best.toml"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "part" / name).read_text()


def test_study_toml_files_parse():
    from pathlib import Path

    from tuning.spec import load_spec

    studies = sorted(Path(__file__).resolve().parents[2].glob("studies/*.toml"))
    assert studies, "studies/*.toml missing"
    for path in studies:
        spec = load_spec(path)
        assert spec.name == textwrap.dedent(spec.name)


@pytest.mark.slow
def test_report_is_written_at_the_end_unless_no_report(tiny_spec, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tune", str(tiny_spec), "--out", str(out), "--set", "study.save_histories=true"]) == 0
    assert (out / "report.html").is_file() and (out / "histories" / "best" / "history.parquet").is_file()
    assert "report:" in capsys.readouterr().out


def test_dataset_paths_in_a_spec_are_relative_to_the_spec_file(tmp_path, monkeypatch):
    from tuning.spec import load_spec

    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "s.toml"
    spec.write_text(TINY.replace('dataset = "digits"', 'dataset = "femnist"\n'
                                 'dataset_options = { path = "../leaf", max_users = 5 }'))
    monkeypatch.chdir(tmp_path / "specs")   # anywhere: the path is the spec's, not the working directory's
    loaded = load_spec(spec)
    assert Path(loaded.base.dataset_options["path"]) == (tmp_path / "specs" / ".." / "leaf")
    assert loaded.raw["base"]["dataset_options"]["path"] == loaded.base.dataset_options["path"]   # spec.toml too
    # a path typed on the command line stays relative to the working directory
    assert load_spec(spec, ["base.dataset_options.path=here"]).base.dataset_options["path"] == "here"
    spec.write_text(TINY.replace('dataset = "digits"', 'dataset = "femnist"\n'
                                 'dataset_options = { path = "/abs/leaf" }'))
    assert load_spec(spec).base.dataset_options["path"] == "/abs/leaf"


def test_paper_femnist_spec_comments_match_its_values():
    from tuning.spec import load_spec

    path = Path(__file__).resolve().parents[2] / "studies" / "paper_femnist.toml"
    text = path.read_text()
    spec = load_spec(path)
    base = spec.base
    assert base.dataset_options["max_users"] == base.clients == 50 and "The first 50 writers" in text
    assert base.cohort_size == 10 and "10 of them (client_fraction 0.2)" in text and "C = 10" in text
    assert base.rounds == 100 and "100 rounds" in text
    k = next(p for p in spec.space.params if p.name == "k")
    assert k.high == base.cohort_size and "at most the cohort size C" in text
    assert base.target_accuracy == 0.7 and "70 %" in text and "final_accuracy >= 0.72" in text and "72 %" in text
    assert base.dataset_options["path"].endswith("studies/../data/leaf/femnist")
    assert "data/leaf/femnist in the repository" in text


def test_resume_without_a_study_is_an_error(tiny_spec, tmp_path, capsys):
    out = tmp_path / "empty"
    assert main(["tune", str(tiny_spec), "--out", str(out), "--resume", "-q"]) == 2
    assert "holds no study" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())      # --out stays usable


@pytest.mark.parametrize("workers", [1, 2])
def test_histories_of_the_best_and_the_baseline_equal_direct_runs_wherever_they_ran(tmp_path, workers):
    """histories/best and histories/baseline (re-run on the pool's workers when there is one) are the Histories of
    the best config and the authors' defaults on the first seed, exactly as a direct ``simulate`` gives them."""
    import qsfl
    from qsfl.history import History
    from tuning.spec import load_spec
    from tuning.study import baseline_point

    spec_path = tmp_path / "tiny.toml"
    spec_path.write_text(spec_text(save_histories=True, population=3, generations=1))
    out = tmp_path / "out"
    assert main(["tune", str(spec_path), "--out", str(out), "--no-report", "--quiet", "--workers", str(workers)]) == 0
    spec = load_spec(spec_path)
    best = load_toml(out / "best.toml")["best"][0]["params"]
    seed = spec.study.seeds[0]
    expected = {"best": spec.base.with_overrides({**spec.space.overrides(best), "seed": seed}),
                "baseline": spec.base.with_overrides({**(baseline_point(spec).overrides or {}), "seed": seed})}
    for name, config in expected.items():
        saved = History.load(out / "histories" / name)
        direct = qsfl.simulate(config)
        assert saved.config == config.to_dict()
        cols = [c for c in direct.df.columns if "time" not in c]
        pd.testing.assert_frame_equal(saved.df[cols], direct.df[cols], check_dtype=False)
