"""Which workers a cluster has, asked of the scheduler, and a guard for runs that lose them all.

``Client.scheduler_info()`` returns the client's cached copy of the scheduler's identity, which
the client's own periodic update overwrites with a copy that lists no workers; read right after
the refresh it can therefore show an empty cluster that is alive. :func:`live_workers` asks the
scheduler itself and uses the answer it got, so it never sees that cache.

:func:`watch_workers` guards a computation against a cluster that lost every worker for good
(workers started without a nanny, or nannies that cannot restart them): after
``cfact.cluster.no-workers-timeout`` with no worker, the futures the guarded block created are
cancelled and the block ends with :class:`~cfact_dask.errors.NoWorkersError` naming the stage,
instead of waiting forever. Workers that a nanny restarts within the grace period are waited for.
A task whose workers keep dying (distributed's ``KilledWorker``, typically memory kills) ends the
block with :class:`~cfact_dask.errors.WorkerLostError` naming the stage and the memory advice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from dask.utils import parse_timedelta

from .. import config
from ..errors import ConfigError, NoWorkersError, WorkerLostError

__all__ = ["live_workers", "max_worker_losses", "n_workers", "no_workers_timeout", "stage",
           "watch_workers"]

logger = logging.getLogger(__name__)


def live_workers(client: Any) -> dict[str, dict[str, Any]]:
    """The scheduler's workers now (address -> identity), from a fresh request to the scheduler."""
    info = client.sync(client.scheduler.identity, n_workers=-1)
    return dict(info.get("workers") or {})


def n_workers(client: Any) -> int:
    """How many workers the scheduler has now (a fresh request, no per-worker details)."""
    info = client.sync(client.scheduler.identity, n_workers=0)
    return int(info["n_workers"])


def no_workers_timeout() -> float | None:
    """``cfact.cluster.no-workers-timeout`` in seconds (None: wait for workers forever)."""
    value = config.get("cluster.no-workers-timeout", "60s")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        seconds = parse_timedelta(value, default="s")
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(
            f"cfact.cluster.no-workers-timeout must be a duration such as '60s' or null (wait "
            f"forever), got {value!r}"
        ) from e
    if seconds is None or seconds <= 0:
        raise ConfigError(
            f"cfact.cluster.no-workers-timeout must be a positive duration or null, got {value!r}"
        )
    return float(seconds)


def max_worker_losses(n: int) -> int | None:
    """``cfact.cluster.max-worker-losses`` for a cluster of ``n`` workers (None: no limit)."""
    value = config.get("cluster.max-worker-losses", "auto")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(6, 3 * n)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"cfact.cluster.max-worker-losses must be 'auto', an int >= 1 or null, got {value!r}")
    return int(value)


class _Watch:
    """One polling thread per (client, thread of the guarded call); nested guards relabel it."""

    #: seconds between two looks at the workers' identities (worker losses)
    LOSS_INTERVAL = 2.0

    def __init__(self, client: Any, timeout: float | None, stage: str) -> None:
        self.client, self.timeout, self.stage = client, timeout, stage
        self.before = set(client.futures)  # the caller's own futures are never cancelled
        self.expired_stage: str | None = None
        self.failed_stage: str | None = None
        self.gone_since: float | None = None
        # worker losses (a worker that died, restarted or not, is gone under its old id)
        self.seen: set[tuple[str, str]] = set()
        self.lost: set[tuple[str, str]] = set()
        self.loss_label: str | None = None
        self.loss_limit: int | None = None
        self.losses_stage: str | None = None
        self.n_lost = 0
        self.next_look = 0.0
        self.count_losses = max_worker_losses(1) is not None  # config checked in the caller
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cfact-watch-workers", daemon=True)

    def _cancel_mine(self, reason: str) -> None:
        mine = [k for k in list(self.client.futures) if k not in self.before]
        if mine:
            from distributed import Future

            with contextlib.suppress(Exception):
                self.client.cancel([Future(k, self.client) for k in mine], force=True,
                                   reason=reason)

    def _look_for_losses(self, now: float) -> None:
        """Count workers lost during the current stage; stop it when they keep dying."""
        if now < self.next_look:
            return
        self.next_look = now + self.LOSS_INTERVAL
        workers = live_workers(self.client)
        current = {(addr, str(w.get("id", ""))) for addr, w in workers.items()}
        if self.loss_limit is None and current:
            self.loss_limit = max_worker_losses(len(current)) or 0
        if self.loss_label != self.stage:  # a new stage: count afresh
            self.loss_label, self.n_lost = self.stage, 0
        gone = self.seen - current - self.lost
        if gone:
            self.lost |= gone
            self.n_lost += len(gone)
            logger.warning("%d worker(s) lost during %s (%s)", len(gone), self.stage,
                           ", ".join(sorted(a for a, _ in gone)))
        self.seen |= current
        if self.loss_limit and self.n_lost >= self.loss_limit and self.losses_stage is None:
            self.losses_stage = self.stage
            logger.error("%d workers lost during %s; stopping", self.n_lost, self.stage)
        if self.losses_stage is not None:
            self._cancel_mine("cfact: workers keep dying")

    def _run(self) -> None:
        interval = min(1.0, self.timeout / 5) if self.timeout else 1.0
        while not self.stop.wait(interval):
            try:
                n = n_workers(self.client)
                now = time.monotonic()
                if self.count_losses:
                    self._look_for_losses(now)
            except Exception:  # noqa: BLE001 - a closing client / scheduler: not ours to judge
                logger.debug("worker count unavailable", exc_info=True)
                continue
            if self.timeout is None:
                continue
            if n > 0:
                if self.gone_since is not None:
                    logger.info("workers are back (%d) after %.1f s without any", n,
                                now - self.gone_since)
                self.gone_since = None
                continue
            if self.gone_since is None:
                self.gone_since = now
                logger.warning("the cluster has no workers; waiting up to %.0f s for them "
                               "(cfact.cluster.no-workers-timeout)", self.timeout)
            if now - self.gone_since >= self.timeout:
                if self.expired_stage is None:
                    self.expired_stage = self.stage
                    logger.error("no worker for %.0f s during %s; stopping", self.timeout,
                                 self.stage)
                # keep cancelling: a computation started after expiry would wait forever too
                self._cancel_mine("cfact: no workers")

    def losses_error(self) -> WorkerLostError:
        return WorkerLostError(
            f"{self.n_lost} workers were lost during {self.losses_stage} (the limit is "
            f"{self.loss_limit}, cfact.cluster.max-worker-losses), so the run stopped instead of "
            f"looping on restarted workers. The usual cause is workers exceeding their memory "
            f"limit (the nanny kills them at 95 %): `cfact plan JOB` (cf.plan) prints the memory "
            f"each worker needs for each stage; give the workers more memory, use smaller input "
            f"chunks or fewer threads per worker. If the workers' logs show another cause, fix "
            f"that; a run with an output store continues with resume=True (CLI: --resume)."
        )

    def error(self) -> NoWorkersError:
        address = getattr(getattr(self.client, "scheduler", None), "address", "?")
        return NoWorkersError(
            f"the cluster at {address} had no worker for {self.timeout:g} s during "
            f"{self.expired_stage}, so the computation was stopped instead of waiting forever. "
            f"Its workers died and were not restarted: workers started with a nanny (the "
            f"default of `dask worker`, not --no-nanny) are restarted automatically; check the "
            f"workers' logs (killed by the OS or for exceeding their memory limit? then give "
            f"them more memory, see `cfact plan`), start new workers for this scheduler, or set "
            f"cfact.cluster.no-workers-timeout (now {self.timeout:g} s) higher to wait longer. "
            f"A run with an output store continues with resume=True (CLI: --resume)."
        )


