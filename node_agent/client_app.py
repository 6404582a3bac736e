"""The node agent's Flower ClientApp: thin handlers around ``node_agent.local``.

Node-local facts (where the site's data is) come only from the node: ``context.node_config
["site-dir"]`` on the deployment engine, or the simulation's site list by partition id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from federation.crypto import WIDE_SCALE_BITS, encrypt_contribution
from federation.identity import ENROLMENT_FILE, Enrolment, load_enrolment
from federation.packing import encrypt_packed, packing_bound
from federation.surveillance import sum_phase
from federation.tags import QueryLabel, inputs_digest
from models.calibration import Calibration
from models.encoding import EncodingParams
from models.errors import first_line
from models.training import evaluate as evaluate_model
from node_agent.admission import Admitted, admit, refusal_content, site_train_config
from node_agent.analytics import admitted_query, answer_query
from node_agent.answered import claim_query
from node_agent.budget import charge_run, node_audit
from node_agent.contexts import keep_sent, public_context
from node_agent.curves import curve_records
from node_agent.egress import make_egress_guard
from node_agent.errors import EgressViolation, PolicyRefusal
from node_agent.local import (
    SiteData,
    calibration_update,
    evaluate_flat,
    load_site_data,
    local_only_metrics,
    personalise,
    site_statistics,
    train_update,
)
from node_agent.outcome_rows import ingest_pending_outcomes
from node_agent.policy import load_site_policy
from node_agent.site_report import site_report
from node_agent.surveillance import (
    CLINIC_SERIES,
    admitted_surveillance,
    answer_surveillance,
)

__all__ = ["app", "build_client_app"]


def _enrolment(site_dir: Path, site_id: str) -> Enrolment:
    """This site's enrolment with the key holder; it must be this site's."""
    enrolment = load_enrolment(site_dir / ENROLMENT_FILE)
    if enrolment.site_id != site_id:
        raise EgressViolation(f"the enrolment in {site_dir} is for site {enrolment.site_id!r}, not {site_id!r}")
    return enrolment


def _ciphertext_record(site_dir: Path, site_id: str, config: ConfigRecord, values: np.ndarray, *, phase: str,
                       round_: int, dp_epsilon: float = 0.0, scale_bits: int | None = None,
                       inputs: str = "", packed_weight: float | None = None) -> ArrayRecord:
    """Encrypt ``values`` for one query, under a public context the enrolled key holder signed.

    The query's label binds the site's tags to this run, phase and round and to the DP noise the
    site applied; the site answers each query once (``node_agent.answered``). With ``packed_weight``,
    ``values`` is a weighted change from the global model ``w * (theta - g)`` sent packed with its weight ``w``.
    """
    enrolment = _enrolment(site_dir, site_id)
    # Pinned identity: a context the enrolled key holder did not sign is refused before anything is
    # encrypted; a run sends its contexts once and names them by digest afterwards (node_agent.contexts).
    kind = "packed" if packed_weight is not None else "ckks"
    context = keep_sent(site_dir, config, enrolment).get(kind) or public_context(site_dir, config, kind, enrolment)
    label = QueryLabel(run_id=str(config["run-id"]), phase=phase, round=round_, task=str(config["task-name"]),
                       dp_epsilon=dp_epsilon, inputs=inputs)
    claim_query(site_dir, enrolment.keyholder, label)
    if packed_weight is not None:
        # A model update, packed (federation.packing): under the key holder's BFV context, which it signed too.
        blob = encrypt_packed(context, values, weight=packed_weight,
                              bound=float(config["packing-bound"]), site_key=enrolment.site_key_bytes, label=label)
    else:
        blob = encrypt_contribution(context, values, site_key=enrolment.site_key_bytes, label=label,
                                    scale_bits=scale_bits)
    return ArrayRecord({"ciphertext": Array(np.frombuffer(blob, dtype=np.uint8))})


# The phases whose answer leaves the site once per (run, phase, round): the train round's update, and
# the run's statistics, calibration, analytics and surveillance answers (round 0). Evaluation has its
# own rule (one per round and one final).
RELEASED_ONCE = frozenset({"train", "stats", "calibrate", "analytics", "surveillance"})


def _packed(config: ConfigRecord) -> bool:
    """Whether a training message asks for a packed update (it names or carries the packed context)."""
    return "packed-context-sha256" in config or "packed-context" in config


def _check_packing_bound(config: ConfigRecord, arrays: Sequence[np.ndarray]) -> None:
    """The round's packing bound must be the one the global model sets (``packing_bound``): a bound the
    coordinator picked per site could probe where this site's model lies."""
    expected = packing_bound(arrays[0]) if arrays else None
    if expected is None or float(config.get("packing-bound", -1.0)) != expected:
        raise PolicyRefusal(f"the packing bound {config.get('packing-bound')} is not the one the global model "
                            f"sets ({expected}): refused before training")


