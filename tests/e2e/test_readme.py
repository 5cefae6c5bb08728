"""Every command in the README's code blocks, and in the docs pages its operations chapters moved to
(:data:`COMMAND_DOCS`), runs as written (with a small round/trial budget added), so they cannot drift from the
code. Commands run in a scratch directory that holds the repository's ``studies/`` and ``examples/``; ``qsfl``
commands run in this process (fast), in document order, so later commands see what earlier ones wrote
(``--resume``, ``compare``, ``report``)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
from pathlib import Path

import pytest
import torch

from qsfl.environment import package_version
from qsfl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
COMMAND_DOCS = (README, REPO / "docs" / "femnist.md", REPO / "docs" / "postgres.md")   # their commands run here
POSTGRES_ENV = "QSFL_TEST_POSTGRES_URL"

# small budget: appended to each command (later --set wins); the GA needs a population divisible by 4 for NSGA-II
BUDGET = {"simulate": ["--set", "rounds=2"],
          "tune": ["--set", "base.rounds=2", "--set", "ga.population=4", "--set", "ga.generations=1",
                   "--set", "optuna.n_trials=2"],
          "compare": ["--rounds", "2", "--seeds", "100"]}
FAST = ("simulate", "data")        # qsfl subcommands cheap enough for the default suite


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^ *```(\w*)\n(.*?)^ *```", text, re.S | re.M)]


def shell_commands(body: str) -> list[str]:
    """One string per command of a shell block: continuation lines joined, comments dropped, && split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&")]
    return out


def documented_blocks() -> list[tuple[str, str]]:
    """The code blocks of the README, then of each page of :data:`COMMAND_DOCS`, in order."""
    return [block for doc in COMMAND_DOCS for block in code_blocks(doc.read_text())]


def readme_commands() -> list[str]:
    """Every shell command of the README and the pages of :data:`COMMAND_DOCS`, in order."""
    return [c for lang, body in documented_blocks() if lang in ("bash", "sh", "console", "")
            for c in shell_commands(body)]


def python_blocks() -> list[str]:
    return [body for lang, body in documented_blocks() if lang == "python"]


