"""DGD+LOCAL: decentralised consensus factorization over a communication graph (nodes hold
column blocks, exchange only their ``U`` with neighbours), its baselines and the topologies."""

from ._dgd_local import DGDResult, DGDState, centralized, dgd, dgd_local, split_columns
from .topology import Topology, make_topology

__all__ = ["DGDResult", "DGDState", "Topology", "centralized", "dgd", "dgd_local",
           "make_topology", "split_columns"]
