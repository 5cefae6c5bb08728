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

ROOT = Path(__file__).resolve().parents[2]


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


# ----- the CLI: parsing without torch, the forkserver started first, the exit ---------------------------------
def _parse(*argv: str):
    import qsfl_cli

    args = qsfl_cli.build_parser().parse_args(list(argv))
    args.argv = list(argv)
    return args


def test_parsing_the_command_line_does_not_import_torch():
    """The parsers of every subcommand are built and a tune command parsed without torch, numpy or pandas
    (``import qsfl`` and ``import tuning`` are light): the CLI can start the forkserver before its own import."""
    code = textwrap.dedent("""
        import sys
        import qsfl_cli
        qsfl_cli.build_parser().parse_args(["tune", "studies/quickstart.toml", "--workers", "2"])
        import qsfl, tuning, tuning.cli, tuning.forkserver, tuning.workers
        print(sorted(m for m in ("torch", "numpy", "pandas", "distributed") if m in sys.modules))
        print(qsfl.SimConfig.__name__, tuning.load_spec.__name__, "torch" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.splitlines() == ["[]", "SimConfig load_spec True"]   # and the lazy names still work


def test_planned_workers_reads_the_flags_then_the_spec_and_its_overrides(tmp_path):
    from tuning.cli import planned_workers

    spec = tmp_path / "s.toml"
    spec.write_text('[study]\nworkers = 3\ncluster = "local:2"\n')
    assert planned_workers(_parse("tune", str(spec))) == (3, "local:2")
    assert planned_workers(_parse("tune", str(spec), "--workers", "1", "--cluster", "tcp://h:8786")) == \
        (1, "tcp://h:8786")
    assert planned_workers(_parse("tune", str(spec), "--set", "study.workers=5", "--set", "study.cluster=local:4",
                                  "--set", "ga.population=4")) == (5, "local:4")
    spec.write_text("[study]\nname = 'x'\n")
    assert planned_workers(_parse("tune", str(spec))) == (1, None)
    assert planned_workers(_parse("tune", str(tmp_path / "missing.toml"), "--workers", "2")) == (2, None)
    spec.write_text("study = 3\n[[broken")            # not TOML: the command's own checks say so later
    assert planned_workers(_parse("tune", str(spec))) == (1, None)
    spec.write_text("study = 3\n")
    assert planned_workers(_parse("tune", str(spec), "--set", "study.workers=two")) == (1, None)
    assert planned_workers(_parse("compare", str(tmp_path), "--workers", "4")) == (4, None)
    assert planned_workers(_parse("compare", str(tmp_path), "--cluster", "local:2")) == (1, "local:2")


@pytest.mark.skipif(sys.platform == "win32", reason="no forkserver on Windows")
@pytest.mark.parametrize(("flags", "expected"), [
    (["--workers", "2"], "torch,qsfl.sim,tuning.objective,tuning.forkserver_guard"),
    (["--cluster", "local:2"], "distributed,torch,qsfl.sim,tuning.objective,tuning.forkserver_guard"),
    (["--workers", "1"], "none"),                        # serial: no second process importing torch
    (["--cluster", "tcp://127.0.0.1:1"], "none"),        # a remote cluster: its workers are elsewhere
])
def test_the_forkserver_starts_before_torch_is_imported_only_for_local_workers(flags, expected):
    """``start_workers_early`` starts the forkserver (with the right modules to preload) while this process has
    not imported torch yet; nothing for a serial run or a remote cluster. A process forked from it has them."""
    if "local:2" in flags:
        pytest.importorskip("distributed")
    code = textwrap.dedent(f"""
        import sys
        import qsfl_cli
        from tuning import cli, forkserver
        args = qsfl_cli.build_parser().parse_args(["tune", "studies/quickstart.toml", *{flags!r}])
        started = cli.start_workers_early(args)
        print("torch" in sys.modules, started)
        if started:
            forkserver.wait_forkserver()
            with forkserver.pool_context().Pool(1) as pool:
                names = "distributed torch qsfl.sim tuning.objective tuning.forkserver_guard".split()
                print(",".join(pool.apply(eval, (f"[m for m in {{names!r}} if m in __import__('sys').modules]",))))
        else:
            print("none")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    started = expected != "none"
    assert proc.stdout.split() == ["False", str(started), expected], proc.stderr


def test_the_program_ends_after_a_finished_command_with_its_code_and_a_clean_stderr(tmp_path):
    """A finished command ends the ordinary way: the exit code is kept, its outputs are complete, and the exit
    handlers ran (no semaphore of the closed pool left to the resource tracker, which would warn on stderr)."""
    from helpers import GA_SPEC, qsfl_cmd, write_spec

    spec = write_spec(tmp_path, GA_SPEC, "tiny")
    proc = subprocess.run(qsfl_cmd("tune", str(spec), "--out", str(tmp_path / "out"), "--no-report", "--quiet",
                                   "--workers", "2"), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "out" / "summary.json").is_file() and (tmp_path / "out" / "environment.json").is_file()
    proc = subprocess.run(qsfl_cmd("tune", str(spec), "--workers", "0"), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --workers"), proc.stderr


def test_the_program_ends_the_ordinary_way_under_a_profiler(tmp_path):
    """Under cProfile (``python -m cProfile -o FILE -m qsfl_cli ...``) the program is not cut short: the profiler
    writes its file after main() returns."""
    prof = tmp_path / "run.prof"
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "qsfl_cli", "data", "check",
                           str(tmp_path), "--dataset", "mnist"], capture_output=True, text=True, cwd=ROOT)
    assert proc.stderr.startswith("error: dataset_options.path"), proc.stderr   # (cProfile swallows the exit code)
    assert prof.is_file() and prof.stat().st_size > 0
