"""DGD+LOCAL: decentralised consensus factorization over a communication graph (nodes hold
column blocks, exchange only their ``U`` with neighbours), its baselines and the topologies.

Modules: :mod:`._dgd_local` (the entry point), :mod:`._kernels` (node math, step schedule),
:mod:`._runtime` (in-process / pinned-worker nodes, worker loss), :mod:`._exchange` and
:mod:`._worker_plugin` (the worker-to-worker exchange of ``mode="workers"``), :mod:`._engine`
(the iteration loop and engines), :mod:`._result` (:class:`DGDResult`), :mod:`.baselines`
(:func:`dgd`, :func:`centralized`), :mod:`.topology`.
"""

from ._dgd_local import dgd_local
from ._result import DGDResult, DGDState
from ._runtime import split_columns
from .baselines import centralized, dgd
from .topology import Topology, make_topology

__all__ = ["DGDResult", "DGDState", "Topology", "centralized", "dgd", "dgd_local",
           "make_topology", "split_columns"]
