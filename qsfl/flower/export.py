"""Write a Flower app (ServerApp + ClientApp + pyproject.toml) that runs one SimConfig in a federation.

The app is three small modules around :func:`qsfl.flower.server.server_app` and
:func:`qsfl.flower.client.client_app`, and the config itself as ``qsfl.toml`` inside the app package (part of the
app bundle Flower ships to the SuperLink and SuperNodes). qsfl-tune must be installed (with its ``flower`` extra)
wherever the app runs; the app's own dependencies name only Flower, which Flower's runtime leaves as installed.
This module imports no Flower, so the command that writes an app works without it.
"""

from __future__ import annotations

import re
from pathlib import Path

from qsfl.config import SimConfig
from qsfl.errors import ConfigError
from qsfl.flower.protocol import check_config
from qsfl.io import atomic_write_text, dump_toml

PACKAGE = "qsfl_app"
CONFIG_FILE = "qsfl.toml"

SERVER = '''"""ServerApp: the qsfl strategy of {package}/{config} (written by `qsfl flower-app`)."""

from pathlib import Path

from qsfl.flower.server import server_app

app = server_app(Path(__file__).with_name("{config}"))
'''

CLIENT = '''"""ClientApp: a client of {package}/{config}; its node config's partition-id says which (written by
`qsfl flower-app`)."""

from pathlib import Path

from qsfl.flower.client import client_app

app = client_app(Path(__file__).with_name("{config}"))
'''


def federation_config(config: SimConfig) -> str:
    """The ``flwr run --federation-config`` value that simulates the config's clients, one CPU each."""
    return f"num-supernodes={config.clients} client-resources-num-cpus=1"


def run_command(app_dir: str | Path, config: SimConfig) -> str:
    """The command that runs the app in Flower's simulation runtime (docs/flower.md)."""
    return f'flwr run {app_dir} --stream --federation-config "{federation_config(config)}"'


def write_app(config: SimConfig, out_dir: str | Path, *, name: str = "qsfl-app", result_dir: str | Path | None = None,
              overwrite: bool = False, source: str = "") -> Path:
    """Write the app for ``config`` to ``out_dir``; returns its directory.

    ``result_dir`` (default ``out_dir/results``, made absolute: the ServerApp runs from Flower's copy of the app)
    is where the ServerApp writes history.json, weights.npy and config.toml; ``source`` is noted in the files.
    """
    config = check_config(config)
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ConfigError(f"--name: {name!r} must be lower-case letters, digits and '-', starting with a letter")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out: {str(out)!r} is not empty; pass --overwrite to replace the app's files")
    pkg = out / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    results = Path(result_dir) if result_dir is not None else out / "results"
    description = f"qsfl-tune's {config.strategy.name} as a Flower app" + (f" from {source}" if source else "")
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": name, "version": "1.0.0",
                    "description": description,
                    "license": "MIT",
                    # qsfl-tune[flower] must be installed where the app runs (it is not on a package index)
                    "dependencies": ["flwr[simulation]>=1.42"]},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "qsfl-tune",
                                  "components": {"serverapp": f"{PACKAGE}.server_app:app",
                                                 "clientapp": f"{PACKAGE}.client_app:app"},
                                  "config": {"result-dir": str(results.resolve()), "num-server-rounds": 0,
                                             "timeout": 600.0, "fraction-evaluate": 0.0, "threads": 1,
                                             "connect-wait": 120.0}}}},
    }
    atomic_write_text(out / "pyproject.toml", dump_toml(pyproject))
    atomic_write_text(pkg / "__init__.py", f'"""{name}: qsfl-tune in a Flower federation."""\n')
    atomic_write_text(pkg / "server_app.py", SERVER.format(package=PACKAGE, config=CONFIG_FILE))
    atomic_write_text(pkg / "client_app.py", CLIENT.format(package=PACKAGE, config=CONFIG_FILE))
    atomic_write_text(pkg / CONFIG_FILE, dump_toml(config.to_dict()))
    atomic_write_text(out / "README.md", readme(name, config, out, source))
    return out


def readme(name: str, config: SimConfig, out: Path, source: str) -> str:
    """The app's README: what it runs and how."""
    origin = f" from `{source}`" if source else ""
    return f"""# {name}

qsfl-tune's `{config.strategy.name}` strategy{origin} as a Flower app: {config.clients} clients, {config.rounds} rounds,
`{config.dataset}` / `{config.model}`, seed {config.seed} (the whole config: `{PACKAGE}/{CONFIG_FILE}`).

Needs `pip install "qsfl-tune[flower]"` (from a qsfl-tune checkout: `pip install -e ".[flower]"`) where it runs.

Simulation (Flower's simulation runtime, one virtual SuperNode per client):

    {run_command(out, config)}

Real SuperNodes: start each with
`--node-config "partition-id=<0..{config.clients - 1}> num-partitions={config.clients}"`.
Results: `history.json`, `weights.npy`, `config.toml` in the run config's `result-dir`. See qsfl-tune's
docs/flower.md.
"""
