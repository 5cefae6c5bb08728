"""Issue 12's parameters in study specs: downlink_p and prox_mu (numeric), segmentation and optimizer (categorical:
a gene bin per choice for the GA, suggest_categorical for Optuna), through a GA and an Optuna study end to end."""

from __future__ import annotations

import copy

import optuna
import pandas as pd
import pytest

from qsfl.config import SimConfig, StrategyConfig
from qsfl.errors import ConfigError
from qsfl.system import SystemConfig
from reports.report import write_report
from tuning.space import Param, build_space
from tuning.spec import parse_spec
from tuning.study import run_study
from tuning.validate import validate_study

SYSTEM = {"source": "tiers", "uplink": 2e4, "downlink": 8e4, "compute": 500.0,
          "tiers": [{"share": 0.5}, {"share": 0.5, "scale": 0.1, "compute": 500.0}]}
BASE = SimConfig(dataset="digits", model="mlp", clients=4, rounds=2, batch_size=50,
                 system=SystemConfig.from_dict(SYSTEM), strategy=StrategyConfig(name="qsfl", k=2, ns=2))
SPACE = {"downlink_p": {"low": 0.1, "high": 1.0}, "prox_mu": {"low": 0.0, "high": 0.1},
         "segmentation": {"choices": ["fixed", "count", "size"]}, "optimizer": {}}
SPEC = {
    "study": {"name": "edge", "seeds": [0], "eval_seeds": [], "save_histories": False},
    "base": {"dataset": "digits", "model": "mlp", "clients": 4, "rounds": 2, "batch_size": 50, "system": SYSTEM,
             "strategy": {"name": "qsfl", "k": 2, "ns": 2}},
    "space": SPACE,
    "objective": {"formula": "final_accuracy - 0.5 * uplink_fraction", "direction": "maximize"},
    "ga": {"population": 4, "generations": 1},
}


def test_categorical_genes_one_equal_bin_per_choice():
    p = Param("segmentation", "strategy.segmentation", 0, 2, type="categorical", choices=("fixed", "count", "size"))
    counts = {c: 0 for c in p.choices}
    for i in range(900):
        counts[p.decode((i + 0.5) / 900)] += 1
    assert counts == {"fixed": 300, "count": 300, "size": 300}
    assert (p.decode(0.0), p.decode(1.0)) == ("fixed", "size")
    assert all(p.decode(p.encode(c)) == c for c in p.choices)


def test_the_space_reads_the_new_parameters():
    space = build_space(copy.deepcopy(SPACE), BASE)
    by = {p.name: p for p in space.params}
    assert (by["downlink_p"].key, by["downlink_p"].type) == ("strategy.downlink_p", "float")
    assert (by["prox_mu"].key, by["prox_mu"].type) == ("prox_mu", "float")
    assert (by["segmentation"].key, by["segmentation"].choices) == ("strategy.segmentation", ("fixed", "count", "size"))
    assert (by["optimizer"].key, by["optimizer"].choices) == ("optimizer", ("sgd", "adam"))   # default: every value
    params = space.decode([0.5, 0.5, 0.9, 0.9])
    assert params == {"downlink_p": 0.55, "prox_mu": 0.05, "segmentation": "size", "optimizer": "adam"}
    assert space.contains(params) and not space.contains({**params, "segmentation": "bogus"})
    cfg = BASE.with_overrides(space.overrides(params))
    assert (cfg.strategy.segmentation, cfg.strategy.downlink_p, cfg.optimizer, cfg.prox_mu) == ("size", 0.55, "adam",
                                                                                                0.05)
    assert space.defaults(BASE) == {"downlink_p": 1.0, "prox_mu": 0.0, "segmentation": "fixed", "optimizer": "sgd"}


def test_optuna_asks_suggest_categorical():
    space = build_space(copy.deepcopy(SPACE), BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        params = space.suggest(trial, BASE)
        assert params["segmentation"] in ("fixed", "count", "size") and params["optimizer"] in ("sgd", "adam")
        assert isinstance(trial.distributions["segmentation"], optuna.distributions.CategoricalDistribution)
        assert 0.1 <= params["downlink_p"] <= 1.0
        study.tell(trial, 0.0)


@pytest.mark.parametrize("space, fragment", [
    ({"segmentation": {"choices": ["fixed", "tiles"]}}, "space.segmentation.choices[1]: unknown value 'tiles'"),
    ({"segmentation": {"low": 0, "high": 2}}, "space.segmentation.low: not for a categorical parameter"),
    ({"segmentation": {"choices": []}}, "space.segmentation.choices: expected a non-empty list"),
    ({"segmentation": {"choices": ["count", "count"]}}, "repeats a value"),
    ({"optimizer": {"type": "int"}}, "space.optimizer.type: 'int'; optimizer is a categorical parameter"),
    ({"downlink_p": {"low": 0.1, "high": 1.0, "choices": [0.1]}}, "space.downlink_p.choices: only for categorical"),
    ({"downlink_p": {"low": 0.0, "high": 1.0}}, "space.downlink_p.low: 0.0 is out of range; allowed (0.0, 1.0]"),
    ({"prox_mu": {"low": -1.0, "high": 1.0}}, "space.prox_mu.low: -1.0 is out of range"),
])
def test_bad_space_tables_name_the_key(space, fragment):
    with pytest.raises(ConfigError) as err:
        build_space(space, BASE)
    assert fragment in str(err.value)


def test_qsfl_only_parameters_need_a_qsfl_base():
    with pytest.raises(ConfigError, match="space.segmentation: 'segmentation' is not a parameter of strategy 'fedavg'"):
        build_space({"segmentation": {}}, BASE.replace(strategy=StrategyConfig(name="fedavg")))


def test_a_choice_that_cannot_be_simulated_is_a_validation_error():
    spec = copy.deepcopy(SPEC)
    del spec["base"]["system"]
    with pytest.raises(ConfigError, match=r"space.segmentation.choices\[1\]: 'count' cannot be simulated: "
                                          r"strategy.segmentation"):
        validate_study(parse_spec(spec))
    start = copy.deepcopy(SPEC)
    start["study"]["start"] = [{"segmentation": "tiles"}]
    with pytest.raises(ConfigError, match=r"study.start\[0\].segmentation: unknown value 'tiles'"):
        parse_spec(start)


@pytest.mark.parametrize("engine", ["ga", "optuna"])
def test_a_study_searches_them_end_to_end(engine, tmp_path):
    spec = copy.deepcopy(SPEC)
    spec["study"]["engine"] = engine
    if engine == "optuna":
        spec["optuna"] = {"n_trials": 4, "sampler": "random"}
        del spec["ga"]
    spec["study"]["start"] = [{"downlink_p": 0.4, "prox_mu": 0.01, "segmentation": "count", "optimizer": "adam"}]
    run_study(parse_spec(spec), tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert set(df["state"]) == {"complete"}
    assert df["param_segmentation"].isin(["fixed", "count", "size"]).all()
    assert df["param_optimizer"].isin(["sgd", "adam"]).all()
    # the defaults (the base's values) and the start point come first
    starts = df.iloc[:2][["param_downlink_p", "param_prox_mu", "param_segmentation", "param_optimizer"]]
    assert starts.values.tolist() == [[1.0, 0.0, "fixed", "sgd"], [0.4, 0.01, "count", "adam"]]
    if engine == "ga":   # the report of such a study (categorical columns are left out of the parameter plots)
        assert write_report(tmp_path / "out", formats=("png",)).is_file()
