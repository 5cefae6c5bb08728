"""qsfl: a seeded, reproducible federated-learning simulator of QSFL and its baselines."""

from qsfl.config import ConfigError, SimConfig, StrategyConfig, load_config
from qsfl.history import History

__version__ = "0.1.0"


def simulate(config: SimConfig, **kwargs) -> History:
    """Run one federated simulation of ``config`` and return its History (see qsfl.sim.simulate)."""
    from qsfl.sim import simulate as _simulate

    return _simulate(config, **kwargs)


__all__ = ["ConfigError", "SimConfig", "StrategyConfig", "History", "load_config", "simulate", "__version__"]