def split_env(command: str) -> tuple[dict[str, str], list[str]]:
    """Leading NAME=value assignments of a shell command, and the rest of its words."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def kind(command: str) -> str:
    """pip | pytest | qsfl <subcommand> | unknown."""
    words = split_env(command)[1]
    if words[:2] == ["pip", "install"]:
        return "pip"
    if words[:3] == ["python", "-m", "pytest"]:
        return "pytest"
    if words[0] == "qsfl":
        return f"qsfl {words[1]}"
    return "unknown"


def check_pip(command: str) -> None:
    """A README install command: what it installs is installed here (the suite cannot reinstall offline)."""
    for arg in shlex.split(command)[2:]:
        if arg.startswith("torch=="):
            assert torch.__version__.split("+")[0] == arg.split("==")[1], f"README pins {arg}, torch is {torch.__version__}"
        elif arg in ("-e", "-q"):
            continue
        elif arg.startswith("."):
            assert package_version("qsfl-tune"), "qsfl-tune is not installed"
            extras = re.findall(r"\[(.*)\]", arg)
            for extra in (extras[0].split(",") if extras else []):
                needs = {"dev": ["pytest", "hypothesis", "ruff", "mypy"], "postgres": ["psycopg2-binary"]}[extra]
                missing = [n for n in needs if not package_version(n)]
                assert not missing, f"{command}: {missing} not installed"
        else:
            raise AssertionError(f"unknown pip argument {arg!r} in {command!r}")


def argv_of(command: str) -> list[str]:
    """The qsfl argv of a README command, shell expansions done ($VAR, $(hostname)) and the budget added."""
    text = command.replace("$(hostname)", socket.gethostname())
    words = [os.path.expandvars(w) for w in split_env(text)[1]][1:]
    budget = BUDGET.get(words[0], [])
    if words[0] == "tune" and "\n[fidelity]" in Path(words[1]).read_text():   # a first rung below the 2 rounds
        budget = [*budget, "--set", "fidelity.min_rounds=1"]
    return words + budget


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working directory with the repository's studies/ and examples/, one torch thread."""
    for name in ("studies", "examples"):   # copies: a spec's relative data path must resolve inside tmp_path
        shutil.copytree(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def run_commands(commands: list[str], capsys, monkeypatch) -> None:
    from qsfl_cli import main

    for command in commands:
        k = kind(command)
        if k == "pip":
            check_pip(command)
        elif k == "pytest":
            assert command == "python -m pytest -q", command   # the suite this test is part of
        else:
            env = split_env(command)[0]
            if "PYTHONPATH" in env:   # as the shell would: this process and the workers it starts
                path = os.path.abspath(env.pop("PYTHONPATH"))
                monkeypatch.syspath_prepend(path)
                env["PYTHONPATH"] = os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            try:
                rc = main(argv_of(command))
            except ConfigError as exc:
                pytest.fail(f"{command}: {exc}")
            err = capsys.readouterr().err
            assert rc == 0, f"{command!r} exited {rc}: {err[-2000:]}"


# ----- the README's structure -----------------------------------------------------------------------------
def test_first_two_lines_are_the_install_and_quickstart_and_the_test_commands():
    commands = readme_commands()
    block = code_blocks(README.read_text())[0][1].splitlines()
    assert block == ["pip install torch==2.13.0 && pip install -e . && qsfl tune studies/quickstart.toml --out "
                     "out/quickstart",
                     'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q']
    assert commands[2] == "qsfl tune studies/quickstart.toml --out out/quickstart"


def test_the_readme_links_every_page_whose_commands_run_here():
    text = README.read_text()
    assert all(f"`docs/{doc.name}`" in text for doc in COMMAND_DOCS[1:])


def test_the_readme_strategies_table_lists_every_registered_strategy():
    from qsfl.strategy_config import config_class, strategy_names

    builtin = {n for n in strategy_names() if config_class(n).__module__ == "qsfl.strategy_config"}
    table = README.read_text().split("## Strategies", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `(\w+)`", table, re.M))
    assert len(builtin) == 7 and names == builtin, (names, builtin)


def test_every_readme_command_is_one_this_test_runs():
    kinds = [kind(c) for c in readme_commands()]
    assert "unknown" not in kinds, [c for c in readme_commands() if kind(c) == "unknown"]
    assert {"pip", "pytest", "qsfl simulate", "qsfl tune", "qsfl compare", "qsfl report", "qsfl data"} <= set(kinds)
    assert python_blocks()


def test_install_commands_match_this_environment():
    for command in readme_commands():
        if kind(command) == "pip":
            check_pip(command)


def test_a_wrong_readme_command_fails_this_test(scratch, capsys, monkeypatch):
    """The runner catches an example that exits 2 (the old first simulate example did)."""
    with pytest.raises(AssertionError, match="exited 2"):
        run_commands(["qsfl simulate --clients 4 --set partition_options.alpha=0.5 --out out/bad"], capsys, monkeypatch)


# ----- running the commands -------------------------------------------------------------------------------
def test_readme_simulate_and_data_commands_run(scratch, capsys, monkeypatch):
    from fixtures_data import write_leaf

    write_leaf(scratch / "data" / "leaf" / "femnist" / "data", {"w0": (6, 2), "w1": (5, 2)})
    fast = [c for c in readme_commands() if kind(c) in {f"qsfl {k}" for k in FAST}]
    assert len(fast) >= 3
    run_commands(fast, capsys, monkeypatch)
    assert (scratch / "out" / "run1" / "history.csv").is_file() and (scratch / "out" / "run2" / "config.toml").is_file()


def test_readme_python_blocks_run(scratch, monkeypatch):
    monkeypatch.syspath_prepend(str(scratch))   # run from the repository root, as the README's reader does
    for body in python_blocks():
        code = body.replace("rounds=30", "rounds=2")   # the small budget
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def study_blocks() -> list[list[str]]:
    """The shell blocks with a study command (tune, compare, report), each a list of commands; each block runs
    from a fresh checkout, in order (a later command may continue an earlier one: --resume, compare, report)."""
    blocks = [shell_commands(body) for lang, body in documented_blocks() if lang in ("bash", "sh", "")]
    return [b for b in blocks if any(kind(c) in ("qsfl tune", "qsfl compare", "qsfl report") and "$URL" not in c
                                     for c in b)]


@pytest.mark.slow
@pytest.mark.parametrize("block", range(len(study_blocks())))
def test_readme_study_blocks_run_in_order(scratch, capsys, monkeypatch, block):
    """tune (GA, resume, Optuna, Pareto with workers, the paper's FEMNIST study on a 50-writer fixture), compare,
    report: each block's commands as written, in a fresh directory, with a small budget."""
    from fixtures_data import write_leaf

    write_leaf(scratch / "data" / "leaf" / "femnist" / "data", {f"w{i}": (3, 1) for i in range(50)})
    commands = study_blocks()[block]
    run_commands(commands, capsys, monkeypatch)
    outs = [argv_of(c)[argv_of(c).index("--out") + 1] for c in commands if kind(c) == "qsfl tune"]
    assert all((scratch / out / "trials.parquet").is_file() for out in outs)


def test_the_study_blocks_cover_tune_compare_and_report():
    kinds = {kind(c) for b in study_blocks() for c in b}
    assert {"qsfl tune", "qsfl compare", "qsfl report"} <= kinds and len(study_blocks()) >= 2


@pytest.mark.postgres
def test_readme_postgres_command_runs(scratch, capsys, monkeypatch):
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} not set (scripts/postgres.sh url)")
    import uuid

    import sqlalchemy

    # a fresh schema: the server outlives a test run, and a study of the same name left by an earlier run (other
    # budget, other spec) would make this one a resume instead of the fresh start the README describes
    schema = f"qsfl_readme_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as con:
            con.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
        monkeypatch.setenv("URL", f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}")
        commands = [c for c in readme_commands() if "$URL" in c]
        assert commands
        run_commands(commands, capsys, monkeypatch)
    finally:
        with engine.begin() as con:
            con.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()
