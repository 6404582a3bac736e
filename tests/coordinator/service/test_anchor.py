"""The key holder's anchor endpoint (a real key holder service): it countersigns a caller's audit head
only with a token, only when the entries sent extend the head it anchored last, and ledgers each
anchor and each refusal."""

from __future__ import annotations

import base64

import httpx
import pytest

from federation.audit import ANCHOR_PATH, GENESIS, Anchor, chain_entry, entry_line, verify_anchor
from tests.coordinator.service.conftest import unique


def _chain(n: int, actor: str = "coordinator") -> list[dict]:
    entries, last = [], None
    for i in range(n):
        last = chain_entry(last, actor=actor, action="account-added", details={"n": i})
        entries.append(last)
    return entries


def test_anchor_needs_a_token(key_holder):
    answer = httpx.post(key_holder.url + ANCHOR_PATH, json={"seq": 0, "head": GENESIS})
    assert answer.status_code == 401
    assert httpx.get(key_holder.url + ANCHOR_PATH).status_code == 401


def test_only_an_extension_of_the_last_anchor_is_countersigned(key_holder):
    name = unique("anchoring")
    headers = {"Authorization": f"Bearer {key_holder.state.issue_token(name)}"}
    entries = _chain(5)
    lines = [entry_line(e) for e in entries]
    with httpx.Client(base_url=key_holder.url, headers=headers) as client:
        assert client.get(ANCHOR_PATH).status_code == 404
        first = client.post(ANCHOR_PATH, json={"seq": 3, "head": entries[2]["hash"], "entries": lines[:3]})
        assert first.status_code == 200, first.text
        anchor = Anchor.model_validate(first.json())
        verify_key = base64.b64decode(client.get("/v1/info").json()["verify_key"])
        assert anchor.caller == name and verify_anchor(anchor, verify_key)
        assert not verify_anchor(anchor.model_copy(update={"seq": 4}), verify_key)
        # A head without the entries that lead to it, an earlier position, a fork at the same position.
        assert client.post(ANCHOR_PATH, json={"seq": 5, "head": entries[4]["hash"], "entries": lines[4:]}).status_code == 409
        assert client.post(ANCHOR_PATH, json={"seq": 2, "head": entries[1]["hash"], "entries": []}).status_code == 409
        other = _chain(3, actor="someone else")
        assert client.post(ANCHOR_PATH, json={"seq": 3, "head": other[2]["hash"], "entries": []}).status_code == 409
        # A re-chained log at a later position: its entries do not extend the anchored head.
        rechained = other + [chain_entry(other[-1], actor="x", action="y", details={})]
        assert client.post(ANCHOR_PATH, json={"seq": 4, "head": rechained[3]["hash"],
                                              "entries": [entry_line(rechained[3])]}).status_code == 409
        second = client.post(ANCHOR_PATH, json={"seq": 5, "head": entries[4]["hash"], "entries": lines[3:]})
        assert second.status_code == 200, second.text
        assert client.get(ANCHOR_PATH).json()["seq"] == 5
    actions = [(e["action"], e["details"].get("seq")) for e in key_holder.state.ledger.entries() if e["actor"] == name]
    assert actions == [("anchor", 3), ("anchor-refused", 5), ("anchor-refused", 2), ("anchor-refused", 3),
                       ("anchor-refused", 4), ("anchor", 5)]
    assert key_holder.state.ledger.verify() > 0


def test_a_second_caller_cannot_anchor_a_fork_and_roles_are_enforced(key_holder):
    """Review finding: anchors were kept per token name, so a second token could get a rewritten
    chain countersigned; and a token's role was never checked."""
    entries = _chain(3)
    lines = [entry_line(e) for e in entries]
    first = {"Authorization": f"Bearer {key_holder.state.issue_token('city', role='audit')}"}
    second = {"Authorization": f"Bearer {key_holder.state.issue_token('nightly-bench')}"}
    with httpx.Client(base_url=key_holder.url) as client:
        assert client.post(ANCHOR_PATH, json={"seq": 3, "head": entries[2]["hash"], "entries": lines},
                           headers=first).status_code == 200
        fork = _chain(2, actor="rewritten")
        refused = client.post(ANCHOR_PATH, json={"seq": 4, "head": fork[1]["hash"],
                                                 "entries": [entry_line(e) for e in fork]}, headers=second)
        assert refused.status_code == 409 and "city" in refused.json()["detail"]
        # Anyone may read the one log's latest anchor; it names the caller it belongs to.
        assert client.get(ANCHOR_PATH, headers=second).json()["caller"] == "city"
        # An audit token anchors but never decrypts.
        denied = client.post("/v1/decrypt", content=b"x", headers=first | {"X-Fenji-Request": "e30="})
        assert denied.status_code == 403 and "may not decrypt" in denied.json()["detail"]


def test_a_pinned_key_holder_fingerprint_is_checked(key_holder):
    from coordinator.service.anchoring import AnchorClient
    from federation.errors import AuditTamperedError

    client = AnchorClient(key_holder.url, "unused", pinned="kh-not-this-one")
    with pytest.raises(AuditTamperedError, match="pinned"):
        client.verify_key()
    client.close()
    assert AnchorClient(key_holder.url, "unused", pinned=key_holder.state.keyholder_id).verify_key()
