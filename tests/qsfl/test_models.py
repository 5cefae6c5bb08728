import pytest
import torch

from qsfl.errors import ConfigError
from qsfl.models import MODELS, build_model, count_parameters


def test_femnist_cnn_has_the_papers_parameter_count():
    model = build_model("femnist_cnn", (1, 28, 28), 62)
    # conv1 16*25+16, conv2 32*16*25+32, fc 1568*62+62
    assert count_parameters(model) == 416 + 12832 + 97278 == 110_526


@pytest.mark.parametrize("name, shape, classes", [("logreg", (64,), 10), ("mlp", (64,), 10),
                                                   ("cnn1d", (40,), 10), ("femnist_cnn", (784,), 62)])
def test_forward_shapes_and_seeded_init(name, shape, classes):
    a = build_model(name, shape, classes, seed=3)
    b = build_model(name, shape, classes, seed=3)
    x = torch.randn(5, *shape)
    assert a(x).shape == (5, classes)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not any(True for _ in a.buffers())


def test_mlp_hidden_sizes_and_defaults():
    assert count_parameters(build_model("mlp", (64,), 10)) == 64 * 128 + 128 + 128 * 10 + 10
    assert count_parameters(build_model("mlp", (4,), 2, hidden=[3, 5])) == 4 * 3 + 3 + 3 * 5 + 5 + 5 * 2 + 2


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="model: unknown value 'vgg'; valid: " + ", ".join(sorted(MODELS))):
        build_model("vgg", (4,), 2)
    with pytest.raises(ConfigError, match="model_options"):
        build_model("mlp", (4,), 2, depth=3)
