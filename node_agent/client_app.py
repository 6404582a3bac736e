"""The node agent's Flower ClientApp: thin handlers around ``node_agent.local``.

Node-local facts (where the site's data is) come only from the node: ``context.node_config
["site-dir"]`` on the deployment engine, or the simulation's site list by partition id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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

from federation.crypto import WIDE_SCALE_BITS, encrypt_contribution, load_public_context
from federation.identity import (
    ENROLMENT_FILE,
    Enrolment,
    load_enrolment,
    verify_context,
)
from federation.tags import QueryLabel
from models.calibration import Calibration
from models.encoding import EncodingParams
from models.spec import TaskSpec
from models.training import TrainConfig, dp_noise_multiplier
from models.training import evaluate as evaluate_model
from node_agent.answered import claim_query
from node_agent.egress import make_egress_guard
from node_agent.errors import EgressViolation
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

__all__ = ["app", "build_client_app"]


def _enrolment(site_dir: Path, site_id: str) -> Enrolment:
    """This site's enrolment with the key holder; it must be this site's."""
    enrolment = load_enrolment(site_dir / ENROLMENT_FILE)
    if enrolment.site_id != site_id:
        raise EgressViolation(f"the enrolment in {site_dir} is for site {enrolment.site_id!r}, not {site_id!r}")
    return enrolment


def _ciphertext_record(site_dir: Path, site_id: str, config: ConfigRecord, values: np.ndarray, *, phase: str,
                       round_: int, scale_bits: int | None = None) -> ArrayRecord:
    """Encrypt ``values`` for one query, under a public context the enrolled key holder signed.

    The query's label binds the site's tags to this run, phase and round and to the DP noise the
    site applied; the site answers each query once (``node_agent.answered``).
    """
    enrolment = _enrolment(site_dir, site_id)
    public_context = bytes(config["ckks-context"])
    # Pinned identity: a context the enrolled key holder did not sign is refused before anything is encrypted.
    verify_context(public_context, bytes(config.get("ckks-context-signature", b"")), enrolment.verify_key_bytes)
    context = load_public_context(public_context)
    label = QueryLabel(run_id=str(config["run-id"]), phase=phase, round=round_, task=str(config["task-name"]),
                       dp_epsilon=float(config.get("dp-epsilon", 0.0)) if phase == "train" else 0.0)
    claim_query(site_dir, enrolment.keyholder, label)
    blob = encrypt_contribution(context, values, site_key=enrolment.site_key_bytes, label=label, scale_bits=scale_bits)
    return ArrayRecord({"ciphertext": Array(np.frombuffer(blob, dtype=np.uint8))})


def _train_config(spec: TaskSpec, config: ConfigRecord, n_rows: int | None = None) -> TrainConfig:
    overrides = {k.replace("-", "_"): config[k] for k in ("epochs", "learning-rate", "proximal-mu", "seed") if k in config}
    train_config = TrainConfig.from_spec(spec, **overrides)
    if n_rows and float(config.get("dp-epsilon", 0.0)) > 0:
        # The site sets its own noise so that the whole run spends (epsilon, delta) on its records.
        train_config.dp_max_grad_norm = float(config.get("dp-max-grad-norm", 1.0))
        train_config.dp_noise_multiplier = dp_noise_multiplier(
            epsilon=float(config["dp-epsilon"]), delta=float(config.get("dp-delta", 1e-3)), n=n_rows,
            batch_size=train_config.batch_size, epochs=train_config.epochs * int(config["num-rounds"]),
        )
    return train_config


def build_client_app(
    sites: Sequence[Path] | None = None,
    *,
    egress_log: Path | None = None,
    allow_plaintext: bool = False,
) -> ClientApp:
    """A ClientApp; ``sites`` maps simulation partition ids to site folders."""
    app = ClientApp(mods=[make_egress_guard(log_dir=egress_log, allow_plaintext=allow_plaintext)])

    def site_dir_of(context: Context) -> Path:
        if "site-dir" in context.node_config:
            return Path(str(context.node_config["site-dir"]))
        return Path(sites[int(context.node_config["partition-id"])])  # type: ignore[index]

    def site_data(message: Message, context: Context) -> tuple[SiteData, ConfigRecord]:
        config = message.content["config"]
        spec = TaskSpec.model_validate_json(str(config["task-json"]))
        return load_site_data(site_dir_of(context), spec), config

    def encrypted(context: Context, data: SiteData, config: ConfigRecord, values: np.ndarray, *, phase: str,
                  round_: int, scale_bits: int | None = None) -> ArrayRecord:
        return _ciphertext_record(site_dir_of(context), data.site_id, config, values, phase=phase, round_=round_,
                                  scale_bits=scale_bits)

    def reply(message: Message, records: dict) -> Message:
        return Message(RecordDict(records), reply_to=message)

    @app.query("stats")
    def stats(message: Message, context: Context) -> Message:
        data, config = site_data(message, context)
        vector = site_statistics(data).vector
        n = MetricRecord({"num-examples": len(data.train_frame)})
        site = ConfigRecord({"site-id": data.site_id})
        if config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([vector]), "metrics": n, "site": site})
        # Sums of squares run large: encrypted at a smaller scale that leaves room for them.
        record = encrypted(context, data, config, vector, phase="stats", round_=0, scale_bits=WIDE_SCALE_BITS)
        return reply(message, {"ciphertext": record, "metrics": n, "site": site})

    @app.train()
    def train(message: Message, context: Context) -> Message:
        data, config = site_data(message, context)
        params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
        global_flat = message.content["arrays"].to_numpy_ndarrays()[0]
        flat, n, loss = train_update(data, params, global_flat, _train_config(data.spec, config, len(data.train_frame)))
        metrics = MetricRecord({"num-examples": n, "train-loss": float(loss)})
        site = ConfigRecord({"site-id": data.site_id})
        if config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([flat]), "metrics": metrics, "site": site})
        # Weighting is applied at the site, with w_i = n_i / N (N from the federated statistics):
        # the sums of w_i * theta_i and of w_i are all that is decrypted, and stay small for CKKS.
        weight = n / max(float(config.get("total-examples", n)), 1.0)
        weighted = np.append(weight * flat, weight)
        record = encrypted(context, data, config, weighted, phase="train", round_=int(config["server-round"]))
        return reply(message, {"ciphertext": record, "metrics": metrics, "site": site})

    @app.query("calibrate")
    def calibrate(message: Message, context: Context) -> Message:
        data, config = site_data(message, context)
        params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
        flat = message.content["arrays"].to_numpy_ndarrays()[0]
        vector = calibration_update(data, params, flat)
        n = MetricRecord({"num-examples": len(data.train_frame)})
        site = ConfigRecord({"site-id": data.site_id})
        if config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([vector]), "metrics": n, "site": site})
        record = encrypted(context, data, config, vector, phase="calibrate", round_=0, scale_bits=WIDE_SCALE_BITS)
        return reply(message, {"ciphertext": record, "metrics": n, "site": site})

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        data, config = site_data(message, context)
        params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
        flat = message.content["arrays"].to_numpy_ndarrays()[0]
        calibration = Calibration.from_dict(json.loads(str(config.get("calibration", "null"))))
        metrics = evaluate_flat(data, params, flat, calibration)
        values = {"num-examples": int(metrics["n"]), **metrics}
        site = {"site-id": data.site_id}
        if config.get("final", False):
            train_config = _train_config(data.spec, config)
            personal = personalise(data, params, flat, calibration, train_config)
            _, _, x_test, y_test = data.encoded(params)
            personal_metrics = evaluate_model(personal.model, data.spec, x_test, y_test, personal.calibration)
            values |= {f"personal-{k}": v for k, v in personal_metrics.items()}
            site["personalisation"] = personal.choice
            local_config = _train_config(data.spec, config)
            local_config.epochs = int(config.get("local-only-epochs", local_config.epochs))
            values |= {f"local-{k}": v for k, v in local_only_metrics(data, local_config).items()}
        return reply(message, {"metrics": MetricRecord(values), "site": ConfigRecord(site)})

    return app


# The deployment engine's entry point (`flwr run` with a SuperNode per clinic, each started with
# `--node-config "site-dir='/path/to/site'"`).
app = build_client_app()
