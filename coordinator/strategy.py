"""FedAvg over screened (and encrypted) updates: one bad site does not sink a run.

Every reply is screened before it counts (``ReplyScreen``): an error reply, a reply without its
declared row count, or one that is not a valid ciphertext of the expected length and scale is left
out and recorded as an ``ExcludedReply``. A phase goes on while at least ``min-sites`` usable replies
remain, and fails with ``NotEnoughSitesError`` naming the left-out sites otherwise. A decrypted
aggregate is adopted only if it agrees with what the sites declared (``check_total``): a ciphertext
made under another key passes every check before decryption, and is caught there.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from coordinator.aggregator import Aggregator
from coordinator.errors import AggregateCheckError, NotEnoughSitesError
from coordinator.quorum import QuorumGrid
from coordinator.streaming import RunningSum
from federation.errors import CiphertextError
from federation.keyholder_api import Decryptor, DecryptRequest
from federation.packing import packing_bound
from federation.tags import QueryLabel

__all__ = ["EncryptedFedAvg", "ExcludedReply", "ReplyScreen", "ScreenedFedAvg", "check_total", "ciphertext_of",
           "cohort_of", "declared_rows", "inputs_of", "site_dp_of"]

logger = logging.getLogger(__name__)

# Flower's error reasons can carry a whole (coloured) Ray traceback; its last line says what failed.
_MAX_REASON = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(reason: str) -> str:
    lines = [line.strip() for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    return lines[-1] if lines else reason


def ciphertext_of(message: Message) -> bytes:
    return message.content["ciphertext"]["ciphertext"].numpy().tobytes()


def cohort_of(replies: Iterable[Message]) -> list[str]:
    """The site ids of the replies summed: the cohort the key holder checks the sum's tags against."""
    return [str(r.content["site"]["site-id"]) for r in replies]


def inputs_of(replies: Iterable[Message]) -> str:
    """The digest of the inputs the sites say they answered (the same for all when the coordinator
    sent all of them the same message; the key holder's tag check holds it to that)."""
    digests = [str(r.content["site"].get("inputs", "")) for r in replies]
    return max(set(digests), key=digests.count) if digests else ""


def site_dp_of(replies: Iterable[Message]) -> dict[str, float]:
    """The DP epsilon each site declared it applied (set by its own policy; its tags bind it)."""
    return {str(r.content["site"]["site-id"]): float(r.content["site"].get("dp-epsilon", 0.0)) for r in replies}


def declared_rows(replies: Iterable[Message]) -> float:
    """The sum of the row counts (``num-examples``) the sites declared in their replies."""
    return float(sum(float(r.content["metrics"]["num-examples"]) for r in replies))


def check_total(what: str, decrypted: float, declared: float, *, rel: float = 0.0, absolute: float = 0.0) -> None:
    """Raise ``AggregateCheckError`` unless a decrypted total agrees with the sites' declared numbers.

    A sum with one ciphertext made under another key decrypts to numbers in the millions, nowhere
    near the declared totals.
    """
    if not abs(decrypted - declared) <= max(rel * abs(declared), absolute):  # also false for NaN
        raise AggregateCheckError(
            f"{what} decrypts to {decrypted:.6g} but the sites declared {declared:.6g}: the aggregate is not "
            "adopted (a ciphertext made under another key, or a site whose reply contradicts its declared rows)"
        )


@dataclass(frozen=True)
class ExcludedReply:
    """A site's reply that was left out of a phase, and why."""

    round: int
    phase: str  # "stats", "train", "evaluate", "calibrate" or "final-evaluate"
    node: int
    reason: str
    site: str | None = None  # known once the site has sent an evaluation (which names it)

    @property
    def label(self) -> str:
        return self.site or f"node {self.node}"

    def to_dict(self) -> dict:
        return asdict(self)


