"""Waiting for ``min-sites`` connected sites, for a while only; and the sites' registered names.

Flower's FedAvg picks each round's sites with ``strategy_utils.sample_nodes``, which waits without
end until ``min_available_nodes`` are connected: a run whose sites drop below ``min-sites`` between
two rounds (a SuperNode killed, a clinic's link down) would hang there. ``QuorumGrid`` gives that
wait the run's ``round-timeout``: when fewer than ``min_sites`` nodes stay connected for ``timeout``
seconds, ``get_node_ids`` raises ``NotEnoughSitesError`` naming the nodes that left, in the form
``ReplyScreen.usable`` uses ("<phase> (round <n>): … Left out: <site>: <reason>").

``registered_names`` reads the names the coordinator gave the SuperNodes it registered (``flwr
supernode register … --name clinic_a``), so that a site that never answered is still named.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping

from flwr.serverapp import Grid

from coordinator.errors import NotEnoughSitesError
from coordinator.streaming import StreamingGrid

__all__ = ["QuorumGrid", "registered_names"]


def registered_names(grid: Grid) -> dict[int, str]:
    """The name each connected node was registered under, where it has one (none in a simulation)."""
    return {int(node.node_id): str(node.name) for node in grid.get_nodes() if getattr(node, "name", "")}


class QuorumGrid(StreamingGrid):
    """``grid`` whose ``get_node_ids`` gives up after ``timeout`` seconds below ``min_sites`` nodes.

    Parameters
    ----------
    label
        The phase and round, as the error names them (``"train (round 2)"``).
    expected
        The nodes the run counts on: those missing are named in the error.
    names
        Site id (or registered name) of each node the run knows.
    """

    def __init__(self, grid: Grid, *, min_sites: int, timeout: float, label: str, expected: Collection[int] = (),
                 names: Mapping[int, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(grid)
        self.min_sites, self.timeout, self.label = min_sites, timeout, label
        self.expected, self.names, self._clock = set(expected), names or {}, clock
        self._short_since: float | None = None

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self._grid.get_node_ids())
        if len(nodes) >= self.min_sites:
            self._short_since = None
            return nodes
        now = self._clock()
        if self._short_since is None:
            self._short_since = now
        elif now - self._short_since >= self.timeout:
            gone = sorted(self.expected - set(nodes))
            left_out = "; ".join(f"{self.names.get(n, f'node {n}')}: not connected" for n in gone) or "none"
            raise NotEnoughSitesError(
                f"{self.label}: {len(nodes)} site(s) connected for {self.timeout:g} s, at least {self.min_sites} "
                f"(min-sites) needed. Left out: {left_out}")
        return nodes