def _is_killed_worker(e: BaseException) -> bool:
    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    return isinstance(e, KilledWorker)


def _killed_error(e: Any, stage: str) -> WorkerLostError:
    """distributed's KilledWorker (a task whose workers kept dying) as one clear paragraph."""
    last = getattr(getattr(e, "last_worker", None), "address", "?")
    tries = int(getattr(e, "allowed_failures", 0)) + 1
    return WorkerLostError(
        f"every worker that ran task {getattr(e, 'task', '?')!r} of {stage} died while running "
        f"it ({tries} workers, the last {last}), so the run stopped instead of trying again. The "
        f"usual cause is a worker exceeding its memory limit (its nanny kills it at 95 %): give "
        f"the workers more memory or use smaller input chunks; `cfact plan JOB` (cf.plan) "
        f"prints the memory each worker needs for the job. If the workers' logs show another "
        f"cause, fix that; a run with an output store continues with resume=True (CLI: "
        f"--resume)."
    )


_ACTIVE: dict[tuple[int, int], _Watch] = {}
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def watch_workers(client: Any, stage: str) -> Iterator[None]:
    """Stop the block with :class:`NoWorkersError` once ``client``'s cluster has had no worker for
    ``cfact.cluster.no-workers-timeout``; ``stage`` names what ran (in the error)."""
    timeout = no_workers_timeout()
    if client is None or not hasattr(client, "scheduler") or (
            timeout is None and max_worker_losses(1) is None):
        yield
        return
    key = (id(client), threading.get_ident())
    with _ACTIVE_LOCK:
        outer = _ACTIVE.get(key)
    if outer is not None:  # nested (an entry point called by a stage): the outer guard watches
        yield
        return
    watch = _Watch(client, timeout, stage)
    with _ACTIVE_LOCK:
        _ACTIVE[key] = watch
    watch.thread.start()
    try:
        yield
    except NoWorkersError:
        raise
    except Exception as e:
        if watch.expired_stage is not None:
            raise watch.error() from e
        if watch.losses_stage is not None:
            raise watch.losses_error() from e
        if _is_killed_worker(e):
            raise _killed_error(e, watch.failed_stage or watch.stage) from e
        raise
    finally:
        watch.stop.set()
        with _ACTIVE_LOCK:
            _ACTIVE.pop(key, None)
        watch.thread.join(5)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the stage running in this thread in the error of any :func:`watch_workers` guard."""
    me = threading.get_ident()
    with _ACTIVE_LOCK:
        watches = [w for (_, tid), w in _ACTIVE.items() if tid == me]
    labels = [w.stage for w in watches]
    for w in watches:
        w.stage = name
    try:
        yield
    except BaseException:
        for w in watches:  # the innermost stage an error came out of names it
            w.failed_stage = w.failed_stage or name
        raise
    finally:
        for w, label in zip(watches, labels, strict=True):
            w.stage = label
