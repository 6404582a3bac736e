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

from federation.crypto import encrypt_vector, load_public_context
from models.calibration import Calibration
from models.encoding import EncodingParams
from models.spec import TaskSpec
from models.training import TrainConfig, dp_noise_multiplier
from models.training import evaluate as evaluate_model
from node_agent.egress import make_egress_guard
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


def _ciphertext_record(config: ConfigRecord, values: np.ndarray, *, scale_bits: int | None = None) -> ArrayRecord:
    context = load_public_context(bytes(config["ckks-context"]))
    blob = encrypt_vector(context, values, scale_bits=scale_bits)
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

    def site_data(message: Message, context: Context) -> tuple[SiteData, ConfigRecord]:
        config = message.content["config"]
        spec = TaskSpec.model_validate_json(str(config["task-json"]))
        if "site-dir" in context.node_config:
            site_dir = Path(str(context.node_config["site-dir"]))
        else:
            site_dir = Path(sites[int(context.node_config["partition-id"])])  # type: ignore[index]
        return load_site_data(site_dir, spec), config

    def reply(message: Message, records: dict) -> Message:
        return Message(RecordDict(records), reply_to=message)

    @app.query("stats")
    def stats(message: Message, context: Context) -> Message:
        data, config = site_data(message, context)
        vector = site_statistics(data).vector
        n = MetricRecord({"num-examples": len(data.train_frame)})
        if config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([vector]), "metrics": n})
        # Sums of squares run large: encrypted at a smaller scale that leaves room for them.
        scale_bits = int(config.get("stats-scale-bits", 25))
        return reply(message, {"ciphertext": _ciphertext_record(config, vector, scale_bits=scale_bits), "metrics": n})

    @app.train()
    def train(message: Message, context: Context) -> Message:
        data, config = site_data(message, context)
        params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
        global_flat = message.content["arrays"].to_numpy_ndarrays()[0]
        flat, n, loss = train_update(data, params, global_flat, _train_config(data.spec, config, len(data.train_frame)))
        metrics = MetricRecord({"num-examples": n, "train-loss": float(loss)})
        if config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([flat]), "metrics": metrics})
        # Weighting is applied at the site, with w_i = n_i / N (N from the federated statistics):
        # the sums of w_i * theta_i and of w_i are all that is decrypted, and stay small for CKKS.
        weight = n / max(float(config.get("total-examples", n)), 1.0)
        weighted = np.append(weight * flat, weight)
        return reply(message, {"ciphertext": _ciphertext_record(config, weighted), "metrics": metrics})

    @app.query("calibrate")
    def calibrate(message: Message, context: Context) -> Message:
        data, config = site_data(message, context)
        params = EncodingParams.from_dict(json.loads(str(config["encoding"])))
        flat = message.content["arrays"].to_numpy_ndarrays()[0]
        vector = calibration_update(data, params, flat)
        n = MetricRecord({"num-examples": len(data.train_frame)})
        if config.get("plaintext", False):
            return reply(message, {"arrays": ArrayRecord([vector]), "metrics": n})
        return reply(message, {"ciphertext": _ciphertext_record(config, vector, scale_bits=25), "metrics": n})

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
