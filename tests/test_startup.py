"""Start-up of a one-round ``qsfl simulate``: what it must not import once the engine cache is warm."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qsfl.data.datasets import _sklearn_digits

ROOT = Path(__file__).resolve().parents[1]


def test_digits_without_sklearn_equal_sklearns():
    from sklearn.datasets import load_digits

    data, target = _sklearn_digits()
    bunch = load_digits()
    np.testing.assert_array_equal(data, bunch.data)
    np.testing.assert_array_equal(target, bunch.target)
    assert data.shape == (1797, 64)


@pytest.mark.slow
def test_one_round_simulate_skips_the_slow_imports_with_a_warm_cache(tmp_path):
    """torch._dynamo (imported by the engine's check and dry run: seconds) and scikit-learn (~1 s) stay out of a
    one-round CLI run once the engine cache is warm; the first run fills the cache."""
    code = textwrap.dedent("""
        import sys
        import qsfl_cli
        rc = qsfl_cli.main(["simulate", "--rounds", "1", "--clients", "4", "--quiet", "--out", sys.argv[1]])
        print("RESULT", rc, "torch._dynamo" in sys.modules, "sklearn" in sys.modules)
    """)
    env = {**os.environ, "QSFL_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}

    def run(out: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / out)], capture_output=True, text=True,
                              env=env, cwd=ROOT, check=True)
        return next(line for line in proc.stdout.splitlines() if line.startswith("RESULT")).split()[1:]

    assert run("cold") == ["0", "True", "False"]       # the first run measures and fills the cache
    assert run("warm") == ["0", "False", "False"]
    assert len(list((tmp_path / "cache" / "engine").glob("*.json"))) == 2
