"""The search space over any config key (issue 25, item 2): any strategy's own parameters (top-k's p, STC's p,
FedProx's mu, the local lr) with the bounds/log/step syntax, string fields and options with choices, dataset /
model / partition options by dotted key; a parameter of another strategy is an error naming the strategy."""

from __future__ import annotations

import copy

import pytest

from qsfl.errors import ConfigError
from tuning.spec import parse_spec

SPEC = {
    "study": {"name": "anykey", "engine": "random", "seeds": [0], "eval_seeds": []},
    "base": {"dataset": "digits", "model": "logreg", "clients": 4, "rounds": 2, "batch_size": 50,
             "partition": "dirichlet", "strategy": {"name": "topk"}},
    "space": {"p": {"low": 0.05, "high": 0.5, "log": True}},
    "objective": {"formula": "final_accuracy", "direction": "maximize"},
    "validation": {"enabled": False},
    "random": {"n_trials": 3, "batch_size": 3},
}


def spec(space: dict, strategy: str = "topk", **base) -> dict:
    raw = copy.deepcopy(SPEC)
    raw["space"] = space
    raw["base"]["strategy"] = {"name": strategy}
    raw["base"].update(base)
    return raw


@pytest.mark.parametrize(("strategy", "space", "key"), [
    ("topk", {"p": {"low": 0.01, "high": 0.5, "log": True}}, "strategy.p"),
    ("stc", {"p": {"low": 0.001, "high": 0.1}}, "strategy.p"),
    ("fedavg", {"prox_mu": {"low": 0.0, "high": 1.0}}, "prox_mu"),
    ("fedavg", {"lr": {"low": 0.01, "high": 0.5, "log": True}}, "lr"),
    ("qsgd", {"levels": {"key": "strategy.levels", "low": 1, "high": 64, "log": True}}, "strategy.levels"),
    ("qsfl", {"sel": {"key": "strategy.selection", "choices": ["topk", "percentile"]}}, "strategy.selection"),
    ("qsfl", {"alpha_dir": {"key": "partition_options.alpha", "low": 0.1, "high": 10.0, "log": True}},
     "partition_options.alpha"),
])
def test_any_strategys_own_parameters_and_options_can_be_searched(strategy, space, key):
    s = parse_spec(spec(space, strategy))
    (param,) = s.space.params
    assert param.key == key
    value = param.choices[-1] if param.is_categorical else param.high
    config = s.base.with_overrides(s.space.overrides({param.name: value}))
    if key.startswith("strategy."):
        assert getattr(config.strategy, key.split(".")[1]) == value
    elif key.startswith("partition_options."):
        assert config.partition_options["alpha"] == value
    else:
        assert getattr(config, key) == value
    assert param.type == ("int" if key == "strategy.levels" else "categorical" if param.is_categorical else "float")


@pytest.mark.parametrize(("strategy", "space", "message"), [
    ("topk", {"beta": {"low": 0.0, "high": 1.0}},
     "space.beta: 'beta' is not a parameter of strategy 'topk' (base.strategy.name); its parameters: p, "
     "error_feedback, index_encoding"),
    ("fedavg", {"p": {"low": 0.1, "high": 0.5}}, "space.p: 'p' is not a parameter of strategy 'fedavg'"),
    ("topk", {"sel": {"key": "strategy.selection", "choices": ["topk"]}},
     "space.sel: 'selection' is not a parameter of strategy 'topk'"),
    ("qsfl", {"sel": {"key": "strategy.selection", "choices": ["topk", "best"]}},
     "space.sel.choices[1]: unknown value 'best'"),
    ("qsfl", {"sel": {"key": "strategy.selection"}}, "space.sel.type: 'categorical' needs choices"),
    ("topk", {"p": {"low": 0.0, "high": 0.5}}, "space.p.low: 0.0 is out of range; allowed (0.0, 1.0]"),
    ("topk", {"x": {"key": "partition_options.alphaa", "low": 0.1, "high": 1.0}},
     "space.x.key: 'partition_options.alphaa': 'alphaa' is not an option of partition 'dirichlet' "
     "(base.partition); its options: alpha, min_size"),
    ("topk", {"x": {"key": "nonsense", "low": 0.1, "high": 1.0}}, "space.x.key: unknown value 'nonsense'"),
])
def test_a_foreign_or_bad_parameter_is_an_error_naming_it(strategy, space, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(spec(space, strategy))
    assert message in str(err.value), str(err.value)


def test_a_study_over_an_option_and_a_strategy_choice_runs(tmp_path):
    import pandas as pd

    from tuning.study import run_study

    raw = spec({"alpha_dir": {"key": "partition_options.alpha", "low": 0.2, "high": 5.0, "log": True},
                "sel": {"key": "strategy.selection", "choices": ["topk", "percentile"]}}, "qsfl")
    run_study(parse_spec(raw), tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert len(df) == 3 and df["state"].eq("complete").all()
    assert df["param_alpha_dir"].between(0.2, 5.0).all() and set(df["param_sel"]) <= {"topk", "percentile"}