class ReplyScreen:
    """Screens the replies of one run; keeps the record of what was left out and which site is which.

    Parameters
    ----------
    min_sites
        Fewest usable replies a phase may go on with.
    aggregator
        Reads ciphertexts under the public context; ``None`` for a plaintext run.
    """

    def __init__(self, *, min_sites: int, aggregator: Aggregator | None) -> None:
        self.min_sites = min_sites
        self.aggregator = aggregator
        self.excluded: list[ExcludedReply] = []
        self.site_of: dict[int, str] = {}

    def usable(
        self,
        replies: Iterable[Message],
        *,
        phase: str,
        server_round: int,
        expected_nodes: Collection[int] = (),
        length: int | None = None,
        scale_bits: int | None = None,
        need_site: bool = False,
        into: RunningSum | None = None,
    ) -> list[Message]:
        """The replies that may count; the others are recorded, logged and left out.

        ``length`` is the number of values an update must hold (``None``: metrics only), and
        ``scale_bits`` the scale its ciphertext must be at. With ``into``, each usable reply's
        ciphertext is added to that running sum as the reply arrives and then dropped from the reply
        (``coordinator.streaming``): ``replies`` may be a generator, and memory holds one reply at a time.

        Raises
        ------
        NotEnoughSitesError
            If fewer than ``min_sites`` replies are usable.
        """
        good: list[Message] = []
        answered: set[int] = set()
        seen_sites: set[str] = set()
        before = len(self.excluded)
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            problem = self._problem(reply, length=length, scale_bits=scale_bits, need_site=need_site,
                                    read=into is None)
            if not reply.has_error() and "refusal" in reply.content:
                self.site_of.setdefault(node, str(reply.content["refusal"].get("site-id", node)))
            site = str(reply.content["site"]["site-id"]) if not problem and "site" in reply.content else None
            if site is not None and site in seen_sites:
                problem = f"a second reply in the name of site {site!r}"
            if not problem and into is not None:
                problem = self._fold(reply, into)
            if problem:
                self._exclude(server_round, phase, node, problem)
                continue
            if site is not None:
                seen_sites.add(site)
                self.site_of[node] = site
            good.append(reply)
        for node in sorted(set(expected_nodes) - answered):
            self._exclude(server_round, phase, node, "no reply before the timeout")
        if len(good) < self.min_sites:
            left_out = "; ".join(f"{e.label}: {e.reason}" for e in self.named()[before:])
            raise NotEnoughSitesError(
                f"{phase} (round {server_round}): {len(good)} usable repl(ies), at least {self.min_sites} "
                f"(min-sites) needed. Left out: {left_out or 'none'}"
            )
        return good

    def named(self) -> list[ExcludedReply]:
        """The exclusions so far, each with its site's id where the run has learnt it."""
        return [replace(e, site=self.site_of.get(e.node, e.site)) for e in self.excluded]

    def _exclude(self, server_round: int, phase: str, node: int, reason: str) -> None:
        entry = ExcludedReply(round=server_round, phase=phase, node=node, reason=reason[:_MAX_REASON],
                              site=self.site_of.get(node))
        self.excluded.append(entry)
        logger.warning("left out %s in %s (round %d): %s", entry.label, phase, server_round, entry.reason)

    @staticmethod
    def _fold(reply: Message, into: RunningSum) -> str | None:
        """Add the reply's ciphertext to ``into`` and drop it from the reply; the problem, if any."""
        try:
            into.add(ciphertext_of(reply))
        except (KeyError, TypeError, AttributeError):
            return "no ciphertext"
        except CiphertextError as exc:
            return f"not a valid ciphertext: {exc}"
        del reply.content["ciphertext"]
        return None

    def _problem(self, reply: Message, *, length: int | None, scale_bits: int | None, need_site: bool,
                 read: bool = True) -> str | None:
        if reply.has_error():
            return f"error reply: {_short(reply.error.reason)}"
        content = reply.content
        if "refusal" in content:  # the site's policy declined the job: a declared reply
            refusal = content["refusal"]
            return f"declined by {refusal.get('site-id', 'the site')}: {str(refusal.get('reason', ''))[:_MAX_REASON]}"
        try:
            rows = float(content["metrics"]["num-examples"])
        except (KeyError, TypeError, ValueError):
            return "no declared num-examples"
        if not (np.isfinite(rows) and rows >= 0):
            return f"declared num-examples {rows} is not a row count"
        if (need_site or length is not None) and "site" not in content:
            return "no site id"
        if length is None:
            return None
        if self.aggregator is not None:
            if not read:  # checked when it is added (``_fold``)
                return None
            try:
                self.aggregator.read(ciphertext_of(reply), length=length, scale_bits=scale_bits)
            except (KeyError, TypeError, AttributeError):
                return "no ciphertext"
            except CiphertextError as exc:
                return f"not a valid ciphertext: {exc}"
            return None
        try:
            (values,) = content["arrays"].to_numpy_ndarrays()
        except (KeyError, TypeError, ValueError, AttributeError):
            return "no update array"
        if values.size != length:
            return f"update holds {values.size} values, expected {length}"
        if not np.isfinite(values).all():
            return "update holds non-finite values"
        return None


