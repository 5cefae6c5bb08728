import pytest

from qsfl.config import SimConfig, StrategyConfig, parse_assignments, parse_value
from qsfl.errors import ConfigError


@pytest.mark.parametrize("field, value, fragment", [
    ("lr", 0.0, "lr: 0.0 is out of range; allowed (0.0, inf]"),
    ("lr", -1, "lr"),
    ("rounds", 0, "rounds: 0 is out of range; allowed [1, inf]"),
    ("clients", 0, "clients"),
    ("clients", 2.5, "clients: expected an integer"),
    ("momentum", 1.0, "momentum"),
    ("lr", float("nan"), "lr: expected a finite number"),
    ("rounds", True, "rounds: expected an integer"),
    ("dataset", "imagenet", "dataset: unknown value 'imagenet'; valid: "),
    ("model", "resnet", "model: unknown value 'resnet'; valid: "),
    ("partition", "foo", "partition: unknown value 'foo'; valid: "),
    ("engine", "gpu", "engine: unknown value 'gpu'; valid: auto, batched, sequential"),
])
def test_simconfig_rejects_bad_values(field, value, fragment):
    with pytest.raises(ConfigError) as err:
        SimConfig(**{field: value})
    assert fragment in str(err.value)


@pytest.mark.parametrize("field, value, fragment", [
    ("name", "fedprox", "strategy.name: unknown value 'fedprox'; valid: fedavg, topk, qsfl"),
    ("ns", 0, "strategy.ns: 0 is out of range; allowed [1, inf]"),
    ("p", 0.0, "strategy.p: 0.0 is out of range; allowed (0.0, 1.0]"),
    ("p", 1.5, "strategy.p"),
    ("beta", -0.1, "strategy.beta: -0.1 is out of range; allowed [0.0, 1.0]"),
    ("beta", 1.1, "strategy.beta"),
    ("alpha", 0.0, "strategy.alpha: 0.0 is out of range; allowed (0.0, 1.0]"),
    ("k", 0, "strategy.k: 0 is out of range"),
    ("use_qj", 1, "strategy.use_qj: expected true or false"),
])
def test_strategyconfig_rejects_bad_values(field, value, fragment):
    with pytest.raises(ConfigError) as err:
        StrategyConfig(**{field: value})
    assert fragment in str(err.value)


def test_k_larger_than_clients_is_rejected():
    with pytest.raises(ConfigError, match=r"strategy.k: 30 is out of range; allowed \[1, 20\]"):
        SimConfig(clients=20, strategy=StrategyConfig(name="qsfl", k=30))


def test_round_trip_through_dict():
    cfg = SimConfig(clients=7, lr=0.1, partition="dirichlet", partition_options={"alpha": 0.5},
                    strategy=StrategyConfig(name="qsfl", k=3, p=0.2))
    assert SimConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="lrate: unknown key"):
        SimConfig.from_dict({"lrate": 0.1})
    with pytest.raises(ConfigError, match="strategy.gamma: unknown key"):
        SimConfig.from_dict({"strategy": {"gamma": 1}})
    with pytest.raises(ConfigError, match="strategy.gamma: unknown key"):
        SimConfig().with_overrides({"strategy.gamma": 1})


def test_overrides_and_value_parsing():
    cfg = SimConfig().with_overrides(parse_assignments(
        ["strategy.beta=0.25", "strategy.name=qsfl", "rounds=3", "partition=dirichlet", "partition_options.alpha=0.1"]))
    assert cfg.strategy.beta == 0.25 and cfg.strategy.name == "qsfl" and cfg.rounds == 3
    assert cfg.partition_options == {"alpha": 0.1}
    assert parse_value("true") is True and parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc"
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_assignments(["beta"])


def test_cohort_size():
    assert SimConfig(clients=20).cohort_size == 20
    assert SimConfig(clients=20, client_fraction=0.25).cohort_size == 5
    assert SimConfig(clients=3, client_fraction=0.01).cohort_size == 1


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(partition_options={"alpha": 0.5}), "partition_options.alpha: unknown option of partition 'iid'; valid options: none; 'alpha' is an option of partition dirichlet"),
    (dict(partition="dirichlet", partition_options={"alhpa": 0.5}), "partition_options.alhpa: unknown option of partition 'dirichlet'; valid options: alpha, min_size"),
    (dict(model_options={"depth": 2}), "model_options.depth: unknown option of model 'mlp'; valid options: hidden"),
    (dict(dataset_options={"path": "x"}), "dataset_options.path: unknown option"),
])
def test_unknown_option_names_are_rejected_before_running(kwargs, fragment):
    with pytest.raises(ConfigError) as err:
        SimConfig(**kwargs)
    assert fragment in str(err.value)
