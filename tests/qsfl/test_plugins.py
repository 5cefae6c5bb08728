"""Users' own models and datasets (qsfl.register_model / register_dataset, import paths in configs and study
specs) and the small 2-D CNN (cnn2d) on the batched engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import REPO, spec_text

import qsfl
from qsfl.config import SimConfig
from qsfl.engine.batched import BatchedEngine, unsupported_reason
from qsfl.engine.common import flat_weights
from qsfl.engine.sequential import SequentialEngine
from qsfl.errors import ConfigError
from qsfl.models import MODELS, build_model, count_parameters

EXAMPLE = "examples.my_model"


@pytest.fixture
def example_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))


def test_register_model_and_dataset_by_name(example_importable):
    from examples.my_model import TinyNet, load_blobs

    qsfl.register_model("tiny", TinyNet)
    qsfl.register_dataset("blobs", load_blobs)
    config = SimConfig(dataset="blobs", model="tiny", model_options={"width": 8}, dataset_options={"samples": 200},
                       clients=4, rounds=2, batch_size=20)
    h = qsfl.simulate(config)
    assert h.n_params == 8 * 8 + 8 + 8 * 4 + 4 and len(h.df) == 2
    with pytest.raises(ConfigError, match=r"model_options.depth: unknown option of model 'tiny'; valid options: width"):
        SimConfig(dataset="blobs", model="tiny", model_options={"depth": 3})
    with pytest.raises(ConfigError, match="already registered"):
        qsfl.register_model("tiny", lambda input_shape, num_classes: None)
    qsfl.register_model("tiny", TinyNet)                       # the same factory again is fine


def test_import_paths_in_a_config(example_importable):
    config = SimConfig(dataset=f"{EXAMPLE}:load_blobs", model=f"{EXAMPLE}:TinyNet", clients=4, rounds=1,
                       batch_size=20, dataset_options={"samples": 100})
    assert f"{EXAMPLE}:TinyNet" in MODELS
    assert SimConfig.from_dict(config.to_dict()) == config          # round trip through TOML/dicts
    assert qsfl.simulate(config).summary["status"] == "complete"


@pytest.mark.parametrize("field, value, fragment", [
    ("model", "nopkg_xyz.models:Net", "cannot import module 'nopkg_xyz.models'"),
    ("model", f"{EXAMPLE}:Missing", "has no attribute 'Missing'"),
    ("dataset", f"{EXAMPLE}:np", "is not callable"),                                    # a module
    ("dataset", f"{EXAMPLE}:TinyNet", "the loader must take a `seed` keyword argument"),
    ("model", f"{EXAMPLE}:load_blobs", "first arguments must be (input_shape, num_classes)"),
    ("model", "not a path", "model: unknown value 'not a path'"),
])
def test_bad_import_paths_are_one_line_errors(example_importable, field, value, fragment):
    with pytest.raises(ConfigError) as err:
        SimConfig(**{field: value})
    assert fragment in str(err.value) and str(err.value).startswith(field)


def test_register_rejects_bad_factories():
    with pytest.raises(ConfigError, match="first arguments"):
        qsfl.register_model("bad", lambda shape, classes: None)
    with pytest.raises(ConfigError, match="seed"):
        qsfl.register_dataset("bad", lambda path=None: None)
    qsfl.register_dataset("broken", lambda seed=0: "not a dataset")
    from qsfl.data.datasets import load_dataset
    with pytest.raises(ConfigError, match="returned str, not a qsfl.data.Dataset"):
        load_dataset("broken")


def test_import_path_in_a_study_spec(example_importable, tmp_path, monkeypatch):
    """A study spec's [base] names the model and dataset by import path; the GA runs with two pool workers,
    which import the module themselves."""
    from qsfl_cli import main

    monkeypatch.setenv("PYTHONPATH", f"{REPO}")
    text = spec_text(clients=4, rounds=2).replace('dataset = "digits"', f'dataset = "{EXAMPLE}:load_blobs"') \
        .replace('model = "mlp"', f'model = "{EXAMPLE}:TinyNet"')
    (tmp_path / "s.toml").write_text(text)
    assert main(["tune", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--no-report", "-q",
                 "--workers", "2", "--set", "ga.generations=1"]) == 0
    import pandas as pd
    trials = pd.read_parquet(tmp_path / "o" / "trials.parquet")
    assert (trials["state"] == "complete").all() and len(trials) >= 4


# ----- cnn2d -------------------------------------------------------------------------------------------------
def test_cnn2d_shapes_parameters_and_no_buffers():
    model = build_model("cnn2d", (3, 32, 32), 10, seed=1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model(torch.randn(2, 3 * 32 * 32)).shape == (2, 10)                 # flat inputs reshaped
    # conv1 3*16*9+16, conv2 16*32*9+32, fc 32*8*8*10+10
    assert count_parameters(model) == 448 + 4640 + 20490
    assert not list(model.buffers()) and unsupported_reason(model) is None
    assert count_parameters(build_model("cnn2d", (1, 8, 8), 2, channels=4)) == (4 * 9 + 4) + (8 * 4 * 9 + 8) + (8 * 2 * 2 * 2 + 2)
    with pytest.raises(ConfigError, match="cnn2d needs"):
        build_model("cnn2d", (784,), 10)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_cnn2d_batched_equals_sequential(momentum):
    """Batched (folded convolutions) and sequential engines agree within the CNN tolerance of the engine tests."""
    shape, sizes = (3, 8, 8), [7, 5, 9, 3]
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)) for n in sizes]
    model = build_model("cnn2d", shape, 10, seed=2, channels=4)
    kw = dict(epochs=2, batch_size=3, lr=0.05, momentum=momentum, weight_decay=0.0, seed=5)
    w0 = flat_weights(model)
    ids = [3, 1, 0, 2]
    want = SequentialEngine(model, data, **kw).train(w0, ids, 2)
    engine = BatchedEngine(model, data, **kw)
    assert engine.method == "fold"
    got = engine.train(w0, ids, 2)
    torch.testing.assert_close(got.weights, want.weights, atol=5e-5, rtol=0)
    np.testing.assert_allclose(got.losses, want.losses, atol=1e-5, rtol=0)


def test_cnn2d_on_cifar_style_files(tmp_path):
    from fixtures_data import write_cifar

    write_cifar(tmp_path / "c", per_batch=4, n_test=3)
    h = qsfl.simulate(SimConfig(dataset="cifar10", dataset_options={"path": str(tmp_path / "c")}, model="cnn2d",
                                model_options={"channels": 4}, clients=4, rounds=2, batch_size=5))
    assert h.summary["status"] == "complete" and 0.0 <= h.summary["final_accuracy"] <= 1.0
