"""The serving benchmark's anchor: ``mlflow models serve``, the server a user would otherwise pick for a
registered model, on the same model and the same load as the clinic's scoring API.

Fenji registers each task's network as an ``mlflow.pytorch`` model: its pyfunc takes the *encoded*
float32 matrix of one task and returns raw logits (no encoding, no calibration, one task of three).
Served as it is, it would answer a different question from ``POST /api/v1/score``. So the anchor is
the same three version folders (bundles: the same weights, encodings, calibration and tier policy)
logged as one ``mlflow.pyfunc`` model whose ``predict`` is the node's own ``Advisor.assess``: one
patient per row in, the same assessment out. It is registered in an MLflow registry (sqlite) under
the benchmark's temporary folder and served from ``models:/<name>@production`` with
``--env-manager local`` (no network). What differs is only the server: MLflow's scoring app
(FastAPI under uvicorn, one worker) with its pandas request parsing and schema enforcement, against
Fenji's app with its token check, request validation and micro-batching.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import mlflow.pyfunc

from bench.errors import BenchUnavailable
from bench.serving_load import free_port

__all__ = ["ANCHOR_NOTE", "COMPARED", "MODEL_NAME", "AdvisorPyfunc", "check_parity", "invocation_body", "mlflow_server",
           "register_anchor"]

MODEL_NAME = "fenji-advisor-anchor"
ALIAS = "production"
START_TIMEOUT = 180.0  # seconds: MLflow's CLI downloads the model from the registry before uvicorn starts
COMPARED = ("triage", "referral_risk", "tier", "diagnoses", "explanation")  # what both servers answer
ANCHOR_NOTE = (
    "Fenji registers each task's network as an mlflow.pytorch model whose pyfunc takes encoded float32 rows "
    "and returns raw logits of one task; served as it is it would not answer the clinic's request. The anchor "
    "is therefore the same version folders (same weights, encodings, calibration, tier policy) logged as one "
    "mlflow.pyfunc model whose predict is the node's Advisor.assess, registered in a sqlite MLflow registry "
    "and served by `mlflow models serve -m models:/" + MODEL_NAME + "@" + ALIAS + " --env-manager local` "
    "(uvicorn, 1 worker, MLflow's defaults: one access-log line per request). Request: one patient per call as {\"dataframe_split\": ...} with every feature a "
    "column (null = not recorded), the input schema MLflow enforces is the task spec's; answer: the same assessment as "
    "POST /api/v1/score (checked on every benchmark patient before measuring). No token, no micro-batching."
)


class AdvisorPyfunc(mlflow.pyfunc.PythonModel):
    """Fenji's advisor as an MLflow pyfunc: pickled by reference (``bench`` is importable where it serves),
    its state read from the logged artifacts (one version folder per task) in ``load_context``."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from models.advisor import Advisor

        versions = context.model_config["versions"]
        self._advisor = Advisor.from_folders({task: (Path(context.artifacts[task]), versions[task])
                                              for task in versions})
        self._features = [f.name for f in self._advisor.spec.features]

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input, params=None) -> list[dict]:
        # A column MLflow parsed from JSON null is NaN (numbers) or None (objects); the advisor reads
        # both as "not recorded", but its explanation echoes the value, so NaN becomes None as the API has it.
        # One NumPy conversion rather than DataFrame.to_dict, which alone costs more than the scoring.
        columns = list(model_input.columns)
        rows = [dict(zip(columns, row)) for row in model_input.to_numpy(dtype=object).tolist()]
        records = [{name: _none_if_nan(row.get(name)) for name in self._features} for row in rows]
        return [a.model_dump(mode="json") for a in self._advisor.assess(records)]


def _none_if_nan(value: object) -> object:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def invocation_body(patients: Sequence[Mapping[str, object]], features: Sequence[str]) -> str:
    """MLflow's ``/invocations`` body for ``patients``: ``dataframe_split``, every feature a column."""
    return json.dumps({"dataframe_split": {"columns": list(features),
                                           "data": [[p.get(name) for name in features] for p in patients]}})


def tracking_uri_for(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'mlflow' / 'registry.db').resolve()}"


