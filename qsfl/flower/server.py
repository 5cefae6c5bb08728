"""The ServerApp of a qsfl federation: connect the nodes, run :class:`~qsfl.flower.strategy.QSFLStrategy` with
Flower's ``Strategy.start``, write the results."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from qsfl.config import load_config
from qsfl.engine.threads import configure_threads
from qsfl.errors import ConfigError
from qsfl.flower.strategy import QSFLStrategy


def server_app(config_path: str | Path) -> ServerApp:
    """A ServerApp running the config in ``config_path`` (a SimConfig TOML file).

    Run config keys (``[tool.flwr.app.config]``, or ``flwr run --run-config``): ``result-dir`` (where
    history.json, weights.npy and config.toml go), ``num-server-rounds`` (0: the config's rounds),
    ``timeout`` (seconds per exchange), ``fraction-evaluate``, ``threads`` (torch threads), ``connect-wait``
    (seconds to wait for the SuperNodes).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = context.run_config
        configure_threads(int(rc.get("threads", 1)))
        config = load_config(config_path)
        rounds = int(rc.get("num-server-rounds", 0))
        if rounds < 0:
            raise ConfigError(f"num-server-rounds: {rounds} is out of range; allowed [0, inf] (0: the config's)")
        if rounds:
            config = config.replace(rounds=rounds)
        if "result-dir" not in rc:
            raise ConfigError("result-dir: missing from the run config ([tool.flwr.app.config] or --run-config)")
        strategy = QSFLStrategy(config, timeout=float(rc.get("timeout", 3600.0)),
                                fraction_evaluate=float(rc.get("fraction-evaluate", 0.0)))
        strategy.connect(grid, wait_s=float(rc.get("connect-wait", 120.0)))
        strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=config.rounds,
                       timeout=strategy.timeout, evaluate_fn=strategy.evaluate_global)
        strategy.save(Path(str(rc["result-dir"])))

    return app
