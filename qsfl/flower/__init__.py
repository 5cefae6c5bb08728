"""qsfl in a real federation: QSFL (with its ``authors_code`` variant), FedAvg and top-k as a Flower strategy and
client, built from the simulator's own functions and equal to it (tests/qsfl/test_flower.py; docs/flower.md).

Optional: needs ``pip install "qsfl-tune[flower]"``. Modules: ``protocol`` (a round as messages, no Flower),
``strategy`` (the Flower server strategy), ``server`` / ``client`` (ServerApp / ClientApp), ``export`` (writes
a Flower app; no Flower needed). This package imports ``qsfl`` only.
"""