def anchor_signature(folders: Mapping[str, tuple[Path, str]]) -> object:
    """The input schema MLflow enforces: the advisor's features with their types, required as the task
    spec says (an optional feature may be absent or null), output any JSON."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    from models.bundle import read_bundle
    from models.spec import FeatureKind

    spec = read_bundle(Path(folders["referral_risk"][0]) / "bundle")[0]  # the advisor's input features
    kinds = {FeatureKind.NUMERIC: "double", FeatureKind.BOOLEAN: "boolean", FeatureKind.CATEGORICAL: "string"}
    return ModelSignature(inputs=Schema([ColSpec(kinds[f.kind], f.name, required=f.required) for f in spec.features]),
                          outputs=Schema([ColSpec(AnyType())]))


def register_anchor(workdir: Path, folders: Mapping[str, tuple[Path, str]],
                    example: Sequence[Mapping[str, object]], features: Sequence[str]) -> tuple[str, str]:
    """Log the three version folders as one pyfunc, register it and alias it ``production``.

    Returns ``(model URI, tracking URI)``; both under ``workdir``. The signature is the task spec's
    (``anchor_signature``); ``example`` rows (as the API takes them) are logged as its input example.
    """
    import mlflow
    import pandas as pd

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    uri = tracking_uri_for(workdir)
    (workdir / "mlflow").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([[p.get(name) for name in features] for p in example], columns=list(features))
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        experiment = client.create_experiment("serving-anchor",
                                              artifact_location=(workdir / "mlflow" / "artifacts").as_uri())
        run = client.create_run(experiment)
        with _tracking(uri):
            # This process's active experiment may be another's (set by earlier work in it, e.g. another
            # test module on the same pytest-xdist worker): start_run refuses a run outside it.
            mlflow.set_experiment(experiment_id=experiment)
            with mlflow.start_run(run_id=run.info.run_id):
                info = mlflow.pyfunc.log_model(
                    name="advisor", python_model=AdvisorPyfunc(), signature=anchor_signature(folders),
                    input_example=frame, artifacts={task: str(folder) for task, (folder, _) in folders.items()},
                    model_config={"versions": {task: version for task, (_, version) in folders.items()}},
                    pip_requirements=["mlflow"], registered_model_name=MODEL_NAME)
        client.set_registered_model_alias(MODEL_NAME, ALIAS, str(info.registered_model_version))
    except mlflow.exceptions.MlflowException as exc:
        raise BenchUnavailable(f"cannot register the MLflow anchor model: {exc}") from exc
    return f"models:/{MODEL_NAME}@{ALIAS}", uri


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """``mlflow``'s global tracking and registry URI set to ``uri`` for the block, then restored."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # The raw settings, not get_*_uri(): those resolve an unset URI to a value, and restoring that
    # value would pin every later MLflow call in this process to this benchmark's registry.
    before = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = before


def _server_env(tracking_uri: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # MLflow starts `uvicorn` from PATH: this interpreter's
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


@contextlib.contextmanager
def mlflow_server(model_uri: str, tracking_uri: str, workdir: Path, *, port: int | None = None,
                  timeout: float = START_TIMEOUT) -> Iterator[str]:
    """``mlflow models serve`` on ``port`` (a free one by default), until the block ends; yields its base URL.

    Waits for ``GET /ping`` to answer 200 for at most ``timeout`` seconds. The CLI and the uvicorn it
    starts run in a session of their own, stopped as a group (SIGTERM, then SIGKILL) whatever happens.

    Raises
    ------
    BenchUnavailable
        If the server exits or does not answer within ``timeout`` (with the end of its log).
    """
    port = port or free_port()
    log_path = workdir / "server-mlflow.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_server_env(tracking_uri),
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BenchUnavailable(f"`mlflow models serve` exited ({proc.returncode}): "
                                       f"{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/ping", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchUnavailable(f"`mlflow models serve` did not answer /ping within {timeout:.0f} s: "
                                       f"{log_path.read_text()[-2000:]}")
            time.sleep(0.25)
        yield base
    finally:
        _stop_group(proc)
        log.close()


def check_parity(fenji: str, token: str, anchor: str, patients: Sequence[Mapping[str, object]],
                 features: Sequence[str]) -> dict:
    """Score ``patients`` on both servers (``/score/batch``, ``/invocations``) and compare the answers.

    Raises
    ------
    BenchUnavailable
        If a server refuses or any answer differs: the anchor would not be serving the same model.
    """
    with httpx.Client(timeout=120) as client:
        ours = client.post(fenji + "/api/v1/score/batch", json={"patients": list(patients)},
                           headers={"Authorization": f"Bearer {token}"})
        theirs = client.post(anchor + "/invocations", content=invocation_body(patients, features),
                             headers={"Content-Type": "application/json"})
    for name, r in (("POST /api/v1/score/batch", ours), ("mlflow /invocations", theirs)):
        if r.status_code != 200:
            raise BenchUnavailable(f"{name} answered {r.status_code}: {r.text[:500]}")
    a, b = ours.json(), theirs.json()["predictions"]
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if any(x[k] != y[k] for k in COMPARED)]
    if len(a) != len(b) or differ:
        raise BenchUnavailable(f"the MLflow anchor does not answer as Fenji does ({len(b)} answers for {len(a)}; "
                               f"rows differing: {differ[:10]}): it would not be serving the same model")
    return {"rows_compared": len(a), "fields_compared": list(COMPARED), "same_predictions": True}


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)  # the CLI's process group: uvicorn (its child) included
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 0)  # a child still alive in the group: go on to SIGKILL
                continue
            break
        except subprocess.TimeoutExpired:
            continue