def build_client_app(
    sites: Sequence[Path] | None = None,
    *,
    egress_log: Path | None = None,
    allow_plaintext: bool = False,
) -> ClientApp:
    """A ClientApp; ``sites`` maps simulation partition ids to site folders."""
    def site_dir_of(context: Context) -> Path:
        if "site-dir" in context.node_config:
            return Path(str(context.node_config["site-dir"]))
        return Path(sites[int(context.node_config["partition-id"])])  # type: ignore[index]

    app = ClientApp(mods=[make_egress_guard(log_dir=egress_log, allow_plaintext=allow_plaintext,
                                            policy_of=lambda context: load_site_policy(site_dir_of(context)))])

    def guarded(phase: str, handler: Callable[[Message, Context, Admitted, SiteData], Message]):
        """Admit the message against the site's policy before any record is read; a refusal is a
        declared reply. A site with fewer training rows than its minimum n declines too."""

        def run(message: Message, context: Context) -> Message:
            site_dir, config = site_dir_of(context), message.content["config"]
            try:
                try:
                    admitted = admit(site_dir, config, phase, node_allows_plaintext=allow_plaintext)
                    # What this site was sent, bound into its tags: sites sent different inputs cannot be summed.
                    arrays = message.content["arrays"].to_numpy_ndarrays() if "arrays" in message.content else []
                    admitted.inputs = inputs_digest(dict(config), arrays)
                    if phase == "train" and _packed(config):
                        _check_packing_bound(config, arrays)
                except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                    raise PolicyRefusal(f"a malformed job: {first_line(str(exc))}") from exc
                if sites is None and admitted.policy.dp.noise_seed is not None:
                    # A seeded noise is for the simulated demo and tests only: whoever knows the seed can
                    # predict it. A node on the deployment engine refuses to run with one (as `node up` does).
                    raise PolicyRefusal("this site's policy seeds its DP noise (dp.noise_seed), which only a "
                                        "simulation may do; its admin must remove it")
                if phase == "stats":
                    # A run's first message: outcomes recorded since the last run become training rows
                    # now, before the statistics fix this run's row counts for all its rounds.
                    ingest_pending_outcomes(site_dir, admitted.spec)
                data = load_site_data(site_dir, admitted.spec)
                min_n = admitted.policy.min_n
                if len(data.train_frame) < min_n:
                    raise PolicyRefusal(f"fewer training rows than this site's minimum n ({min_n})")
                if phase == "evaluate" and len(data.test_frame) < min_n:
                    raise PolicyRefusal(f"fewer held-out rows than this site's minimum n ({min_n}): metrics withheld")
                if phase in RELEASED_ONCE:
                    # Each (run, phase, round) leaves the site once, encrypted or in plaintext, whoever asks:
                    # a second answer would be another release (fresh noise on a charge already made, or
                    # the same seeded noise on another input), which no budget counted.
                    claim_query(site_dir, "release", QueryLabel(
                        run_id=str(config.get("run-id", "")), phase=phase,
                        round=int(config.get("server-round", 0)) if phase == "train" else 0, task=admitted.spec.name))
                if phase == "evaluate":
                    # One evaluation per round and one final one: the coordinator chooses the model
                    # evaluated, so every extra evaluation is another release of exact metrics.
                    final = bool(config.get("final", False))
                    claim_query(site_dir, "evaluate", QueryLabel(
                        run_id=str(config.get("run-id", "")), phase="final-evaluate" if final else "evaluate",
                        round=int(config.get("server-round", 0)), task=admitted.spec.name))
                if phase == "train" and admitted.policy.dp.enabled:
                    # Charged only now that the site will train and release (not for a job it declines).
                    charge_run(site_dir, admitted.policy.dp, run_id=str(config["run-id"]), task=admitted.spec.name)
            except EgressViolation as exc:
                return reply(message, refusal_content(site_dir, PolicyRefusal(str(exc)), phase=phase, config=config))
            except PolicyRefusal as exc:
                return reply(message, refusal_content(site_dir, exc, phase=phase, config=config))
            return handler(message, context, admitted, data)

        return run

    def encrypted(admitted: Admitted, data: SiteData, values: np.ndarray, *, phase: str, round_: int,
                  scale_bits: int | None = None, packed_weight: float | None = None) -> ArrayRecord:
        return _ciphertext_record(admitted.site_dir, data.site_id, admitted.config, values, phase=phase,
                                  round_=round_, scale_bits=scale_bits, inputs=admitted.inputs,
                                  packed_weight=packed_weight,
                                  dp_epsilon=admitted.dp_epsilon if phase == "train" else 0.0)

    def site_record(admitted: Admitted, data: SiteData, phase: str) -> ConfigRecord:
        # The node audit log's head goes out with every reply: a later rewrite of the log is detectable.
        return ConfigRecord({"site-id": data.site_id, "dp-epsilon": admitted.dp_epsilon if phase == "train" else 0.0,
                             "audit-head": node_audit(admitted.site_dir).head(), "inputs": admitted.inputs})

    def reply(message: Message, records: dict) -> Message:
        return Message(RecordDict(records), reply_to=message)

    def summed_reply(message: Message, admitted: Admitted, data: SiteData, vector: np.ndarray, phase: str) -> Message:
        """A statistics-like reply (federated statistics, calibration): counts and sums of squares run
        large, so they are encrypted at the wide scale that leaves room for them."""
        n = MetricRecord({"num-examples": len(data.train_frame)})
        site = site_record(admitted, data, phase)
        if admitted.config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([vector]), "metrics": n, "site": site})
        record = encrypted(admitted, data, vector, phase=phase, round_=0, scale_bits=WIDE_SCALE_BITS)
        return reply(message, {"ciphertext": record, "metrics": n, "site": site})

    def stats(message: Message, context: Context, admitted: Admitted, data: SiteData) -> Message:
        answer = summed_reply(message, admitted, data, site_statistics(data).vector, "stats")
        # The site report goes with a run's first reply (node_agent.site_report; the egress guard checks it).
        report = site_report(admitted.site_dir, admitted.spec.name)
        if report:
            answer.content["report"] = MetricRecord(report)
        return answer

    def analytics(message: Message, context: Context, admitted: Admitted, data: SiteData) -> Message:
        """A federated-statistics query: suppressed (and noised, as the site's policy says) at the site."""
        config = admitted.config
        try:
            query = admitted_query(admitted.policy, admitted.spec, config)
            answer = answer_query(admitted.site_dir, admitted.spec, query, admitted.policy, run_id=str(config["run-id"]))
        except PolicyRefusal as exc:
            return reply(message, refusal_content(admitted.site_dir, exc, phase="analytics", config=config))
        site = ConfigRecord({"site-id": data.site_id, "dp-epsilon": answer.dp_epsilon, "inputs": admitted.inputs,
                             "audit-head": node_audit(admitted.site_dir).head()})
        n = MetricRecord({"num-examples": answer.rows})
        if config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([answer.vector]), "metrics": n, "site": site})
        record = _ciphertext_record(admitted.site_dir, data.site_id, config, answer.vector, phase="analytics", round_=0,
                                    dp_epsilon=answer.dp_epsilon, scale_bits=WIDE_SCALE_BITS, inputs=admitted.inputs)
        return reply(message, {"ciphertext": record, "metrics": n, "site": site})

    def surveillance(message: Message, context: Context, admitted: Admitted, data: SiteData) -> Message:
        """Daily syndrome counts: into the district's encrypted sum, or the clinic's own suppressed series."""
        config, run_id = admitted.config, str(admitted.config["run-id"])
        query = admitted_surveillance(admitted.policy, admitted.spec, config)
        answer = answer_surveillance(admitted.site_dir, admitted.spec, query, admitted.policy, run_id=run_id)
        site = {"site-id": data.site_id, "dp-epsilon": 0.0, "inputs": admitted.inputs, "district": answer.district,
                "audit-head": node_audit(admitted.site_dir).head()}
        if answer.vector is None:  # its own series, in the clear: the egress guard checks every count
            series = ArrayRecord({"counts": Array(answer.counts), "suppressed": Array(answer.suppressed)})
            return reply(message, {CLINIC_SERIES: series, "site": ConfigRecord(site | {"series-interval": answer.interval})})
        n = MetricRecord({"num-examples": answer.rows})
        if config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([answer.vector]), "metrics": n, "site": ConfigRecord(site)})
        record = _ciphertext_record(admitted.site_dir, data.site_id, config, answer.vector, round_=0,
                                    phase=sum_phase(answer.district), scale_bits=WIDE_SCALE_BITS, inputs=admitted.inputs)
        return reply(message, {"ciphertext": record, "metrics": n, "site": ConfigRecord(site)})

    def train(message: Message, context: Context, admitted: Admitted, data: SiteData) -> Message:
        config = admitted.config
        params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
        global_flat = message.content["arrays"].to_numpy_ndarrays()[0]
        flat, n, loss = train_update(data, params, global_flat, site_train_config(admitted, len(data.train_frame)))
        metrics = MetricRecord({"num-examples": n, "train-loss": float(loss)})
        site = site_record(admitted, data, "train")
        if config.get("plaintext", False):  # claimed once, as every release is (RELEASED_ONCE)
            return reply(message, {"arrays": ArrayRecord([flat]), "metrics": metrics, "site": site})
        # Weighting is applied at the site, with w_i = n_i / N (N from the federated statistics):
        # the sums of w_i * theta_i and of w_i are all that is decrypted, and stay small for CKKS.
        weight = n / max(float(config.get("total-examples", n)), 1.0)
        if _packed(config):
            if weight > 1.0 + 1e-6:  # n > N: the coordinator's total is wrong (n is declared anyway)
                return reply(message, refusal_content(admitted.site_dir, PolicyRefusal(
                    f"the round's total row count {config.get('total-examples')} is below this site's {n} rows"),
                    phase="train", config=config))
            # The change from the global model is what is packed (federation.packing): its rounding is
            # on the round's change, under a bound that follows the model's scale.
            bound = float(config["packing-bound"])
            change = np.asarray(flat, dtype=np.float64) - np.asarray(global_flat, dtype=np.float64)
            clipped = int(np.sum(np.abs(change) > bound))
            if clipped:
                # Clipped, never refused: a refusal would tell the coordinator that this site's own
                # change left the bound (one bit about its data per round). Recorded here.
                node_audit(admitted.site_dir).append(actor="node", action="packing-clip", run_id=str(config["run-id"]),
                                                     round=int(config["server-round"]), values=clipped, bound=bound)
            record = encrypted(admitted, data, min(weight, 1.0) * np.clip(change, -bound, bound), phase="train",
                               round_=int(config["server-round"]), packed_weight=min(weight, 1.0))
        else:
            record = encrypted(admitted, data, np.append(weight * flat, weight), phase="train",
                               round_=int(config["server-round"]))
        return reply(message, {"ciphertext": record, "metrics": metrics, "site": site})

    def calibrate(message: Message, context: Context, admitted: Admitted, data: SiteData) -> Message:
        params = EncodingParams.from_dict(json.loads(str(admitted.config["encoding"])))
        flat = message.content["arrays"].to_numpy_ndarrays()[0]
        return summed_reply(message, admitted, data, calibration_update(data, params, flat), "calibrate")

    def evaluate(message: Message, context: Context, admitted: Admitted, data: SiteData) -> Message:
        config = admitted.config
        params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
        flat = message.content["arrays"].to_numpy_ndarrays()[0]
        calibration = Calibration.from_dict(json.loads(str(config.get("calibration", "null"))))
        metrics = evaluate_flat(data, params, flat, calibration)
        values = {"num-examples": int(metrics["n"]), **metrics}
        site = {"site-id": data.site_id, "audit-head": node_audit(admitted.site_dir).head()}
        if config.get("final", False):
            # Local models (personalised, local-only) never leave the site; only their metrics do.
            # A job without personalisation skips that step: no local model is fitted, none is reported.
            if bool(config.get("personalisation", True)):
                personal = personalise(data, params, flat, calibration, site_train_config(admitted))
                _, _, x_test, y_test = data.encoded(params)
                personal_metrics = evaluate_model(personal.model, data.spec, x_test, y_test, personal.calibration)
                values |= {f"personal-{k}": v for k, v in personal_metrics.items()}
                site["personalisation"] = personal.choice
            local_config = site_train_config(admitted)
            local_config.epochs = int(config.get("local-only-epochs", local_config.epochs))
            values |= {f"local-{k}": v for k, v in local_only_metrics(data, local_config).items()}
        # The global model's ROC and reliability counts, with the final evaluation only (node_agent.curves).
        curves = curve_records(data, params, flat, calibration, admitted.policy.min_n) if config.get("final", False) else {}
        return reply(message, {"metrics": MetricRecord(values), "site": ConfigRecord(site), **curves})

    app.query("stats")(guarded("stats", stats))
    app.train()(guarded("train", train))
    app.query("calibrate")(guarded("calibrate", calibrate))
    app.query("analytics")(guarded("analytics", analytics))
    app.query("surveillance")(guarded("surveillance", surveillance))
    app.evaluate()(guarded("evaluate", evaluate))
    return app


# The deployment engine's entry point (`flwr run` with a SuperNode per clinic, each started with
# `--node-config "site-dir='/path/to/site'"`).
app = build_client_app()
