"""What an attacker holds, as helpers: the public context (anyone can encrypt anything under it),
replies and sums built by hand, and a look at the key holder's ledger to see what was released.

Each module under ``tests/attacks`` replays one attack from issue 12 against the real classes
(real TenSEAL, real key holder folders, real HTTP service and Flower simulation where it matters)
and asserts that the attack is refused or detected.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from coordinator.aggregator import Aggregator
from federation.crypto import (
    encrypt_contribution,
    load_public_context,
    pack,
    slot_count,
)
from federation.keyholder_api import DecryptRequest
from federation.tags import TAG_SLOTS, QueryLabel

TASK = "referral_risk"
# Files a run leaves in a site folder; a copied folder starts without them (a fresh site).
_RUN_FILES = ("enrolment.json", "answered-queries.jsonl", "contexts")  # a run's state, not the store


def label(run: str, *, phase: str = "train", round_: int = 1, dp_epsilon: float = 0.0) -> QueryLabel:
    return QueryLabel(run_id=run, phase=phase, round=round_, task=TASK, dp_epsilon=dp_epsilon)


def request(query: QueryLabel, cohort: Sequence[str], length: int, scale_bits: int = 40) -> DecryptRequest:
    return DecryptRequest.of(query, cohort=list(cohort), length=length, scale_bits=scale_bits)


def encrypt_raw(public_context: bytes | ts.Context, values: Iterable[float], *, scale_bits: int | None = None) -> bytes:
    """Encrypt exactly ``values`` (data *and* trailer, as the caller wrote them) under a public
    context: what any holder of the public key can do, the aggregator included."""
    context = load_public_context(public_context) if isinstance(public_context, bytes) else public_context
    data = [float(v) for v in values]
    slots = slot_count(context)
    scale = None if scale_bits is None else float(2**scale_bits)
    return pack([ts.ckks_vector(context, data[i : i + slots], scale).serialize() for i in range(0, len(data), slots)])


def zero_with_slot(public_context: bytes, length: int, *, slot: float = 1.0) -> bytes:
    """``Enc([0…, slot, 0, 0, 0, 0])``: nothing in the data, one more in the contributor slot."""
    return encrypt_raw(public_context, [0.0] * length + [slot] + [0.0] * TAG_SLOTS)


def contributions(public_context: bytes, enrolments: Mapping, query: QueryLabel,
                  values: Mapping[str, np.ndarray], *, scale_bits: int | None = None) -> dict[str, bytes]:
    """Each site's honest reply to ``query`` (tags made with its own enrolment's key)."""
    context = load_public_context(public_context)
    return {site: encrypt_contribution(context, values[site], site_key=enrolments[site].site_key_bytes, label=query,
                                       scale_bits=scale_bits)
            for site in values}


def site_values(sites: Iterable[str], length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Distinct, known updates per site: what an attack would try to read back."""
    rng = np.random.default_rng(seed)
    return {site: rng.normal(0.0, 1.0, length) for site in sites}


def add(public_context: bytes, blobs: Sequence[bytes]) -> bytes:
    return Aggregator(public_context).add(list(blobs))


def actions(state, action: str) -> list[dict]:
    """The ledger entries of ``state`` (a ``KeyHolderState``) with ``action``."""
    return [e for e in state.ledger.entries() if e["action"] == action]


def decrypted_queries(state) -> list[str]:
    return [e["details"]["query"] for e in actions(state, "decrypt")]


def copy_sites(sources: Sequence[Path], dest: Path) -> list[Path]:
    """Copies of site folders under ``dest`` (their stores only: no enrolment, nothing answered yet)."""
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in sources:
        target = dest / Path(source).name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(*_RUN_FILES, "*.wal", "*.tmp"))
        copies.append(target)
    return copies


def ciphertext_record(blob: bytes) -> ArrayRecord:
    return ArrayRecord({"ciphertext": Array(np.frombuffer(blob, dtype=np.uint8))})


def train_reply(node: int, blob: bytes, *, site: str, rows: float) -> Message:
    """A site's train reply as the coordinator receives it: ciphertext, declared rows, site id."""
    metadata = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                        group_id="", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN)
    content = {"ciphertext": ciphertext_record(blob), "metrics": MetricRecord({"num-examples": rows}),
               "site": ConfigRecord({"site-id": site})}
    return Message(content=RecordDict(content), metadata=metadata)


@pytest.fixture()
def key_holder_of(enrolled_key_holder):
    """``key_holder_of(n_sites, min_sites)`` -> (KeyHolder, enrolments, public context bytes)."""

    def make(n_sites: int = 3, min_sites: int = 3):
        key_holder, enrolments = enrolled_key_holder(n_sites=n_sites, min_sites=min_sites)
        return key_holder, enrolments, key_holder.public_context

    return make


