"""Worker pools: where evaluations run. The one module for every parallel map of the project (the study
loop's batches for every searcher, the baseline, ``qsfl compare``).

* :class:`SerialWorkers`: in this process, in task order.
* :class:`PoolWorkers`: a local process pool (forkserver where available, else spawn; torch and qsfl
  preloaded in the forkserver so a worker starts in a fraction of a second).
* :class:`DaskWorkers`: a Dask cluster (``tcp://host:8786``) or ``local:N``, a LocalCluster of N worker
  processes on this machine. Dask re-runs the tasks of a worker that dies on the other workers.

Every backend runs each task with one torch thread (results never depend on the backend or the number of
workers) and loads each dataset once per process (``qsfl.sim.get_dataset``'s cache, warmed with ``base``'s
dataset when a pool worker starts, or with a Dask worker's first task). One shutdown and Ctrl-C path: a
``KeyboardInterrupt`` while waiting for results terminates the workers and is re-raised once; ``close()`` waits
for nothing left over, ``terminate()`` stops at once; both are idempotent.

Ctrl-C with a process pool, at any moment (docs/reliability.md):

* Pool processes never get a KeyboardInterrupt of their own (so they print no traceback): the pool is started
  from a helper thread that blocks SIGINT, and every process it starts (the forkserver, the workers) inherits
  that signal mask until :func:`init_pool_worker` ignores SIGINT. This process never blocks or ignores SIGINT.
* In this process, a SIGINT that arrives while the main thread is inside multiprocessing's code (starting the
  pool, waiting for a result, closing it) is deferred (:func:`ctrl_c_deferred`) and raised as KeyboardInterrupt
  at the next safe point, at most :data:`POLL_S` later: a KeyboardInterrupt raised inside the pool's own code
  can leave one of its locks held (``terminate()`` then waits forever) or a pool half started.
* A Ctrl-C while the pool starts abandons the start at once. The helper thread first waits for the forkserver
  (it imports torch: seconds on a busy machine) and creates the pool only once it is ready, so the start is
  abandoned before any of the pool's semaphores exist; the workers already started are stopped, and a pool that
  finishes starting later is terminated by the helper thread. A forkserver whose process exits goes with it
  (:mod:`tuning.forkserver_guard`).
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import itertools
import logging
import multiprocessing as mp
import re
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from qsfl.errors import ConfigError, check_range
from tuning.forkserver import DASK_PRELOAD, available, ensure_forkserver, pool_context, wait_forkserver
from tuning.interrupts import HAVE_SIGMASK, POLL_S, block_sigint_in_this_thread, ctrl_c_deferred

if TYPE_CHECKING:
    from qsfl.config import SimConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

LOCAL_PREFIX = "local:"
CONNECT_TIMEOUT_S = 30.0   # how long to wait for a Dask scheduler that does not answer
_ADDRESS = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")

Warm = tuple[str, dict[str, Any]] | None   # (dataset name, dataset options) to load when a worker starts


# ----- the cluster argument -----------------------------------------------------------------------------
def check_cluster(field: str, value: Any) -> str:
    """Validate a cluster argument: ``local:N`` (N >= 1) or a scheduler address such as ``tcp://host:8786``."""
    if isinstance(value, str):
        if value.startswith(LOCAL_PREFIX):
            n = value[len(LOCAL_PREFIX):]
            if n.isdigit() and int(n) >= 1:
                return value
        elif _ADDRESS.match(value):
            return value
    raise ConfigError(f"{field}: {value!r} is not a cluster; allowed: 'local:N' (N >= 1 worker processes on this "
                      f"machine) or a Dask scheduler address such as 'tcp://host:8786'")


def local_workers(cluster: str) -> int | None:
    """N of ``local:N``, None for a scheduler address."""
    return int(cluster[len(LOCAL_PREFIX):]) if cluster.startswith(LOCAL_PREFIX) else None


# ----- what every worker process does once --------------------------------------------------------------
def warm_spec(base: SimConfig | None) -> Warm:
    """The dataset a worker should load when it starts (None: nothing to preload)."""
    return None if base is None else (base.dataset, dict(base.dataset_options))


