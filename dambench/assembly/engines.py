"""Running shard tasks: in this process (one or several threads) or on a dask.distributed cluster.

Every engine runs :func:`dambench.assembly.shards.run_shard` on plain
:class:`~dambench.assembly.shards.ShardTask` values and waits until no task is running before it
returns or raises, so nothing writes into the folder once the builder has let go of its lock. The
first failed shard in plan order is raised; the shards that succeeded keep their markers, so a
re-run resumes at the failed ones.

On a cluster, ``--out`` must be a folder that every worker sees at the same path (a shared
filesystem): :func:`cluster` connects and :func:`check_workers` refuses, before anything is
written, a cluster whose workers do not see it. A worker process that dies while
computing a shard (killed, out of memory) costs nothing but time: the scheduler gives the shard to
another worker (up to its ``distributed.scheduler.allowed-failures``), and a shard that raises is
retried :data:`SHARD_RETRIES` times.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from pathlib import Path

from tqdm.auto import tqdm

from dambench._version import __version__
from dambench.assembly import shards
from dambench.assembly.lock import DambenchBuildError
from dambench.exceptions import DambenchError, MissingDependencyError

SHARD_RETRIES = 2
"""Retries of a shard task that raised, on a cluster (a transient fault in a worker)."""
CONNECT_TIMEOUT_S = 30
"""Seconds to wait for the scheduler to answer."""


def run_local(tasks: Sequence[shards.ShardTask], workers: int, verbose: bool) -> None:
    """Run ``tasks`` in this process: in order when ``workers`` is 1, else on that many threads."""
    if not tasks:
        return
    bar = tqdm(total=len(tasks), desc="shards", unit="shard", disable=not verbose)
    try:
        if workers <= 1:
            for task in tasks:
                shards.run_shard(task)
                bar.update(1)
            return
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dambench-shard")
        try:
            futures = [pool.submit(shards.run_shard, task) for task in tasks]
            for future in futures:
                future.add_done_callback(lambda _: bar.update(1))
            wait(futures)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: drop what has not started
        for future in futures:  # the first failure in plan order
            future.result()
    finally:
        bar.close()


@contextmanager
def cluster(address: str, out: Path, marker: Path) -> Iterator:
    """A client of the dask.distributed scheduler at ``address`` whose workers passed
    :func:`check_workers` (``marker``: a file in ``out`` that every worker must see); closed
    after the block."""
    with _connect(address) as client:
        check_workers(client, out, Path(marker).absolute())
        yield client


def run_distributed(client, tasks: Sequence[shards.ShardTask], verbose: bool) -> None:
    """Run ``tasks`` on the cluster of ``client`` (see :func:`cluster`)."""
    if not tasks:
        return
    run_id = uuid.uuid4().hex[:12]  # keys never shared with another build on the cluster
    futures = client.map(
        shards.run_shard,
        list(tasks),
        key=[f"dambench-shard-{run_id}-{task.start}" for task in tasks],
        retries=SHARD_RETRIES,
        pure=False,
    )
    with tqdm(total=len(futures), desc="shards", unit="shard", disable=not verbose) as bar:
        for _ in _as_completed(futures, loop=client.loop):
            bar.update(1)
    for task, future in zip(tasks, futures, strict=True):
        if future.status != "finished":
            _raise_remote(task, future)


def _raise_remote(task: shards.ShardTask, future) -> None:
    """Re-raise the error of a failed shard future: a dambench error or an ``OSError`` (which the
    builder explains) as it is; anything else (a worker that died too often, a lost connection)
    as a shard error naming the cycles."""
    try:
        error = future.exception()
    except BaseException as err:  # a cancelled future raises here
        error = err
    if isinstance(error, DambenchError | OSError):
        raise error
    raise shards.shard_error(task, error) from error


def connection(address: str | None, out: Path, marker: Path):
    """:func:`cluster` when ``address`` is given, else an empty context (local engines)."""
    return cluster(address, out, marker) if address else nullcontext(None)


def _connect(address: str):
    """A client of the scheduler at ``address`` (not made the default client)."""
    try:
        from distributed import Client
    except ImportError as err:
        raise MissingDependencyError(
            "--scheduler needs dask.distributed: pip install 'dambench[distributed]'."
        ) from err
    try:
        return Client(address, set_as_default=False, timeout=CONNECT_TIMEOUT_S)
    except OSError as err:
        raise DambenchBuildError(
            f"Could not connect to the dask scheduler at {address} within {CONNECT_TIMEOUT_S} s "
            f"({type(err).__name__}: {' '.join(str(err).split())}); start it (dask scheduler) "
            "and its workers, or check the address given to --scheduler."
        ) from err


def _as_completed(futures, loop):
    from distributed import as_completed

    return as_completed(futures, loop=loop)


def check_workers(client, out: Path, marker: Path) -> None:
    """Refuse a cluster whose workers cannot run this build: none connected, one that does not
    see ``marker`` (a file of ``out`` holding what this process wrote) at the same path, or one
    running another dambench version.

    Raises
    ------
    DambenchBuildError
        Naming the workers and the remedy (a shared filesystem for ``out``, the same version).
    """
    expected = marker.read_bytes()
    try:
        seen = client.run(worker_view, str(marker), expected)
    except Exception as err:
        raise DambenchBuildError(
            f"The workers of the scheduler could not run a check ({type(err).__name__}: "
            f"{' '.join(str(err).split())}); install dambench {__version__} in the workers' "
            "environment."
        ) from err
    if not seen:
        raise DambenchBuildError(
            "The scheduler has no workers; start some (dask worker ADDRESS) and build again."
        )
    blind = sorted(worker for worker, view in seen.items() if not view["sees"])
    if blind:
        raise DambenchBuildError(
            f"Workers {blind} do not see the output folder {out} (the file {marker.name} written "
            "there is missing or different for them): --out must be on a filesystem every "
            "worker mounts at the same path (a shared filesystem such as NFS or Lustre). Choose "
            "such a folder, or run the workers on this machine."
        )
    versions = {worker: view["version"] for worker, view in seen.items()}
    other = sorted(w for w, version in versions.items() if version != __version__)
    if other:
        raise DambenchBuildError(
            f"Workers {other} run dambench {sorted({versions[w] for w in other})}, this process "
            f"runs {__version__}: install the same version everywhere (the bytes could differ)."
        )


def worker_view(marker: str, expected: bytes) -> dict:
    """Run on each worker by :func:`check_workers`: whether ``marker`` holds ``expected`` there,
    and the worker's dambench version."""
    try:
        sees = Path(marker).read_bytes() == expected
    except OSError:
        sees = False
    return {"sees": sees, "version": __version__}
