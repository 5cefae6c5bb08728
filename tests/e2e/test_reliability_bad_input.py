"""Bad input never crashes `qsfl simulate --config`: every mistake in a SimConfig TOML file (or a --set
override) gives exit code 2 and one ``error: `` line naming the key, never a traceback.

Most cases call ``qsfl_cli.main`` in this process (it returns the exit code; argparse errors raise
SystemExit(2)); a few run ``python -m qsfl_cli`` in a real process. Every mutated config is invalid by
construction, so no case runs a simulation and the module stays fast. The crashes this suite found (tracebacks
from unreadable/empty files, --out at a file, model options, empty splits, non-string paths, huge batch sizes)
were fixed in 9edb980; their tests below keep them fixed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsfl.config import (
    AGGREGATES,
    DEVICES,
    ENGINES,
    INDEX_ENCODINGS,
    RELEVANCES,
    SELECTIONS,
    STRATEGIES,
    SimConfig,
    load_toml,
)
from qsfl.errors import ConfigError
from qsfl_cli import main

# A valid, quick config (logreg on digits: 64 * 10 + 10 = 650 parameters; 1437 training samples).
VALID: dict[str, Any] = {
    "dataset": "digits", "model": "logreg", "clients": 4, "rounds": 1, "batch_size": 50, "seed": 0,
    "strategy": {"name": "qsfl", "ns": 2, "k": 2, "beta": 0.9, "p": 0.4},
}
N_PARAMS = 650
N_TRAIN = 1438            # digits with test_fraction 0.2

INF, NAN = math.inf, math.nan
FUZZ_EXAMPLES = int(os.environ.get("QSFL_FUZZ_EXAMPLES", "60"))


# ----- helpers ------------------------------------------------------------------------------------------
def toml_text(data: dict[str, Any]) -> str:
    return tomli_w.dumps(data)


def with_value(key: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``base`` (VALID) with dotted ``key`` set to ``value``."""
    data = copy.deepcopy(base if base is not None else VALID)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data