def setup_process(warm: Warm, threads: int = 1) -> None:
    """One torch thread, and the dataset loaded into this process's cache (``qsfl.sim.get_dataset``)."""
    from qsfl.engine.threads import configure_threads

    configure_threads(threads)
    if warm is None:
        return
    try:
        from qsfl.sim import get_dataset

        get_dataset(warm[0], dict(warm[1]))
    except Exception as exc:  # noqa: BLE001 - the evaluation itself reports the error with its context
        log.debug("worker warm-up failed: %s", exc)


def init_pool_worker(warm: Warm) -> None:
    """Pool initializer: ignore SIGINT (the parent handles Ctrl-C and terminates us), then :func:`setup_process`.

    The worker was started with SIGINT blocked (:func:`start_pool`): a Ctrl-C of its start-up is pending and
    is discarded when the signal is unblocked here, after it is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if HAVE_SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    setup_process(warm)


def _call_indexed(fn: Callable[[T], R], item: tuple[int, T]) -> tuple[int, R]:
    i, task = item
    return i, fn(task)


_SETUP_LOCK = threading.Lock()
_SETUP_DONE: set[Any] = set()


def _dask_call(fn: Callable[[T], R], warm: Warm, task: T) -> R:
    """A task on a Dask worker: set the process up once (threads, dataset), then run ``fn(task)``."""
    key = repr(warm)
    if key not in _SETUP_DONE:
        with _SETUP_LOCK:   # a worker may run several threads
            if key not in _SETUP_DONE:
                setup_process(warm)
                _SETUP_DONE.add(key)
    return fn(task)


# ----- the pools ----------------------------------------------------------------------------------------
class Workers(ABC):
    """Runs ``fn(task)`` for many tasks; see the module docstring. Use as a context manager."""

    n: int = 1   # how many tasks run at the same time

    @abstractmethod
    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[int, R]]:
        """(task index, result) pairs in completion order. Submits every task before returning (except
        :class:`SerialWorkers`, which runs each one when the iterator reaches it)."""

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Results in task order (each one as soon as it and all before it have finished)."""
        return _in_order(self.map_unordered(fn, tasks))

    def isolated(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` while nothing of this backend runs in this process (the GA's draws from Python's global
        ``random`` must not interleave with a backend's; only :class:`DaskWorkers` has such a thread)."""
        return fn(*args)

    @abstractmethod
    def close(self) -> None:
        """Release the workers (after the results were consumed)."""

    def terminate(self) -> None:
        """Stop the workers now, abandoning tasks still running."""
        self.close()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()

    def _guard(self, results: Iterator[tuple[int, R]]) -> Iterator[tuple[int, R]]:
        """The one Ctrl-C path: terminate the workers quietly, re-raise the KeyboardInterrupt once."""
        try:
            yield from results
        except KeyboardInterrupt:
            pass      # handled below, outside this block: its traceback would keep the pool's objects alive
        else:
            return
        del results
        self.terminate()
        raise KeyboardInterrupt


def _in_order(results: Iterator[tuple[int, R]]) -> Iterator[R]:
    early: dict[int, R] = {}
    nxt = 0
    for i, r in results:
        early[i] = r
        while nxt in early:
            yield early.pop(nxt)
            nxt += 1


class SerialWorkers(Workers):
    """Evaluate in this process, in task order, with one torch thread while a map runs (then restored)."""

    n = 1

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[int, R]]:
        return _one_thread((i, fn(task)) for i, task in enumerate(tasks))

    def close(self) -> None:
        pass


def _one_thread(results: Iterator[tuple[int, R]]) -> Iterator[tuple[int, R]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield from results
    finally:
        torch.set_num_threads(threads)   # a library caller gets its setting back


#: the longest an abandoned pool start that is already creating its pool is waited for (its forkserver is ready)
ABANDON_WAIT_S = 5.0


def start_pool(workers: int, warm: Warm) -> Any:
    """A ``multiprocessing.Pool`` of ``workers`` processes (:func:`init_pool_worker`), started from a helper thread
    that blocks SIGINT while this thread waits for it, ready for a Ctrl-C (see the module docstring).

    The helper thread waits for the forkserver (:func:`tuning.forkserver.ensure_forkserver`: started here, or earlier
    by :func:`start_forkserver_early`) before it creates the pool. KeyboardInterrupt (or any exception) while waiting
    abandons the start: before the pool is created, nothing is left to release (the helper thread sees it and
    returns); once it is being created (quick: the forkserver is ready), the workers already started are stopped, a
    pool that finished starting is terminated, and its semaphores are released before the exception is re-raised
    (a CLI that exits with ``os._exit`` would otherwise leave them to the resource tracker, which warns about them).
    """
    ctx = pool_context()
    forkserver = ctx.get_start_method() == "forkserver"
    lock = threading.Lock()
    box: dict[str, Any] = {}
    children_before = set(mp.active_children())

    def start() -> None:
        block_sigint_in_this_thread()   # the pool's own threads started here inherit it too (harmless)
        if forkserver:
            ensure_forkserver()
            wait_forkserver()
        with lock:
            if box.get("abandoned"):
                return
            box["creating"] = True
        try:
            pool = ctx.Pool(workers, initializer=init_pool_worker, initargs=(warm,))
        except BaseException as exc:  # noqa: BLE001 - handed over to the waiting thread
            with lock:
                if not box.get("abandoned"):   # else dropped: its traceback holds the half-built pool
                    box["error"] = exc
            return
        with lock:
            abandoned = box.get("abandoned", False)
            if not abandoned:
                box["pool"] = pool
        if abandoned:
            pool.terminate()

    thread = threading.Thread(target=start, name="qsfl-pool-start", daemon=True)
    thread.start()
    try:
        with ctrl_c_deferred() as interrupted:
            while thread.is_alive() and not interrupted():
                thread.join(POLL_S)
    except BaseException:
        with ctrl_c_deferred():
            with lock:
                box["abandoned"] = True
                pool = box.pop("pool", None)
                creating = box.get("creating", False)
            if pool is not None:
                pool.terminate()
            elif creating:
                _stop_start(children_before)
                thread.join(ABANDON_WAIT_S)
            del pool
            box.clear()
            gc.collect()   # the abandoned pool's semaphores
        raise
    if "error" in box:
        raise box.pop("error")
    return box.pop("pool")


def _stop_start(children_before: set[Any]) -> None:
    """Stop the workers an abandoned pool start has started so far."""
    for child in mp.active_children():
        if child not in children_before:
            child.terminate()


def _poll(source: list[Any]) -> Iterator[Any]:
    """The items of the pool's result iterator in ``source`` (``imap``/``imap_unordered``), waiting at most
    :data:`POLL_S` at a time so that a deferred Ctrl-C is raised within that time. The iterator (it references
    the pool) is held only in ``source``, which :meth:`PoolWorkers.terminate` empties: a KeyboardInterrupt raised
    in the caller's loop body keeps this generator alive in its traceback, not the pool's semaphores."""
    while source:
        with ctrl_c_deferred():
            try:
                item = source[0].next(timeout=POLL_S)
            except StopIteration:
                return
            except mp.TimeoutError:
                continue
        yield item


class PoolWorkers(Workers):
    """A local process pool of ``workers`` processes (one torch thread each, the dataset loaded once each)."""

    def __init__(self, workers: int, base: SimConfig | None = None) -> None:
        check_range("--workers", workers, 1, None, integer=True)
        self.n = workers
        self._pool: Any = None
        self._sources: list[list[Any]] = []   # the result iterators handed to _poll
        self._pool = start_pool(workers, warm_spec(base))

    def _results(self, start: Callable[[Any], Any]) -> Iterator[Any]:
        with ctrl_c_deferred():
            source = [start(self._pool)]
        self._sources = [s for s in self._sources if s] + [source]
        return _poll(source)

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[int, R]]:
        call = functools.partial(_call_indexed, fn)
        return self._guard(self._results(lambda pool: pool.imap_unordered(call, enumerate(tasks), chunksize=1)))

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        return (r for _, r in self._guard(enumerate(self._results(lambda pool: pool.imap(fn, tasks, chunksize=1)))))

    def close(self) -> None:
        """Wait for the workers to exit (quick: called once every result was consumed); a Ctrl-C meanwhile is
        raised when they have."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with ctrl_c_deferred():
                pool.close()
                pool.join()

    def terminate(self) -> None:
        pool, self._pool = self._pool, None
        for source in self._sources:
            source.clear()
        self._sources = []
        if pool is not None:
            with ctrl_c_deferred():
                pool.terminate()
                pool.join()
                del pool
                gc.collect()   # release the pool's semaphores now, not in an exit handler a CLI skips after Ctrl-C


class DaskWorkers(Workers):
    """Evaluations on a Dask cluster: ``local:N`` starts a LocalCluster of N processes (one thread each),
    any other value is the address of a running scheduler. Results stream back as they finish; the tasks
    of a worker that dies are re-run by Dask on the others (up to ``distributed.scheduler.allowed-failures``
    times per task, then the task fails with ``KilledWorker``)."""

    def __init__(self, cluster: str, base: SimConfig | None = None) -> None:
        check_cluster("--cluster", cluster)
        if not _have_distributed():   # before a forkserver is started for nothing
            raise ConfigError(f"--cluster {cluster}: needs Dask distributed; pip install -e \".[dask]\"")
        n = local_workers(cluster)
        forkserver = n is not None and _start_forkserver_for_dask()
        import dask
        from distributed import Client, LocalCluster
        if forkserver:   # ready before Dask sets its own modules to preload (no effect on a running forkserver)
            while not wait_forkserver(POLL_S):
                pass
        self.address = cluster
        # distributed logs at INFO through its own handler, and tracebacks of closed connections while a
        # cluster shuts down: keep warnings while we run, errors only while we close, and restore on close
        self._logger = logging.getLogger("distributed")
        self._log_level = self._logger.level
        self._logger.setLevel(max(self._log_level, logging.WARNING))
        self._warm = warm_spec(base)
        self._cluster: Any = None
        self._futures: dict[str, Any] = {}
        try:
            if n is not None:
                # processes=True: one GIL and one torch per worker; no dashboard (no port to bind, no bokeh)
                # silence_logs: a cancelled task, a killed worker or a heartbeat that races the shutdown is
                # not logged by every process of the cluster (a task's own error reaches us as its exception)
                with dask.config.set(_dask_worker_config(forkserver)):
                    self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                 dashboard_address=None, silence_logs=logging.CRITICAL)
                self.client: Any = Client(self._cluster)
            else:
                self.client = Client(cluster, timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            self.terminate()
            raise ConfigError(f"--cluster {cluster}: cannot connect to the Dask scheduler ({exc}); start it with "
                              f"`dask scheduler` and workers with `dask worker {cluster}` (docs/scaling.md)") from None
        self.n = n if n is not None else max(1, sum(self.client.nthreads().values()))

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[int, R]]:
        """Submit as many tasks as the cluster has threads, then one more each time one finishes.

        Like the pool's ``chunksize=1``, a worker that finishes early takes the next task. Submitted all at once, a
        few tasks (fewer than Dask counts as "root-ish") are assigned to workers up front by estimated occupancy,
        and a worker that finishes its short task first stays idle while a task waits behind a long one on the
        other (work stealing moves it late or not at all)."""
        from distributed import as_completed

        todo = iter(enumerate(tasks))
        index: dict[str, int] = {}

        def submit(i: int, task: T) -> Any:
            # pure=False: a task that equals another one is still its own evaluation
            fut = self.client.submit(_dask_call, fn, self._warm, task, pure=False)
            index[fut.key] = i
            self._futures[fut.key] = fut
            return fut

        done = as_completed([submit(i, task) for i, task in itertools.islice(todo, self._slots())],
                            with_results=True)

        def results() -> Iterator[tuple[int, R]]:
            for fut, result in done:   # as_completed holds a future until it is yielded; then it is released
                self._futures.pop(fut.key, None)
                following = next(todo, None)
                if following is not None:
                    done.add(submit(*following))
                yield index.pop(fut.key), result
        return self._guard(results())

    def isolated(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` on the client's event-loop thread, which runs nothing else of Dask meanwhile.

        Dask's client (and a LocalCluster's scheduler, on the same event loop in this process) draw from Python's
        global ``random`` in that thread at moments that depend on timing (e.g. ``random.choice`` of the worker to
        fetch each result from). The GA's DEAP operators draw from the same stream, so its ``ask`` runs here: no
        Dask draw can fall between two of the GA's, and a GA on a cluster proposes what a serial run proposes."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["result"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                box["error"] = exc
            finally:
                done.set()

        self.client.loop.add_callback(call)
        while not done.wait(POLL_S):
            pass
        if "error" in box:
            raise box.pop("error")
        return box.pop("result")

    def _slots(self) -> int:
        """Tasks to keep submitted: the cluster's threads now (workers may have joined or left), at least 1."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except (OSError, TimeoutError):
            return max(1, self.n)

    def close(self) -> None:
        if self._futures:
            self.client.cancel(list(self._futures.values()))
            self._futures.clear()
        client, cluster = getattr(self, "client", None), self._cluster
        self.client = None
        self._cluster = None
        self._logger.setLevel(max(self._log_level, logging.ERROR))
        try:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
        finally:
            self._logger.setLevel(self._log_level)

    def terminate(self) -> None:
        self.close()   # cancels what is still queued or running; a LocalCluster's processes are stopped


def _have_distributed() -> bool:
    """Whether Dask distributed is installed (the ``[dask]`` extra), without importing it."""
    return importlib.util.find_spec("distributed") is not None


def start_forkserver_early(workers: int, cluster: str | None) -> bool:
    """Start the forkserver now for a command that will use ``workers`` pool processes or ``cluster``, so that it
    imports torch while this process still does (the CLI calls it before it imports torch). Returns whether it
    started one: only for a pool or a ``local:N`` cluster (a remote scheduler's workers are elsewhere); nothing for
    a serial run, where that import would only take CPU from this process's own."""
    if cluster is not None:
        # not validated yet (the command does that next): any local:... value is meant for this machine
        return cluster.startswith(LOCAL_PREFIX) and _have_distributed() and _start_forkserver_for_dask()
    if workers > 1 and available():
        ensure_forkserver()
        return True
    return False


def _start_forkserver_for_dask() -> bool:
    """Start our forkserver (torch, qsfl and distributed preloaded) for a LocalCluster's workers; returns whether
    there is one. Started before this process imports distributed, so that both imports run at once.

    Forked from it, workers start faster and, unlike spawned workers that imported torch, exit at once when the
    cluster closes, and (:func:`ensure_forkserver`) they start with SIGINT blocked: a Ctrl-C is this process's
    to handle. Workers restarted later (after a worker died) are spawned, as Dask does by default."""
    if not available():
        return False
    ensure_forkserver(DASK_PRELOAD)   # no effect if one runs (the CLI starts it first: start_forkserver_early)
    return True


#: Dask's housekeeping in a LocalCluster (its scheduler runs in this process, next to the client): an idle
#: cluster of 2 workers used 11.5 % of a core with Dask's defaults (event-loop watchdog tick every 20 ms, worker
#: memory monitor every 100 ms, system monitor every 500 ms) and 2.1 % with these, CPU a 2-core machine's
#: evaluations need. None of them is needed for a local study: the tick only warns about a blocked event loop,
#: the memory monitor acts on memory limits a second later, the system monitor feeds the dashboard.
QUIET_LOCAL_CLUSTER = {"distributed.admin.tick.interval": "1s", "distributed.worker.memory.monitor-interval": "1s",
                       "distributed.admin.system-monitor.interval": "2s"}


def _dask_worker_config(forkserver: bool) -> dict[str, Any]:
    """Dask settings for a LocalCluster: workers forked from our forkserver where there is one, no statistical
    profiler (it samples every worker thread's stack every 10 ms, taking the GIL from the task), and the slower
    housekeeping of :data:`QUIET_LOCAL_CLUSTER`."""
    config: dict[str, Any] = {"distributed.worker.profile.enabled": False, **QUIET_LOCAL_CLUSTER}
    if forkserver:
        config["distributed.worker.multiprocessing-method"] = "forkserver"
    return config


def make_workers(workers: int = 1, cluster: str | None = None, base: SimConfig | None = None) -> Workers:
    """The pool for ``--workers`` / ``--cluster``: Dask when ``cluster`` is given, else serial for one worker,
    else a process pool. ``base``'s dataset is preloaded in every worker process."""
    if cluster is not None:
        return DaskWorkers(cluster, base)
    check_range("--workers", workers, 1, None, integer=True)
    return SerialWorkers() if workers == 1 else PoolWorkers(workers, base)
