"""The key holder decrypts only sums over at least min-sites sites, and keeps its secret key in a
process of its own."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from coordinator.aggregator import Aggregator
from federation.crypto import encrypt_vector, load_public_context
from keyholder import KeyHolder, start_key_holder_process
from keyholder.errors import NotEnoughSitesError


@pytest.fixture(scope="module")
def key_holder() -> KeyHolder:
    return KeyHolder(min_sites=3)


@pytest.mark.parametrize("n_sites", [1, 2])
def test_key_holder_refuses_fewer_than_min_sites(key_holder, n_sites):
    context = load_public_context(key_holder.public_context)
    blobs = [encrypt_vector(context, np.ones(4)) for _ in range(n_sites)]
    with pytest.raises(NotEnoughSitesError):
        key_holder.decrypt_aggregate(Aggregator(key_holder.public_context).add(blobs), length=4)


def test_key_holder_decrypts_exactly_min_sites(key_holder):
    context = load_public_context(key_holder.public_context)
    blobs = [encrypt_vector(context, np.full(4, i)) for i in range(3)]
    values = key_holder.decrypt_aggregate(Aggregator(key_holder.public_context).add(blobs), length=4)
    np.testing.assert_allclose(values, np.full(4, 3.0), atol=1e-5)


def test_key_holder_in_its_own_process_keeps_the_secret():
    manager, proxy = start_key_holder_process(min_sites=2)
    try:
        public = proxy.get_public_context()
        assert not ts.context_from(public).has_secret_key()
        context = load_public_context(public)
        single = encrypt_vector(context, np.ones(3))
        with pytest.raises(NotEnoughSitesError):
            proxy.decrypt_aggregate(single, length=3)
        pair = Aggregator(public).add([single, encrypt_vector(context, np.ones(3))])
        np.testing.assert_allclose(proxy.decrypt_aggregate(pair, length=3), [2, 2, 2], atol=1e-5)
    finally:
        manager.shutdown()


def test_keyholder_show_reports_the_min_sites_it_enforces(monkeypatch):
    from typer.testing import CliRunner

    from fenji.cli import app

    monkeypatch.setenv("FENJI_MIN_SITES", "5")
    result = CliRunner().invoke(app, ["keyholder", "show"])
    assert result.exit_code == 0, result.output
    assert "≥ 5 sites" in result.output and "8192" in result.output
    monkeypatch.setenv("FENJI_MIN_SITES", "0")
    bad = CliRunner().invoke(app, ["keyholder", "show"])
    assert bad.exit_code == 9 and "FENJI_MIN_SITES" in bad.stderr
