"""The worker plugin that installs the DGD+LOCAL exchange (:mod:`._exchange`) on every worker.

Kept apart from :mod:`._exchange` because it subclasses ``distributed.WorkerPlugin`` and so
imports distributed at module level; only a distributed run imports it (:func:`install`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributed import WorkerPlugin

from ._exchange import HANDLER, PLUGIN_NAME, Exchange

__all__ = ["ExchangePlugin", "install"]


class ExchangePlugin(WorkerPlugin):
    """Creates the worker's :class:`~._exchange.Exchange` and adds its comm handler.

    Registered once per cluster (``idempotent``: registering again keeps the running instance
    and its state); the scheduler also sets it up on workers that join later, e.g. a worker
    restarted by its nanny after a loss. The handler is added to the worker's ``handlers``
    (the operation table of a ``distributed.core.Server``) the way distributed's own
    extensions add theirs (``ShuffleWorkerPlugin.setup``): distributed has no other way to add a
    comm handler. ``teardown`` aborts the runs left and removes the handler.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.exchange: Exchange | None = None

    async def setup(self, worker: Any) -> None:
        self.exchange = Exchange(worker, asyncio.get_running_loop())
        worker.handlers.update({HANDLER: self.exchange.put})

    async def teardown(self, worker: Any) -> None:
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.abort(list({*ex.groups, *ex.boxes}))
        if ex is not None and worker.handlers.get(HANDLER) == ex.put:
            worker.handlers.pop(HANDLER, None)


def install(client: Any) -> None:
    """Register :class:`ExchangePlugin` on the cluster of ``client`` (once; a no-op after)."""
    client.register_plugin(ExchangePlugin(), name=PLUGIN_NAME)
