"""Serving: the clinic's scoring API under load, beside the framework's own ceiling.

Everything runs in one go on this machine, load generator included:

- **single**: ``POST /api/v1/score`` (one patient, a doctor's token) at 1, 8 and 32 concurrent
  connections, a bare FastAPI endpoint that returns a constant under the same uvicorn settings
  (the framework's ceiling here), and ``mlflow models serve`` serving the same three models from an
  MLflow registry, the server a user would otherwise pick (``bench.serving_mlflow``: what it serves,
  and why as a pyfunc). Its answers are checked equal to Fenji's on every benchmark patient before
  anything is measured. Throughput and p50/p99 latency come from ``wrk``.
- **batch**: ``POST /api/v1/score/batch`` with 256 patients, rows per second, beside the same
  assessment called in-process (``Advisor.assess`` on the same 256 records), and the bare forward
  passes of the three models for reference.
- **switch**: 32 connections scoring while a site admin calls ``POST /api/v1/admin/reload`` every
  ``reload_every`` seconds; the provider alternates between two trained versions read and verified
  from disk. Reported: failed requests (non-2xx or socket errors), answers by model version, and
  answers mixing two versions.

The server is the real app (``node_agent.serve.create_app``) with three really trained models (one
synthetic clinic, logistic triage/diagnosis/referral models with federated-style encodings and
calibration), in its own process, run by ``uvicorn`` as ``fenji node serve`` runs it. The load
generator is Debian's ``wrk`` (one thread), in another process; on a 2-core machine the two share
the cores, as they would on a clinic's small server.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.common import environment, save_figure, subplots
from bench.serving_load import BATCH, impl, server, wrk, wrk_version

__all__ = ["GOALS", "TASKS", "plot", "run", "train_models"]

TASKS = ("triage", "diagnosis", "referral_risk")
GOALS = {"single_throughput_ratio_at_32": 0.70, "single_p99_ms_at_32": 25.0, "batch_rows_ratio": 0.50,
         "failed_requests_during_switch": 0}


# -- the models ---------------------------------------------------------------------------------

def train_models(*, rows: int = 900, seed: int = 5) -> dict:
    """The three clinical models trained locally on one synthetic clinic (``task -> TaskModel``):
    real encodings, weights and calibration, as a site would train them (seconds, not a federation)."""
    from models.advisor import TaskModel
    from models.calibration import calibration_statistics, fit_calibration
    from models.encoding import Encoder, SiteStatistics, encode_labels
    from models.nets import build_model, get_flat
    from models.spec import load_task
    from models.training import TrainConfig, train
    from simulation.synth import ClinicProfile, generate_clinic

    frame = generate_clinic(ClinicProfile(f"bench_clinic_{seed}", rows), np.random.default_rng(seed))
    models = {}
    for task in TASKS:
        spec = load_task(task)
        params = SiteStatistics.from_frame(spec, frame).encoding_params()
        encoder = Encoder(spec, params)
        x, y = encoder.transform(frame), encode_labels(spec, frame)
        model = build_model(spec, encoder.width)
        train(model, spec, x, y, TrainConfig.from_spec(spec, epochs=20))
        calibration = fit_calibration(spec, calibration_statistics(model, spec, x, y))
        models[task] = TaskModel(spec, params, get_flat(model), calibration)
    return models


def _write_version(root: Path, version: str, seed: int) -> dict[str, tuple[Path, str]]:
    """Train one version of the three models and write it as a node keeps it (bundle + card)."""
    from models.bundle import write_bundle
    from models.policy import load_policy

    folders = {}
    for task, m in train_models(seed=seed).items():
        folder = root / task / version
        digest = write_bundle(folder / "bundle", spec=m.spec, encoding=m.encoding, calibration=m.calibration,
                              policy=load_policy("default"), flat=m.flat)
        (folder / "model_card.md").write_text(f"# fenji-{task} version {version}\n\nBenchmark model.\n")
        (folder / "bundle-sha256").write_text(digest)  # what the registry's tag says, for the provider to check
        folders[task] = (folder, version)
    return folders


def _patients(n: int, seed: int = 11) -> list[dict]:
    """``n`` realistic first visits, as the API takes them (not-recorded values left out)."""
    import pandas as pd

    from models.spec import FeatureKind, load_task
    from simulation.synth import ClinicProfile, generate_clinic

    spec = load_task("referral_risk")
    frame = generate_clinic(ClinicProfile("bench_patients", max(n, 50)), np.random.default_rng(seed))
    patients = []
    for _, row in frame.head(n).iterrows():
        patient = {}
        for f in spec.features:
            value = row.get(f.name)
            if value is None or pd.isna(value):
                continue
            if f.kind is FeatureKind.NUMERIC:
                patient[f.name] = float(value)
            elif f.kind is FeatureKind.BOOLEAN:
                patient[f.name] = bool(value)
            else:
                patient[f.name] = str(value)
        patients.append(patient)
    return patients


# -- in-process reference -----------------------------------------------------------------------

def _rate(call: Callable[[], object], rows: int, seconds: float) -> dict:
    """Rows per second of ``call`` (``rows`` per call), repeated for about ``seconds``."""
    call()  # warm
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    per_call = statistics.median(times)
    return {"rows_per_call": rows, "calls": len(times), "median_call_ms": per_call * 1000,
            "rows_per_second": rows / per_call}


def _in_process(folders: Mapping[str, tuple[Path, str]], patients: list[dict], seconds: float) -> dict:
    """The same 256 assessments, called in this process, under the server's conditions (gc frozen)."""
    import gc

    from models.advisor import Advisor

    advisor = Advisor.from_folders(folders)
    gc.collect()
    gc.freeze()
    records = [{f.name: p.get(f.name) for f in advisor.spec.features} for p in patients]  # as the API passes them

    def forward() -> None:
        for m in advisor.tasks.values():
            m.proba(m.encode(records))  # each model's own encoder, built once, as in serving

    try:
        return {"assess": _rate(lambda: advisor.assess(records), len(records), seconds),
                "assess_one": _rate(lambda: advisor.assess(records[:1]), 1, seconds),
                "forward_only": _rate(forward, len(records), seconds)}
    finally:
        gc.unfreeze()


