"""The coordinator's training jobs and queries on Flower's deployment engine: the ``JobRunner`` that
submits a job with ``flwr run`` to the SuperLink the clinics' SuperNodes are connected to, and follows
it there. A statistics or surveillance query is submitted and followed the same way, as a run of the
same app with ``kind="analytics"`` (``run_query``).

How a job is followed, and why so: the ServerApp (``fenji.deployment``) writes one ``fenji-event``
line to its own log after every round and at its end (the result, or the failure with the sites left
out). The runner reads those lines from ``flwr run --stream`` (``flwr log --stream`` if that stream
is cut), reads the run's final status with ``flwr ls``, and stops a cancelled job with ``flwr stop``.
The run's id is handed to the job queue as soon as ``flwr run`` prints it: the SuperLink, not this
process, runs the job, so a coordinator that restarts mid-job stops the run by that id (``stop_run``).
Everything travels over Flower's own Control API, with the TLS trust and address the SuperLink
connection in ``$FLWR_HOME/config.toml`` already gives ``flwr``: no port, endpoint or protocol of
Fenji's own, and no disk shared between the service and the SuperLink's machine. What the log
reports is a report; the model itself is in the registry the ServerApp wrote (``FENJI_HOME`` or
``FENJI_MLFLOW_URI`` where the SuperLink runs: the coordinator service's own, for its console).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from coordinator.service.errors import JobCancelled, JobFailed
from coordinator.service.jobs import (
    JobRequest,
    JobResult,
    RoundCallback,
    dp_epsilon_refusal,
)
from coordinator.service.queries import QueryRequest
from coordinator.service.sites import Sighting
from federation.analytics import canonical
from fenji.deployment import read_event

__all__ = ["DeploymentRunner", "query_config_of", "run_config_of"]

_STARTED = re.compile(r"Successfully started run (\d+)")
_NOT_IN_LITERAL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f']")  # what a TOML literal string cannot hold
_CUT_STREAM_RETRIES = 3
log = logging.getLogger("fenji.coordinator")


def run_config_of(request: JobRequest) -> str:
    """The ``--run-config`` of a job: its task, rounds and personalisation (keys of ``pyproject.toml``).
    DP is each site's own policy on this engine (``node_agent.admission``), so ``dp_epsilon`` is not sent
    (the service refuses a job that asks for one: ``coordinator.service.jobs.dp_epsilon_refusal``)."""
    personalisation = "true" if request.personalisation else "false"
    return f"task={json.dumps(request.task)} num-server-rounds={int(request.rounds)} personalisation={personalisation}"


def query_config_of(request: QueryRequest) -> str:
    """The ``--run-config`` of a query: ``kind="analytics"``, its task and its canonical JSON (a TOML
    literal string: ``flwr`` reads a quoted value up to its closing quote).

    Raises
    ------
    JobFailed
        If the query's JSON holds a single quote, which would end that string, or a character a TOML
        literal string may not hold (a control character other than tab, or DEL; JSON escapes all
        but DEL): none of a built-in task's columns or values does.
    """
    text = canonical(request.query)
    if (bad := _NOT_IN_LITERAL.search(text)) is not None:
        raise JobFailed(f"query {request.id} cannot travel in a run config ({bad.group()!r} in {text[:80]!r})",
                        error="QueryNotSent")
    return f"kind=\"analytics\" task={json.dumps(request.task)} query='{text}'"


def _flwr() -> str:
    beside = Path(sys.executable).with_name("flwr")  # the venv's own, when the service runs from one
    return str(beside) if beside.exists() else (shutil.which("flwr") or "flwr")


class _Progress:
    """The run's events as they are read: each new round to ``on_round`` (a re-read stream repeats
    rounds; each is passed on once), and the last ``result`` or ``failed`` event."""

    def __init__(self, on_round: RoundCallback) -> None:
        self.on_round, self.rounds_done, self.end = on_round, 0, None

    def feed(self, line: str) -> None:
        event = read_event(line)
        if event is None:
            return
        if event["event"] == "round" and int(event.get("round", 0)) > self.rounds_done:
            self.rounds_done = int(event["round"])
            self.on_round(self.rounds_done, {k: float(v) for k, v in dict(event.get("metrics", {})).items()})
        elif event["event"] in ("result", "failed"):
            self.end = event


class DeploymentRunner:
    """Runs each job as a ``flwr run`` of ``app`` (the Fenji app folder whose bundle the clinics approved)
    on the SuperLink connection ``superlink`` (a ``[superlink.<name>]`` of ``$FLWR_HOME/config.toml``).

    ``flwr_home`` overrides ``FLWR_HOME`` for the ``flwr`` commands (a test's own); ``flwr`` is the CLI.
    """

    engine_name = "Flower"
    sends_dp_epsilon = False  # each site's own DP policy applies (issue #13)

    def __init__(self, app: Path, superlink: str, *, flwr_home: Path | None = None, flwr: str | None = None) -> None:
        self.app, self.superlink = Path(app), superlink
        self.flwr_home, self.flwr = flwr_home, flwr or _flwr()

    def __str__(self) -> str:
        return f"Flower's deployment engine: SuperLink {self.superlink!r}, app {self.app}"

    def _env(self) -> dict[str, str] | None:
        return None if self.flwr_home is None else {**os.environ, "FLWR_HOME": str(self.flwr_home)}

    def _command(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([self.flwr, *args], capture_output=True, text=True, env=self._env(), timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
        return done.stdout + done.stderr

    def _follow(self, argv: list[str], read: Callable[[str], None]) -> str:
        """Run ``flwr`` with ``argv`` and hand ``read`` each output line; the output's last 2000 characters.
        A ``JobCancelled`` from ``read`` ends the command and is raised on."""
        proc = subprocess.Popen([self.flwr, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self._env(), stdin=subprocess.DEVNULL, errors="replace")
        tail = ""
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = (tail + line)[-2000:]
                read(line)
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)
        return tail

    def status(self, run_id: int) -> tuple[str, str]:
        """The run's status (``finished:completed``, ``running``, …) and its status details, from ``flwr ls``."""
        out = self._command("ls", self.superlink, "--run-id", str(run_id), "--format", "json")
        try:
            run = json.loads(out[out.index("{"):])["runs"][0]
        except (ValueError, KeyError, IndexError) as exc:
            raise JobFailed(f"flwr ls could not say how run {run_id} ended: {out[-500:]}",
                            error="FlowerUnavailable") from exc
        return str(run.get("status", "")), str(run.get("status-details", ""))

    def stop(self, run_id: int) -> None:
        """Stop the run on the SuperLink (``flwr stop``)."""
        self._command("stop", str(run_id), self.superlink)

    def stop_run(self, run_id: str) -> str:
        """Stop run ``run_id``, which a coordinator that has since restarted left going; one line saying
        how that went (``flwr stop --format json``). Never raises: the restart goes on either way."""
        if not str(run_id).isdigit():  # Flower's run ids are numbers: anything else never reaches flwr's argv
            return f"the stored run id {str(run_id)[:40]!r} is not a Flower run id; stop the run on {self.superlink}"
        try:
            done = subprocess.run([self.flwr, "stop", str(run_id), self.superlink, "--format", "json"],
                                  capture_output=True, text=True, env=self._env(), timeout=60,
                                  stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not run flwr stop on {self.superlink} ({type(exc).__name__}: {exc}); stop it there"
        out = (done.stdout + done.stderr).strip()
        try:
            stopped = done.returncode == 0 and json.loads(done.stdout[done.stdout.index("{"):]).get("success") is True
        except ValueError:
            stopped = False
        if stopped:
            return f"stopped on {self.superlink} (flwr stop)"
        said = " ".join(out.split())[-300:] or f"exit code {done.returncode}"
        return f"flwr stop on {self.superlink} did not confirm it stopped (it may have ended already): {said}"

    def _run(self, run_config: str, read: Callable[[str], None], on_started: Callable[[int], None]
             ) -> tuple[int, str, str]:
        """Submit a run of the app with ``run_config`` and follow its log to its end, handing ``read`` each
        line and ``on_started`` the run's id once ``flwr run`` prints it; the run id, final status and
        status details. A run whose log is lost, or whose caller cancels (``JobCancelled`` from ``read``),
        is stopped on the SuperLink."""
        started: list[int] = []

        def follow(line: str) -> None:
            if not started and (match := _STARTED.search(line)):
                started.append(int(match.group(1)))
                on_started(started[0])
            read(line)

        argv = ["run", str(self.app), self.superlink, "--run-config", run_config, "--stream"]
        try:
            tail = self._follow(argv, follow)
            if not started:
                raise JobFailed(f"flwr run did not start the job on {self.superlink}: {tail.strip()[-500:]}",
                                error="FlowerRunNotStarted")
            status, details = self.status(started[0])
            for _ in range(_CUT_STREAM_RETRIES):  # the log stream was cut before the run ended: follow it again
                if status.startswith("finished"):
                    break
                self._follow(["log", str(started[0]), self.superlink, "--stream"], read)
                status, details = self.status(started[0])
            if not status.startswith("finished"):  # a run nobody follows is not left running
                self.stop(started[0])
                raise JobFailed(f"lost the log of run {started[0]} on {self.superlink} ({status}): stopped it",
                                error="FlowerLogLost")
        except JobCancelled:
            if started:
                self.stop(started[0])
            raise
        return started[0], status, details

    def __call__(self, request: JobRequest, on_round: RoundCallback) -> JobResult:
        if request.dp_epsilon is not None:  # queued before this engine was configured: refused, not dropped
            raise JobFailed(str(dp_epsilon_refusal(self)), error="DpEpsilonNotSent")
        progress = _Progress(on_round)
        run_id, status, details = self._run(run_config_of(request), progress.feed,
                                            lambda started: _report_run(request, started))
        return _result(request, run_id, self._ended(run_id, status, details, progress.end))

    def run_query(self, request: QueryRequest) -> dict[str, Any]:
        """Answer a statistics or surveillance query with a ``kind="analytics"`` run of the app: the same
        dict as the simulation engine's runner (``fenji.jobs_runner.SimulationRunner.run_query``).

        Raises
        ------
        JobFailed
            If the run failed (too few sites answered, each left out named in ``sites``; the key holder
            refused the sum) or Flower could not run it.
        """
        progress = _Progress(lambda server_round, metrics: None)  # a query has no rounds
        run_id, status, details = self._run(query_config_of(request), progress.feed, lambda started: None)
        return dict(self._ended(run_id, status, details, progress.end)["answer"])

    def _ended(self, run_id: int, status: str, details: str, end: dict[str, Any] | None) -> dict[str, Any]:
        """The run's ``result`` event; its ``failed`` event, or how Flower says it ended, raised as ``JobFailed``."""
        if status == "finished:completed" and end is not None and end["event"] == "result":
            return end
        if end is not None and end["event"] == "failed":
            raise JobFailed(str(end.get("reason", details)), sites=_left_out(end.get("excluded", [])),
                            error=str(end.get("error", "FederationFailed")))
        raise JobFailed(f"run {run_id} on {self.superlink} ended {status or 'without a status'}"
                        + (f": {details}" if details else ""), error="FlowerRunFailed")


def _report_run(request: JobRequest, run_id: int) -> None:
    """Hand the run id to the queue; a failure to store it does not end a run that is going well."""
    if request.on_engine_run is None:
        return
    try:
        request.on_engine_run(str(run_id))
    except Exception:  # the job goes on; only a restart would then miss the run
        log.exception("job %s: could not store Flower run %s; a restart would not stop it", request.id, run_id)


def _left_out(excluded: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job record's ``{"site", "reason", "phase", "round"}`` of each reply the run left out."""
    return [{"site": e.get("site") or f"node {e.get('node')}", "reason": e.get("reason", ""), "phase": e.get("phase"),
             "round": e.get("round")} for e in excluded]


def _result(request: JobRequest, run_id: int, end: dict[str, Any]) -> JobResult:
    sites = {str(s): {k: float(v) for k, v in m.items()} for s, m in dict(end.get("sites", {})).items()}
    result = JobResult(sites=sites, excluded=_left_out(end.get("excluded", [])), model=end.get("model"),
                       version=None if end.get("version") is None else str(end["version"]),
                       details={"seconds": end.get("seconds"), "encrypted": end.get("encrypted"),
                                "calibration": end.get("calibration"), "train_rows": end.get("train_rows", {}),
                                "engine": "deployment", "flower_run_id": run_id})
    if request.personalisation:
        result.details["personalisation"] = end.get("personalisation", {})
    seen, reports, heads = (dict(end.get(k) or {}) for k in ("last_seen", "site_reports", "site_audit_heads"))
    result.sightings = {name: Sighting(last_seen=seen.get(name), report=reports.get(name), audit_head=heads.get(name, ""))
                        for name in sorted(set(seen) | set(reports) | set(sites))}
    return result