class ScreenedFedAvg(FedAvg):
    """FedAvg that screens every train and evaluate reply first (plaintext updates).

    ``n_params`` is the length of the flat model; each reply is weighted by its ``num-examples``.
    With ``node_timeout``, a round waits that long for ``min_available_nodes`` connected sites, then
    fails naming those gone (``coordinator.quorum``); Flower's own wait has no end.
    """

    def __init__(self, *, screen: ReplyScreen, n_params: int, node_timeout: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.screen = screen
        self.n_params = n_params
        self.node_timeout = node_timeout
        self._sent: dict[str, set[int]] = {"train": set(), "evaluate": set()}
        self.update_bytes: list[float] = []  # per round: the mean bytes of an update a site sent

    @property
    def update_length(self) -> int:
        return self.n_params

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config,
                                                self._quorum(grid, "train", server_round)))
        self._sent["train"] = {m.metadata.dst_node_id for m in messages}
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config,
                                                   self._quorum(grid, "evaluate", server_round)))
        self._sent["evaluate"] = {m.metadata.dst_node_id for m in messages}
        return messages

    def _quorum(self, grid: Grid, phase: str, server_round: int) -> Grid:
        if self.node_timeout is None:
            return grid
        return QuorumGrid(grid, min_sites=self.min_available_nodes, timeout=self.node_timeout,
                          label=f"{phase} (round {server_round})", names=self.screen.site_of,
                          expected={*self.screen.site_of, *self._sent["train"], *self._sent["evaluate"]})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._check_and_log_replies(replies, is_train=True, validate=False)  # Flower's own log lines
        good = self.screen.usable(replies, phase="train", server_round=server_round,
                                  expected_nodes=self._sent["train"], length=self.update_length,
                                  scale_bits=self._scale_bits())
        arrays = self._aggregate(server_round, good)
        return arrays, self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self._check_and_log_replies(replies, is_train=False, validate=False)
        good = self.screen.usable(replies, phase="evaluate", server_round=server_round,
                                  expected_nodes=self._sent["evaluate"])
        return self.evaluate_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)

    def _scale_bits(self) -> int | None:
        return None

    def _aggregate(self, server_round: int, good: list[Message]) -> ArrayRecord:
        self.update_bytes.append(float(np.mean([m.content["arrays"].count_bytes() for m in good])))
        return aggregate_arrayrecords([m.content for m in good], self.weighted_by_key)