# -- the run ------------------------------------------------------------------------------------

@dataclass
class _Site:
    site_dir: Path
    versions: list[dict[str, tuple[Path, str]]]
    doctor: str
    admin: str


def _prepare(workdir: Path) -> _Site:
    from node_agent.cli_tokens import create_token

    site_dir = workdir / "site"
    site_dir.mkdir(parents=True)
    versions = [_write_version(workdir / "models", "1", seed=5), _write_version(workdir / "models", "2", seed=6)]
    doctor = create_token(site_dir, role="doctor", name="bench doctor").token
    admin = create_token(site_dir, role="site_admin", name="bench admin").token
    return _Site(site_dir, versions, doctor, admin)


def _reloader(base: str, token: str, every: float, stop: threading.Event, log: list[dict]) -> None:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while not stop.wait(every):
            start = time.perf_counter()
            try:
                r = client.post("/api/v1/admin/reload")
                log.append({"status": r.status_code, "ms": (time.perf_counter() - start) * 1000,
                            "version": r.json().get("current", {}).get("referral_risk", {}).get("version")
                            if r.status_code == 200 else None})
            except httpx.HTTPError as exc:
                log.append({"status": None, "ms": (time.perf_counter() - start) * 1000, "error": str(exc)})


def run(*, connections: tuple[int, ...] = (1, 8, 32), duration: float = 10.0, repeats: int = 3,
        batch_connections: int = 4, reload_every: float = 0.25, progress: Callable[[str], None] | None = None) -> dict:
    """Run every phase; ``progress`` is called with each measurement's name as it starts.

    The three servers run side by side (an idle one costs nothing) and the measurements alternate
    (bare, Fenji, MLflow, bare, ...) ``repeats`` times, so a slow spell of a shared machine hits all
    of them; the medians over the repeats are reported, and every run is kept in the JSON.
    """
    from bench.serving_mlflow import (
        ANCHOR_NOTE,
        check_parity,
        invocation_body,
        mlflow_server,
        register_anchor,
    )
    from models.spec import load_task

    step = progress or (lambda name: None)
    with tempfile.TemporaryDirectory(prefix="fenji-serving-") as tmp:
        workdir = Path(tmp)
        step("training two model versions")
        site = _prepare(workdir)
        patients = _patients(BATCH)
        one = json.dumps(patients[0])
        batch_body = json.dumps({"patients": patients})
        config = {"site_dir": str(site.site_dir),
                  "versions": [{t: [str(f), v] for t, (f, v) in ver.items()} for ver in site.versions]}
        features = [f.name for f in load_task("referral_risk").features]  # the advisor's input columns
        step("training: registering the same models in MLflow for `mlflow models serve`")
        model_uri, tracking_uri = register_anchor(workdir, site.versions[0], patients[:20], features)
        anchor_one = invocation_body(patients[:1], features)
        single: dict[str, list[dict]] = {"bare": [], "fenji": [], "mlflow": []}
        batch_http: list[dict] = []
        raw: list[dict] = []
        with (server({"kind": "bare"}, workdir) as bare, server({"kind": "fenji", **config}, workdir) as fenji,
              mlflow_server(model_uri, tracking_uri, workdir) as anchor):
            step("checking that `mlflow models serve` answers as Fenji does")
            parity = check_parity(fenji, site.doctor, anchor, patients, features)
            for r in range(repeats):
                for c in connections:
                    step(f"[{r + 1}/{repeats}] bare endpoint, {c} connection(s)")
                    single["bare"].append(wrk(bare + "/bare", body=one, token=None, connections=c,
                                              duration=duration, workdir=workdir))
                    step(f"[{r + 1}/{repeats}] POST /score, {c} connection(s)")
                    single["fenji"].append(wrk(fenji + "/api/v1/score", body=one, token=site.doctor, connections=c,
                                               duration=duration, workdir=workdir))
                    step(f"[{r + 1}/{repeats}] mlflow models serve /invocations, {c} connection(s)")
                    single["mlflow"].append(wrk(anchor + "/invocations", body=anchor_one, token=None, connections=c,
                                                duration=duration, workdir=workdir))
                step(f"[{r + 1}/{repeats}] POST /score/batch ({len(patients)} patients)")
                batch_http.append(wrk(fenji + "/api/v1/score/batch", body=batch_body, token=site.doctor,
                                      connections=batch_connections, duration=duration, workdir=workdir))
                step(f"[{r + 1}/{repeats}] the same assessment in-process")
                raw.append(_in_process(site.versions[0], patients, seconds=min(duration, 5.0)))
            step("model switch under load")
            stop, reloads = threading.Event(), []
            thread = threading.Thread(target=_reloader, args=(fenji, site.admin, reload_every, stop, reloads))
            thread.start()
            try:
                switch = wrk(fenji + "/api/v1/score", body=one, token=site.doctor, connections=max(connections),
                             duration=duration, workdir=workdir, count_versions=True)
            finally:
                stop.set()
                thread.join()

    anchor_info = {"server": "mlflow models serve", "model_uri": model_uri, "request_format": "dataframe_split",
                   **parity, "note": ANCHOR_NOTE}
    return _report(single, batch_http, raw, switch, reloads, anchor_info, connections=connections, duration=duration,
                   repeats=repeats, batch_connections=batch_connections, reload_every=reload_every,
                   batch_rows=len(patients))


