"""qsfl: a seeded, reproducible federated-learning simulator of QSFL and its baselines."""

from qsfl.config import SimConfig, StrategyConfig, load_config
from qsfl.errors import ConfigError
from qsfl.history import History

__version__ = "0.1.0"


def simulate(config: SimConfig, **kwargs) -> History:
    """Run one federated simulation of ``config`` and return its History (see qsfl.sim.simulate)."""
    from qsfl.sim import simulate as _simulate

    return _simulate(config, **kwargs)


__all__ = ["ConfigError", "History", "SimConfig", "StrategyConfig", "__version__", "load_config", "simulate"]