def simulate_cli(config_text: str | None, *extra: str, config_path: str | Path | None = None) -> tuple[int, str]:
    """Run ``qsfl simulate --config FILE ...`` in this process; (exit code, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        if config_path is None:
            config_path = Path(tmp) / "config.toml"
            Path(config_path).write_text(config_text or "", encoding="utf-8")
        argv = ["simulate", "--config", str(config_path), "--out", str(Path(tmp) / "out"), "--quiet", *extra]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as exc:          # argparse's own usage errors
                rc = exc.code if isinstance(exc.code, int) else 2
        return rc, err.getvalue()


def assert_usage_error(rc: int, err: str, *fragments: str) -> None:
    """Exit code 2, one ``error: `` line first, naming what is wrong, no traceback."""
    assert rc == 2, f"exit code {rc}, stderr: {err!r}"
    assert err.startswith("error: "), err
    assert "Traceback" not in err, err
    first = err.splitlines()[0]
    for fragment in fragments:
        assert fragment in first, f"{fragment!r} not in {first!r}"


def test_the_base_config_is_valid():
    """Sanity: VALID itself is accepted, so every failure below comes from the one mutation."""
    cfg = SimConfig.from_dict(copy.deepcopy(VALID))
    assert cfg.strategy.ns == 2 and cfg.clients == 4


# ----- hand-picked mutations of one key --------------------------------------------------------------------
CASES: list[tuple[str, Any, str]] = [
    # wrong types
    ("clients", "four", "clients: expected an integer"),
    ("clients", 4.0, "clients: expected an integer"),
    ("clients", True, "clients: expected an integer"),
    ("rounds", [1], "rounds: expected an integer"),
    ("lr", "0.1", "lr: expected a number"),
    ("lr", {"value": 0.1}, "lr: expected a number"),
    ("batch_size", 2.5, "batch_size: expected an integer"),
    ("seed", "zero", "seed: expected an integer"),
    ("dataset", 3, "dataset: unknown value 3"),
    ("model", ["mlp"], "model: unknown value"),
    ("strategy.beta", "high", "strategy.beta: expected a number"),
    ("strategy.use_qj", 1, "strategy.use_qj: expected true or false"),
    ("strategy.use_scss", "yes", "strategy.use_scss: expected true or false"),
    ("strategy.k", 2.0, "strategy.k: expected an integer"),
    ("strategy.ns", "6", "strategy.ns: expected an integer"),
    ("strategy", 5, "strategy: expected a table or a name"),
    ("strategy", [{"name": "qsfl"}], "strategy: expected a table or a name"),
    ("model_options", 5, "model_options: expected a table of options"),
    ("partition_options", "alpha=0.5", "partition_options: expected a table of options"),
    # unknown keys
    ("learning_rate", 0.1, "learning_rate: unknown key; valid keys:"),
    ("strategy.gamma", 1, "strategy.gamma: unknown key"),
    ("model_options.depth", 3, "model_options.depth: unknown option"),
    ("dataset_options.path", "/tmp", "dataset_options.path: unknown option"),
    ("partition_options.alpha", 0.5, "partition_options.alpha: unknown option"),   # iid has no options
    # out of range
    ("clients", 0, "clients: 0 is out of range"),
    ("clients", -3, "clients: -3 is out of range"),
    ("clients", N_TRAIN + 1, f"clients: {N_TRAIN + 1} is out of range"),
    ("clients", 2**70, "clients:"),
    ("rounds", 0, "rounds: 0 is out of range"),
    ("local_epochs", 0, "local_epochs: 0 is out of range"),
    ("batch_size", 0, "batch_size: 0 is out of range"),
    ("lr", 0.0, "lr: 0.0 is out of range"),
    ("lr", -0.1, "lr: -0.1 is out of range"),
    ("momentum", 1.0, "momentum: 1.0 is out of range"),
    ("weight_decay", -1e-4, "weight_decay: -0.0001 is out of range"),
    ("seed", -1, "seed: -1 is out of range"),
    ("eval_every", 0, "eval_every: 0 is out of range"),
    ("client_fraction", 0.0, "client_fraction: 0.0 is out of range"),
    ("client_fraction", 1.5, "client_fraction: 1.5 is out of range"),
    ("target_accuracy", 1.01, "target_accuracy: 1.01 is out of range"),
    ("max_chunk_mb", 0.0, "max_chunk_mb: 0.0 is out of range"),
    ("divergence_loss", 0.0, "divergence_loss: 0.0 is out of range"),
    ("strategy.beta", -0.1, "strategy.beta: -0.1 is out of range"),
    ("strategy.alpha", 0.0, "strategy.alpha: 0.0 is out of range"),
    ("strategy.p", 0.0, "strategy.p: 0.0 is out of range"),
    ("strategy.p", 1.5, "strategy.p: 1.5 is out of range"),
    ("strategy.k", 0, "strategy.k: 0 is out of range"),
    ("strategy.ns", 0, "strategy.ns: 0 is out of range"),
    # non-finite numbers
    ("lr", NAN, "lr: expected a finite number, got nan"),
    ("lr", INF, "lr: expected a finite number, got inf"),
    ("momentum", -INF, "momentum: expected a finite number, got -inf"),
    ("strategy.beta", NAN, "strategy.beta: expected a finite number"),
    ("strategy.p", INF, "strategy.p: expected a finite number"),
    ("divergence_loss", INF, "divergence_loss: expected a finite number"),
    ("client_fraction", NAN, "client_fraction: expected a finite number"),
    ("clients", NAN, "clients: expected an integer"),
    # unknown choices
    ("dataset", "imagenet", "dataset: unknown value 'imagenet'; valid:"),
    ("model", "vgg", "model: unknown value 'vgg'"),
    ("partition", "weird", "partition: unknown value 'weird'"),
    ("engine", "gpu", "engine: unknown value 'gpu'"),
    ("device", "tpu", "device: unknown value 'tpu'"),
    ("strategy.name", "fedprox", "strategy.name: unknown value 'fedprox'"),
    ("strategy.selection", "best", "strategy.selection: unknown value"),
    ("strategy.relevance", "sign", "strategy.relevance: unknown value"),
    ("strategy.aggregate", "mean", "strategy.aggregate: unknown value"),
    ("strategy.index_encoding", "zip", "strategy.index_encoding: unknown value"),
    # impossible combinations
    ("strategy.ns", N_PARAMS + 1, f"strategy.ns: {N_PARAMS + 1} is out of range; allowed [1, {N_PARAMS}]"),
    ("strategy.ns", 10**12, "strategy.ns: 1000000000000 is out of range"),
    ("strategy.k", 5, "strategy.k: 5 is out of range; allowed [1, 4]"),
    ("model", "femnist_cnn", "model: femnist_cnn needs 28x28"),
    ("partition", "natural", "partition: 'natural' needs a dataset with natural client ids"),
    # data options
    ("dataset_options.test_fraction", 0.0, "dataset_options.test_fraction: 0.0 is out of range"),
    ("dataset_options.test_fraction", 1.0, "dataset_options.test_fraction: 1.0 is out of range"),
    ("dataset_options.test_fraction", NAN, "dataset_options.test_fraction: expected a finite number"),
    ("dataset_options.test_fraction", "a fifth", "dataset_options.test_fraction: expected a number"),
]


@pytest.mark.parametrize("key, value, fragment", CASES, ids=[f"{k}={v!r}" for k, v, _ in CASES])
def test_mutated_config_file_exit_code_2(key, value, fragment):
    rc, err = simulate_cli(toml_text(with_value(key, value)))
    assert_usage_error(rc, err, fragment)


PARTITION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("dirichlet", {"alpha": 0}, "partition_options.alpha: 0 is out of range"),
    ("dirichlet", {"alpha": -1.0}, "partition_options.alpha: -1.0 is out of range"),
    ("dirichlet", {"alpha": NAN}, "partition_options.alpha: expected a finite number"),
    ("dirichlet", {"alpha": INF}, "partition_options.alpha: expected a finite number"),
    ("dirichlet", {"alpha": "low"}, "partition_options.alpha: expected a number"),
    ("dirichlet", {"min_size": 0}, "partition_options.min_size: 0 is out of range"),
    ("dirichlet", {"min_size": 10**9}, "partition_options.min_size: 1000000000 is out of range"),
    ("dirichlet", {"min_size": 1.5}, "partition_options.min_size: expected an integer"),
    ("dirichlet", {"shards_per_client": 2}, "partition_options.shards_per_client: unknown option"),
    ("shards", {"shards_per_client": 0}, "partition_options.shards_per_client: 0 is out of range"),
    ("shards", {"shards_per_client": 10**6}, "partition_options.shards_per_client: 1000000 is out of range"),
    ("shards", {"shards_per_client": NAN}, "partition_options.shards_per_client: expected an integer"),
    ("shards", {"alpha": 0.5}, "partition_options.alpha: unknown option"),
    ("iid", {"min_size": 1}, "partition_options.min_size: unknown option"),
]


@pytest.mark.parametrize("scheme, options, fragment", PARTITION_CASES,
                         ids=[f"{s}-{o}" for s, o, _ in PARTITION_CASES])
def test_bad_partition_options_exit_code_2(scheme, options, fragment):
    data = with_value("partition", scheme)
    data["partition_options"] = options
    rc, err = simulate_cli(toml_text(data))
    assert_usage_error(rc, err, fragment)


@pytest.mark.parametrize("dataset", ["femnist", "mnist", "cifar10"])
def test_file_datasets_missing_or_bad_path_exit_code_2(dataset, tmp_path):
    base = with_value("dataset", dataset)
    rc, err = simulate_cli(toml_text(base))                                   # missing key: path
    assert_usage_error(rc, err, "dataset_options.path: required")
    rc, err = simulate_cli(toml_text(with_value("dataset_options.path", str(tmp_path / "nowhere"), base)))
    assert_usage_error(rc, err, "dataset_options.path:", "is not a directory")
    rc, err = simulate_cli(toml_text(with_value("dataset_options.path", str(tmp_path), base)))  # empty dir
    assert_usage_error(rc, err, "dataset_options.path:")


# ----- the file itself -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "clients = = 3",
    "clients = 3\nclients = 4",
    "[strategy]\nname = 'qsfl'\n[strategy]\nns = 2",
    "lr = 0.1.2",
    "dataset = \"digits",
    "[strategy\nname = 'qsfl'",
    "\x00\x01\x02",
])
def test_bad_toml_exit_code_2_names_the_file(text, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    rc, err = simulate_cli(None, config_path=path)
    assert_usage_error(rc, err, str(path), "invalid TOML")


def test_non_utf8_file_exit_code_2(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('dataset = "d\xefgits"\n'.encode("latin-1"))
    rc, err = simulate_cli(None, config_path=path)
    assert_usage_error(rc, err, str(path), "invalid TOML")


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_bad_config_path_exit_code_2(kind, tmp_path):
    path = tmp_path / "nope.toml" if kind == "missing" else tmp_path
    rc, err = simulate_cli(None, config_path=path)
    assert_usage_error(rc, err, str(path))


# Regression: load_toml let OSError through (EIO here; PermissionError for a non-root user).
def test_unreadable_config_file_exit_code_2():
    rc, err = simulate_cli(None, config_path="/proc/self/mem")   # is_file() but every read fails with EIO
    assert_usage_error(rc, err, "/proc/self/mem")


# Regression: an empty --config file was read as "all defaults" (20 clients, 20 rounds) and ran.
@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_config_file_exit_code_2(text, monkeypatch):
    import qsfl.sim

    def refuse(*args, **kwargs):   # an accepted empty file must not cost a 20-round simulation here
        raise AssertionError("the empty config was accepted and a simulation started")

    monkeypatch.setattr(qsfl.sim, "simulate", refuse)
    rc, err = simulate_cli(text)
    assert_usage_error(rc, err, "empty")


# Regression: --out at an existing file (or below one) ran the whole simulation, then History.save's mkdir raised
# FileExistsError/NotADirectoryError.
@pytest.mark.parametrize("target", ["file", "below_a_file"])
def test_out_path_that_is_a_file_exit_code_2(target, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker if target == "file" else blocker / "sub"
    config = tmp_path / "c.toml"
    config.write_text(toml_text(VALID))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["simulate", "--config", str(config), "--out", str(out), "--quiet"])
    assert_usage_error(rc, err.getvalue(), "--out")


# ----- crashes this suite found in qsfl/ (fixed; kept as regression tests) ---------------------------------
# Regression: MLP hidden / CNN1D channels were unvalidated, so int("a"), int(nan), nn.Linear(-1) or a conv with
# 1.5 channels raised ValueError/RuntimeError tracebacks.

@pytest.mark.parametrize("model, options", [
    ("mlp", {"hidden": "abc"}),
    ("mlp", {"hidden": ["a"]}),
    ("mlp", {"hidden": [-1]}),
    ("mlp", {"hidden": [NAN]}),
    ("cnn1d", {"channels": 0}),
    ("cnn1d", {"channels": -1}),
    ("cnn1d", {"channels": 1.5}),
    ("cnn1d", {"channels": NAN}),
])
def test_bad_model_options_exit_code_2(model, options):
    data = with_value("model", model)
    data["model_options"] = options
    rc, err = simulate_cli(toml_text(data))
    assert_usage_error(rc, err, f"model_options.{next(iter(options))}")


# Regression: test_fraction = 0.0001 left digits without a test split -> ZeroDivisionError in evaluate.
def test_tiny_test_fraction_exit_code_2():
    rc, err = simulate_cli(toml_text(with_value("dataset_options.test_fraction", 0.0001)))
    assert_usage_error(rc, err, "dataset_options.test_fraction")


# Regression: dataset_options.path = 5 reached Path(5) -> TypeError.
@pytest.mark.parametrize("dataset", ["femnist", "mnist", "cifar10"])
def test_non_string_dataset_path_exit_code_2(dataset):
    data = with_value("dataset", dataset)
    data["dataset_options"] = {"path": 5}
    rc, err = simulate_cli(toml_text(data))
    assert_usage_error(rc, err, "dataset_options.path")


# Regression: a batch_size far above any client's sample count made the batched engine allocate
# np.empty((steps, clients, batch_size)) -> MemoryError (6.9 EiB for 1e18).
def test_huge_batch_size_does_not_crash():
    rc, err = simulate_cli(toml_text(with_value("batch_size", 10**18)), "--engine", "batched")
    assert rc in (0, 2) and "Traceback" not in err


# ----- property-based: one random invalid value for one random key -----------------------------------------
INT_FIELDS = {  # key -> (low, high or None); only values outside are drawn
    "clients": (1, N_TRAIN), "rounds": (1, None), "local_epochs": (1, None), "batch_size": (1, None),
    "seed": (0, 2**63 - 1), "eval_every": (1, None), "strategy.k": (1, 4), "strategy.ns": (1, N_PARAMS),
}
FLOAT_FIELDS = {  # key -> (low, high, low_open, high_open)
    "client_fraction": (0.0, 1.0, True, False), "lr": (0.0, None, True, False),
    "momentum": (0.0, 1.0, False, True), "weight_decay": (0.0, None, False, False),
    "target_accuracy": (0.0, 1.0, False, False), "max_chunk_mb": (0.0, None, True, False),
    "divergence_loss": (0.0, None, True, False), "strategy.beta": (0.0, 1.0, False, False),
    "strategy.alpha": (0.0, 1.0, True, False), "strategy.p": (0.0, 1.0, True, False),
}
CHOICE_FIELDS = {
    "dataset": ("digits", "mnist1d", "synthetic", "femnist", "mnist", "cifar10"),
    "model": ("logreg", "mlp", "cnn1d", "femnist_cnn"), "partition": ("iid", "dirichlet", "shards", "natural"),
    "engine": ENGINES, "device": DEVICES, "strategy.name": STRATEGIES, "strategy.selection": SELECTIONS,
    "strategy.relevance": RELEVANCES, "strategy.aggregate": AGGREGATES,
    "strategy.index_encoding": INDEX_ENCODINGS,
}
BOOL_FIELDS = ("strategy.use_qj", "strategy.use_scss", "strategy.error_feedback")

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
other_types = st.one_of(words, st.lists(st.integers(0, 9), max_size=3),
                        st.dictionaries(words, st.integers(0, 9), min_size=1, max_size=2))
non_finite = st.sampled_from([NAN, INF, -INF])


@st.composite
def invalid_int(draw, low, high):
    outside = [st.integers(max_value=low - 1).filter(lambda v: v > -2**63)]
    if high is not None and high < 2**63 - 1:   # TOML integers stop at 2**63 - 1
        outside.append(st.integers(min_value=high + 1, max_value=2**63 - 1))
    return draw(st.one_of(*outside, st.booleans(), non_finite,
                          st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v)),
                          st.integers(-1000, 1000).map(float), other_types))


@st.composite
def invalid_float(draw, low, high, low_open, high_open):
    below = st.floats(max_value=low, exclude_max=not low_open, allow_nan=False, allow_infinity=False)
    outside = [below]
    if high is not None:
        outside.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False, allow_infinity=False))
    return draw(st.one_of(*outside, non_finite, st.booleans(), other_types))


@st.composite
def one_bad_key(draw):
    """(dotted key, invalid value, expected key prefix of the error)."""
    kind = draw(st.sampled_from(["int", "float", "choice", "bool", "unknown"]))
    if kind == "int":
        key = draw(st.sampled_from(sorted(INT_FIELDS)))
        return key, draw(invalid_int(*INT_FIELDS[key])), key
    if kind == "float":
        key = draw(st.sampled_from(sorted(FLOAT_FIELDS)))
        return key, draw(invalid_float(*FLOAT_FIELDS[key])), key
    if kind == "choice":
        key = draw(st.sampled_from(sorted(CHOICE_FIELDS)))
        value = draw(st.one_of(words.filter(lambda w: w not in CHOICE_FIELDS[key]),
                               st.integers(), st.booleans(), non_finite))
        return key, value, key
    if kind == "bool":
        key = draw(st.sampled_from(BOOL_FIELDS))
        return key, draw(st.one_of(st.integers(), words, non_finite)), key
    table = draw(st.sampled_from(["", "strategy.", "model_options.", "dataset_options.", "partition_options."]))
    known = {f.split(".")[-1] for f in (*INT_FIELDS, *FLOAT_FIELDS, *CHOICE_FIELDS, *BOOL_FIELDS)}
    known |= {"dataset_options", "model_options", "partition_options", "strategy", "test_fraction", "seed"}
    name = draw(words.filter(lambda w: w not in known))
    return table + name, draw(st.one_of(st.integers(0, 9), words)), table + name


def as_set_literal(value: Any) -> str | None:
    """The --set right-hand side for a scalar or list (None for tables, which --set cannot spell)."""
    if isinstance(value, dict):
        return None
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


@given(bad=one_bad_key(), via_set=st.booleans())
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
def test_any_single_bad_value_exit_code_2_naming_the_key(bad, via_set):
    key, value, named = bad
    literal = as_set_literal(value) if via_set else None
    if literal is not None:   # the same mistake made on the command line
        rc, err = simulate_cli(toml_text(VALID), "--set", f"{key}={literal}")
    else:
        rc, err = simulate_cli(toml_text(with_value(key, value)))
    assert_usage_error(rc, err, named)


@given(st.data())
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True)
def test_corrupted_toml_text_only_ever_raises_config_error(data):
    """Byte-level damage to a valid file: reading + validating raises ConfigError or succeeds, nothing else."""
    text = toml_text(VALID)
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 8))
    junk = data.draw(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6))
    mutated = text[:pos] + junk + text[pos + cut:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(mutated, encoding="utf-8")
        try:
            SimConfig.from_dict(load_toml(path))
        except ConfigError as exc:
            assert str(exc).strip()
        except TypeError as exc:  # pragma: no cover - would be a crash
            pytest.fail(f"TypeError for {mutated!r}: {exc}")


# ----- a few in a real process: exit code and no traceback as a user sees them ------------------------------
@pytest.mark.parametrize("data, fragment", [
    (with_value("lr", NAN), "lr: expected a finite number, got nan"),                     # at parse time
    (with_value("strategy.ns", N_PARAMS + 1), "strategy.ns: 651 is out of range"),      # after the model is built
], ids=["nan-lr", "ns-above-parameter-count"])
def test_bad_config_in_a_real_process_has_no_traceback(data, fragment, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(toml_text(data))
    proc = subprocess.run([sys.executable, "-m", "qsfl_cli", "simulate", "--config", str(config),
                           "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and fragment in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