class EncryptedFedAvg(ScreenedFedAvg):
    """FedAvg whose sites send ``Enc([w_i * theta_i, w_i])``; only the aggregation differs.

    ``w_i = n_i / N`` is site i's share of the training rows (``N = total_examples``, from the
    federated statistics). The weighted average is ``sum(w_i * theta_i) / sum(w_i)``, from one
    decryption of the encrypted sum, which the key holder grants only for the cohort of enrolled
    sites whose tags the sum carries (``federation.tags``), at least ``min-sites`` of them. The decrypted ``sum(w_i)`` must equal
    ``sum(n_i) / N`` from the rows the sites declared, or the round fails. Packed (``federation.packing``),
    each site sends its change from the model it was sent, ``Enc([w_i * (theta_i - g), w_i])``, and the
    average is ``g`` plus the decrypted average change.
    """

    def __init__(self, *, aggregator: Aggregator, key_holder: Decryptor, n_params: int, total_examples: float,
                 screen: ReplyScreen, label: QueryLabel, packed: bool = False, **kwargs) -> None:
        super().__init__(screen=screen, n_params=n_params, **kwargs)
        self.aggregator = aggregator
        # Packed updates (federation.packing): fixed point in BFV lanes, each round with its own bound.
        self.packed = packed and aggregator.packed_context is not None
        self._bounds: dict[int, float] = {}
        self._sent_models: dict[int, np.ndarray] = {}
        self.key_holder = key_holder
        self.label = label  # the run's train label; each round's decryption is asked for with its round
        self.total_examples = total_examples
        self.aggregation_seconds: list[float] = []

    @property
    def update_length(self) -> int:
        return self.n_params + 1

    def _scale_bits(self) -> int | None:
        return self.aggregator.scale_bits

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.packed:
            # Every site clips its change from the sent model to this bound before it encrypts (no overflow).
            sent = arrays.to_numpy_ndarrays()[0]
            self._bounds[server_round] = packing_bound(sent)
            self._sent_models[server_round] = np.asarray(sent, dtype=np.float64)  # sites pack their change from it
            config = ConfigRecord(dict(config) | {"packing-bound": self._bounds[server_round]})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Streaming: each ciphertext is added as its reply arrives and dropped (coordinator.streaming).
        self._running = self.aggregator.running(length=self.update_length, scale_bits=self.aggregator.scale_bits,
                                                packed=self.packed)
        self._adding_seconds = 0.0
        self._received = [0, 0]  # results, failures: Flower's own log line, counted as replies stream by
        good = self.screen.usable(self._timed(replies), phase="train", server_round=server_round,
                                  expected_nodes=self._sent["train"], length=self.update_length,
                                  scale_bits=None if self.packed else self._scale_bits(), into=self._running)
        flwr_log(INFO, "aggregate_train: Received %s results and %s failures", *self._received)
        arrays = self._aggregate(server_round, good)
        return arrays, self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)

    def _timed(self, replies: Iterable[Message]) -> Iterator[Message]:
        """The replies, timing the coordinator's work on each (screen and add), not the wait for it."""
        for reply in replies:
            self._received[1 if reply.has_error() else 0] += 1
            started = time.perf_counter()
            yield reply
            self._adding_seconds += time.perf_counter() - started

    def _aggregate(self, server_round: int, good: list[Message]) -> ArrayRecord:
        summed = self._running.serialize()
        self.aggregation_seconds.append(self._adding_seconds)
        self.update_bytes.append(self._running.bytes_added / max(self._running.count, 1))
        request = DecryptRequest.of(replace(self.label, round=server_round, inputs=inputs_of(good)),
                                    cohort=cohort_of(good),
                                    length=self.update_length, scale_bits=self.aggregator.scale_bits,
                                    site_dp=site_dp_of(good), scheme="packed" if self.packed else "ckks",
                                    bound=self._bounds.get(server_round, 0.0))
        values = self.key_holder.decrypt_aggregate(summed, request)
        # Same rule as the sites' own weights (node_agent.client_app): n_i / max(N, 1).
        declared = declared_rows(good) / max(self.total_examples, 1.0)
        check_total(f"train (round {server_round}): the weight sum", float(values[self.n_params]), declared,
                    rel=1e-3)
        average = np.asarray(values[: self.n_params]) / values[self.n_params]
        if self.packed:  # packed replies are changes from the model sent (federation.packing)
            average = self._sent_models.pop(server_round) + average
        return ArrayRecord([average])
