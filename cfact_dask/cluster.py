"""Which scheduler runs the work: a given client, the current client, or an embedded LocalCluster.

Entry points that compute take ``client=``. With none, the current ``distributed`` client is used;
if there is none and the user has not chosen a dask scheduler, an embedded ``LocalCluster``
(processes) is started for inputs of at least ``cfact.cluster.embedded-min-bytes`` (policy
``cfact.cluster.embedded``: ``auto`` | ``always`` | ``never``) and closed when the call returns.
Small inputs run on dask's threaded scheduler, where starting processes would cost more than the
work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import dask
import dask.config

from . import config
from .errors import ConfigError

__all__ = ["client_context", "compute", "connect", "detach", "is_embedded", "show_progress",
           "use_client"]

logger = logging.getLogger(__name__)

#: clients started by client_context (closed when it exits)
_EMBEDDED: weakref.WeakSet[Any] = weakref.WeakSet()


def connect(
    client: Any = None, *, scheduler: str | None = None, scheduler_file: str | None = None,
    security: Any = None,
) -> Any:
    """Return a ``distributed.Client`` for an address / scheduler file, or ``client`` as given."""
    from distributed import Client

    if client is not None:
        if isinstance(client, str):
            return Client(client, security=security)
        return client
    if scheduler_file:
        if not os.path.exists(scheduler_file):
            raise ConfigError(
                f"scheduler file {scheduler_file!r} does not exist; start the scheduler with "
                f"`dask scheduler --scheduler-file {scheduler_file}` first"
            )
        return Client(scheduler_file=scheduler_file, security=security)
    if scheduler:
        return Client(scheduler, security=security)
    return None


@contextlib.contextmanager
def use_client(client: Any) -> Iterator[Any]:
    """Make ``client`` the scheduler of ``dask.compute`` / ``persist`` in this thread.

    The client is never put into ``dask.config``: a nanny copies the global config into the worker
    process it restarts, and a live Client cannot be pickled ("Failed to restart worker ...
    cannot pickle '_asyncio.Future'"), so killed workers were never restarted. distributed's own
    context (``Client.as_current``) marks the client current for this thread; the config's
    ``scheduler`` is cleared so that dask asks for that current client.
    """
    if client is None:
        yield None
        return
    with client.as_current(), dask.config.set(scheduler=None):
        yield client


def _current_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def client_context(client: Any = None, *, nbytes: int | None = None,
                   stage: str = "the computation") -> Iterator[Any]:
    """Yield the client to compute with, or None for dask's local scheduler.

    A client created here (from an address, or the embedded LocalCluster) is closed on exit.
    While the block runs, a cluster without any worker for ``cfact.cluster.no-workers-timeout``
    ends it with :class:`~cfact_dask.errors.NoWorkersError` naming ``stage``.
    """
    from ._runtime.workers import watch_workers

    if client is not None:
        if isinstance(client, str):
            c = connect(client)
            _EMBEDDED.add(c)  # ours to close, like an embedded cluster
            try:
                with watch_workers(c, stage):
                    yield c
            finally:
                c.close()
        else:
            with watch_workers(client, stage):
                yield client
        return
    current = _current_client()
    if current is not None:
        with watch_workers(current, stage):
            yield current
        return
    policy = str(config.get("cluster.embedded", "auto"))
    if policy not in ("auto", "always", "never"):
        raise ConfigError(
            f"cfact.cluster.embedded must be 'auto', 'always' or 'never', got {policy!r}"
        )
    user_scheduler = dask.config.get("scheduler", None)
    big = nbytes is None or nbytes >= int(config.get("cluster.embedded-min-bytes", 2**28))
    if policy == "never" or user_scheduler is not None or (policy == "auto" and not big):
        yield None
        return
    from distributed import Client, LocalCluster

    mem = config.get("cluster.memory-limit", "auto")
    cluster = LocalCluster(
        n_workers=int(config.get("cluster.n-workers", 2)),
        threads_per_worker=int(config.get("cluster.threads-per-worker", 1)),
        processes=True,
        memory_limit=mem,
        dashboard_address=":0",
    )
    c = Client(cluster, set_as_default=False)
    _EMBEDDED.add(c)
    logger.info("started an embedded LocalCluster; dashboard at %s", c.dashboard_link)
    try:
        with use_client(c), watch_workers(c, stage):
            yield c
    finally:
        c.close()
        cluster.close()


def show_progress(futures: Any, client: Any) -> None:
    """A text progress bar for futures on ``client`` (blocks until they finish)."""
    from distributed import progress as dprogress

    try:
        # the text bar writes to stdout; keep stdout for results (--json) and draw on stderr
        with contextlib.redirect_stdout(sys.stderr):
            dprogress(futures, notebook=False, scheduler=client.scheduler.address)
    except Exception:  # noqa: BLE001 - progress display must never fail a job
        logger.debug("progress display failed", exc_info=True)


def is_embedded(client: Any) -> bool:
    """True for a client that :func:`client_context` started and will close on exit."""
    return client is not None and client in _EMBEDDED


def detach(x: Any, client: Any, what: str = "the result") -> Any:
    """Bring a dask array computed on an embedded cluster back before that cluster closes.

    Results persisted on a cluster this library started would point at futures of a closed
    cluster once the call returns; they are gathered into memory (still a dask array, same
    chunks). Arrays on a user's cluster are left there.
    """
    import dask.array as da
    import numpy as np

    if not is_embedded(client) or not isinstance(x, da.Array):
        return x
    limit = int(config.get("als.max-client-bytes", 2**28))
    if x.nbytes > limit:
        logger.warning(
            "%s (%s) is gathered from the embedded cluster before it closes; pass client= to "
            "keep it on a cluster", what, "x".join(map(str, x.shape)),
        )
    value = np.asarray(client.compute(x).result())
    return da.from_array(value, chunks=x.chunks)


def compute(
    *collections: Any, client: Any = None, progress: bool | None = None, desc: str = ""
) -> Sequence[Any]:
    """``dask.compute`` on the chosen scheduler with a progress bar for long passes."""
    if progress is None:
        progress = bool(config.get("progress", True))
    if client is not None:
        futures = client.compute(list(collections))
        if progress:
            if desc:
                logger.info("%s", desc)
            show_progress(futures, client)
        return client.gather(futures)
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=1.0, out=sys.stderr):
            return dask.compute(*collections)
    return dask.compute(*collections)