# --- Issue 13: each clinic holds its own line (site policy, DP budget, small numbers) ---------------
# A node is reached the way Flower reaches it: its ClientApp called with a Message and a Context.

# Files a site gathers by taking part in jobs; a fresh site has none (no plan approved, nothing audited).
_JOB_FILES = (*_RUN_FILES, "policy.json", "node-audit.jsonl")


def fresh_sites(sources: Sequence[Path], dest: Path) -> list[Path]:
    """Copies of site folders as sites that never took part in a job: no policy (so no approved
    plan), no audit log, no privacy budget spent (the session's site folders are shared with tests
    whose runs approve plans at them)."""
    from node_agent.store import SiteStore

    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in sources:
        target = dest / Path(source).name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(*_JOB_FILES, "*.wal", "*.tmp"))
        with SiteStore(target) as store:
            store.connection.execute("DROP TABLE IF EXISTS privacy_budget")
        copies.append(target)
    return copies


def site_admin(site_dir: Path, spec=None, *, max_rounds: int = 50, min_n: int | None = None,
               dp: dict | None = None):
    """Set the site's policy as its admin would: approve ``spec``'s plan (if given), set min n and
    the DP policy (``dp``: fields of ``DPPolicy``, enabled). Returns the policy saved."""
    from node_agent.policy import (
        DPPolicy,
        PlanBounds,
        load_site_policy,
        save_site_policy,
    )

    policy = load_site_policy(site_dir)
    if spec is not None:
        policy.approve(spec, by="site admin (test)", bounds=PlanBounds(max_rounds=max_rounds))
    if min_n is not None:
        policy.min_n = min_n
    if dp is not None:
        policy.dp = DPPolicy(enabled=True, **dp)
    save_site_policy(site_dir, policy)
    return policy


def job_config(spec, site_dir: Path, *, run_id: str, num_rounds: int | None = 2, server_round: int = 1,
               plaintext: bool = True, **extra) -> tuple[ConfigRecord, np.ndarray]:
    """The config a coordinator sends with a train or evaluate message of a job over ``site_dir``
    (encoding from that site's own statistics, as if it were the whole federation), and the initial
    model. Keys given as ``None`` in ``extra`` (or ``num_rounds=None``) are left out."""
    import json

    from models.encoding import Encoder, SiteStatistics
    from models.nets import build_model, get_flat
    from node_agent.local import load_site_data, site_statistics

    params = SiteStatistics(spec, site_statistics(load_site_data(site_dir, spec)).vector).encoding_params()
    values = {"task-json": spec.model_dump_json(), "task-name": spec.name, "run-id": run_id, "plaintext": plaintext,
              "seed": 0, "num-rounds": num_rounds, "server-round": server_round,
              "encoding": json.dumps(params.to_dict()), "total-examples": float(params.n_rows)} | extra
    initial = get_flat(build_model(spec, Encoder(spec, params).width, seed=0))
    return ConfigRecord({k: v for k, v in values.items() if v is not None}), initial


def node_message(message_type: str, config: ConfigRecord, flat: np.ndarray | None = None) -> Message:
    """A message from the coordinator to a node, as the node's ClientApp receives it."""
    import time
    import uuid

    content: dict = {"config": config}
    if flat is not None:
        content["arrays"] = ArrayRecord([np.asarray(flat)])
    metadata = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=600.0, message_type=message_type)
    return Message(content=RecordDict(content), metadata=metadata)


def call_node(client_app, message: Message) -> Message:
    """Run ``message`` through the ClientApp (its mods, the egress guard included) as Flower does:
    ``ClientApp.__call__(message, context)``, the node being partition 0 of a simulation."""
    from flwr.app import Context

    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    return client_app(message, context)


def node_audit_actions(site_dir: Path, action: str) -> list[dict]:
    """The node audit log's entries with ``action`` (``node-audit.jsonl`` in the site folder)."""
    from node_agent.budget import node_audit

    return [e for e in node_audit(site_dir).entries() if e["action"] == action]


def budget_charges(site_dir: Path) -> list[tuple[str, float]]:
    """(run id, epsilon) of every row in the site's privacy-budget ledger."""
    from node_agent.store import SiteStore

    with SiteStore(site_dir, read_only=True) as store:
        tables = {row[0] for row in store.connection.execute("SHOW TABLES").fetchall()}
        if "privacy_budget" not in tables:
            return []
        return [(str(r), float(e)) for r, e in
                store.connection.execute("SELECT run_id, epsilon FROM privacy_budget ORDER BY charged_at").fetchall()]