def _median_run(runs: list[dict]) -> dict:
    """Median throughput and latency percentiles of repeated ``wrk`` runs at one setting."""
    return {"connections": runs[0]["connections"], "repeats": len(runs),
            "requests_per_second": statistics.median(r["requests_per_second"] for r in runs),
            "latency_ms": {k: statistics.median(r["latency_ms"][k] for r in runs) for k in runs[0]["latency_ms"]},
            "failed": sum(r["failed"] for r in runs)}


def _report(single: dict, batch_http: list[dict], raw: list[dict], switch: dict, reloads: list[dict],
            anchor: dict, **inputs) -> dict:
    import fastapi
    import uvicorn

    summary = {name: [_median_run([r for r in runs if r["connections"] == c]) for c in inputs["connections"]]
               for name, runs in single.items()}
    by_c = {name: {r["connections"]: r for r in rows} for name, rows in summary.items()}
    top = max(inputs["connections"])
    comparison = [{"connections": c, "throughput_ratio": by_c["fenji"][c]["requests_per_second"] /
                   by_c["bare"][c]["requests_per_second"],
                   "fenji_minus_bare_ms_per_request": 1000 / by_c["fenji"][c]["requests_per_second"]
                   - 1000 / by_c["bare"][c]["requests_per_second"],
                   "mlflow_throughput_ratio": by_c["mlflow"][c]["requests_per_second"] /
                   by_c["bare"][c]["requests_per_second"],
                   "fenji_over_mlflow_throughput": by_c["fenji"][c]["requests_per_second"] /
                   by_c["mlflow"][c]["requests_per_second"]} for c in inputs["connections"]]
    rows = inputs["batch_rows"]
    http_rows = statistics.median(r["requests_per_second"] * rows for r in batch_http)
    raw_rows = {k: statistics.median(r[k]["rows_per_second"] for r in raw) for k in raw[0]}
    batch = {"http_rows_per_second": http_rows, "in_process_rows_per_second": raw_rows,
             "rows_ratio": http_rows / raw_rows["assess"], "http_runs": batch_http, "in_process_runs": raw}
    answers = switch.get("answers", {})
    reload_ok = [r for r in reloads if r["status"] == 200]
    switch_report = {
        **switch, "reloads": len(reloads), "reloads_ok": len(reload_ok),
        "reload_ms_median": statistics.median(r["ms"] for r in reload_ok) if reload_ok else None,
        "versions_served": sorted(k[1:] for k in answers if k.startswith("v")),
        "mixed_answers": answers.get("mixed", 0),
    }
    ratio_top = by_c["fenji"][top]["requests_per_second"] / by_c["bare"][top]["requests_per_second"]
    p99_top = by_c["fenji"][top]["latency_ms"]["p99"]
    failed_switch = switch["failed"] + switch_report["mixed_answers"]  # wrk counts non-2xx answers as failed
    goals = {
        "single_throughput_ratio_at_32": {"goal": GOALS["single_throughput_ratio_at_32"], "measured": ratio_top,
                                          "met": ratio_top >= GOALS["single_throughput_ratio_at_32"]},
        "single_p99_ms_at_32": {"goal": GOALS["single_p99_ms_at_32"], "measured": p99_top,
                                "met": p99_top <= GOALS["single_p99_ms_at_32"]},
        "batch_rows_ratio": {"goal": GOALS["batch_rows_ratio"], "measured": batch["rows_ratio"],
                             "met": batch["rows_ratio"] >= GOALS["batch_rows_ratio"]},
        "failed_requests_during_switch": {
            "goal": 0, "measured": failed_switch,
            # met only if the switch really happened: both versions answered, every reload succeeded
            "met": failed_switch == 0 and len(switch_report["versions_served"]) > 1
            and len(reload_ok) == len(reloads) > 0},
    }
    env = environment()
    env["packages"].update({"fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__})
    env["server"] = {"uvicorn_loop": impl("uvloop"), "uvicorn_http": impl("httptools"), "workers": 1}
    env["mlflow_server"] = {"command": "mlflow models serve --env-manager local --workers 1",
                            "uvicorn_loop": impl("uvloop"), "uvicorn_http": impl("httptools"),  # uvicorn's "auto"
                            "access_log": True}  # MLflow's default: one log line per request
    env["load_generator"] = wrk_version()
    return {"benchmark": "serving", "inputs": {k: list(v) if isinstance(v, tuple) else v for k, v in inputs.items()},
            "environment": env,
            "results": {"single": summary, "comparison": comparison, "batch": batch, "switch": switch_report,
                        "anchor": anchor, "single_runs": single},
            "goals": goals}


def plot(report: dict, path: Path) -> None:
    single = report["results"]["single"]
    fig, (ax1, ax2, ax3) = subplots(1, 3, figsize=(15, 4.2))
    width = 0.27
    series = [("bare", "bare FastAPI (constant)"), ("fenji", "POST /api/v1/score"),
              ("mlflow", "mlflow models serve (same models)")]
    for k, (name, label) in enumerate(series):
        rows = single[name]
        xs = np.arange(len(rows)) + (k - 1) * width
        ax1.bar(xs, [r["requests_per_second"] for r in rows], width, label=label)
        ax2.bar(xs, [r["latency_ms"]["p99"] for r in rows], width, label=f"{label}, p99")
        ax2.scatter(xs, [r["latency_ms"]["p50"] for r in rows], color="black", marker="_", s=200, zorder=3,
                    label="p50" if k == len(series) - 1 else None)
    labels = [str(r["connections"]) for r in single["fenji"]]
    for ax, title, unit in [(ax1, "single-patient throughput", "requests / s"), (ax2, "latency", "ms")]:
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax2.axhline(report["goals"]["single_p99_ms_at_32"]["goal"], color="red", linestyle="--", linewidth=1)
    batch = report["results"]["batch"]
    names = ["HTTP /score/batch", "Advisor.assess\n(in-process)", "forward passes only\n(in-process)"]
    values = [batch["http_rows_per_second"], batch["in_process_rows_per_second"]["assess"],
              batch["in_process_rows_per_second"]["forward_only"]]
    ax3.bar(names, values, color=["tab:orange", "tab:blue", "tab:gray"])
    ax3.set_yscale("log")
    ax3.set_ylabel("patients / s (log)")
    ax3.set_title(f"batch scoring, {report['inputs']['batch_rows']} patients per call")
    save_figure(fig, path, dpi=110)
