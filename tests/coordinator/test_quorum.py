"""A run whose sites drop below min-sites between rounds fails, naming them, instead of waiting without
end in Flower's node sampling; the round's reply timeout and the personalisation flag are run-config
settings the app declares (Flower refuses a ``--run-config`` key ``pyproject.toml`` does not declare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib
from flwr.app import ArrayRecord, ConfigRecord
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611

from coordinator.errors import NotEnoughSitesError
from coordinator.outcome import ROUND_TIMEOUT, RunSettings
from coordinator.quorum import QuorumGrid, registered_names
from coordinator.strategy import ReplyScreen, ScreenedFedAvg
from federation.errors import SettingsError

ROOT = Path(__file__).resolve().parents[2]


class _Nodes:
    """A grid's node list, as the SuperLink reports it (the calls the sampling makes)."""

    def __init__(self, nodes: dict[int, str]) -> None:
        self.nodes = nodes
        self.asked = 0

    def get_node_ids(self):
        self.asked += 1
        return list(self.nodes)

    def get_nodes(self):
        return [NodeInfo(node_id=n, name=name) if name else NodeInfo(node_id=n) for n, name in self.nodes.items()]


def _strategy(node_timeout: float | None) -> ScreenedFedAvg:
    screen = ReplyScreen(min_sites=3, aggregator=None)
    screen.site_of.update({1: "clinic_a", 2: "clinic_b", 3: "clinic_c"})  # the sites of the run so far
    return ScreenedFedAvg(screen=screen, n_params=2, node_timeout=node_timeout, min_train_nodes=3,
                          min_evaluate_nodes=3, min_available_nodes=3)


def test_a_round_with_fewer_than_min_sites_connected_fails_naming_the_site_gone():
    grid = _Nodes({1: "clinic_a", 2: "clinic_b"})  # clinic_c's SuperNode went offline after the last round
    with pytest.raises(NotEnoughSitesError) as failed:
        _strategy(node_timeout=0.0).configure_train(2, ArrayRecord([np.zeros(2)]), ConfigRecord(), grid)
    assert str(failed.value) == ("train (round 2): 2 site(s) connected for 0 s, at least 3 (min-sites) needed. "
                                 "Left out: clinic_c: not connected")


def test_the_wait_for_sites_lasts_the_timeout_and_ends_when_they_are_back():
    clock = [0.0]
    grid = QuorumGrid(_Nodes({1: "a", 2: "b"}), min_sites=3, timeout=30, label="evaluate (round 1)",
                      expected={1, 2, 3}, clock=lambda: clock[0])
    assert len(list(grid.get_node_ids())) == 2  # short: the wait starts
    clock[0] = 29.0
    assert len(list(grid.get_node_ids())) == 2  # still within the timeout
    grid._grid.nodes[3] = "c"
    assert len(list(grid.get_node_ids())) == 3  # back: the wait is over
    del grid._grid.nodes[3]
    clock[0] = 59.0
    grid.get_node_ids()  # short again: a new wait starts now
    clock[0] = 89.0
    with pytest.raises(NotEnoughSitesError, match=r"Left out: node 3: not connected"):
        grid.get_node_ids()


def test_sites_are_named_by_the_names_their_supernodes_were_registered_under():
    assert registered_names(_Nodes({7: "clinic_a", 8: ""})) == {7: "clinic_a"}


def test_the_reply_timeout_and_personalisation_come_from_the_run_config():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunSettings.from_run_config(declared)
    assert defaults.timeout == ROUND_TIMEOUT == declared["round-timeout"] and defaults.personalisation is True
    chosen = RunSettings.from_run_config(declared | {"round-timeout": 45, "personalisation": False})
    assert chosen.timeout == 45.0 and chosen.personalisation is False
    for bad in (0, -1, "soon"):
        with pytest.raises(SettingsError, match="round-timeout"):
            RunSettings.from_run_config(declared | {"round-timeout": bad})
