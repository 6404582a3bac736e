"""The clinic decides which app code runs on its SuperNode: a launcher that runs only approved app bundles.

On Flower's deployment engine the code a SuperNode runs comes from the app bundle (FAB) that
whoever calls ``flwr run`` submits, and Flower 1.41's ``--trusted-entities`` cannot verify a locally
built FAB (``../shared/notes/flower-app-trust.md``). So the clinic's SuperNode runs with
``--isolation process`` (it keeps the messages on its Runtime API and runs no app code itself), and
this launcher is the only process that takes its tasks:

- ``python -m node_agent.launcher superexec --site-dir S --runtime-api-address A …`` is Flower's own
  SuperExec loop (``run_superexec``), with one executor of ours: it takes ClientApp tasks only, and
  starts each as ``python -m node_agent.launcher clientapp`` instead of ``flwr-clientapp``;
- ``clientapp`` is Flower's own ``run_clientapp``, with one step added between pulling the task
  input (message, context, run, FAB) and installing the FAB: the SHA-256 of the FAB's bytes (what
  Flower calls ``fab_hash``) must be on the site's approved app list (``policy.json``,
  ``fenji node approve-app``). An unapproved FAB is never unpacked or imported: the node audits the
  refusal (``app-refused`` in ``node-audit.jsonl``) and answers with a declared refusal, which the
  coordinator shows as "declined by <site>: app not approved".

The launcher never installs an app's dependencies: they would be code the site did not approve by hash.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from io import BytesIO
from logging import INFO
from pathlib import Path

import flwr.supercore.superexec.run_superexec as flower_superexec
import flwr.supernode.runtime.run_clientapp as flower_clientapp
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.cli.flwr_clientapp import _parse_args_run_flwr_clientapp

from federation.errors import AuditTamperedError
from models.errors import first_line
from node_agent.budget import node_audit
from node_agent.errors import PolicyRefusal, SiteDataError
from node_agent.policy import fab_digest, load_site_policy

__all__ = ["AppNotApproved", "ApprovedAppExecutor", "check_task", "main", "run_approved_clientapp", "run_launcher"]

TaskInput = tuple[Message, Context, Run, Fab]
# This project's packages (pyproject.toml): the ones the launcher may have imported before the FAB's own.
_OWN_PACKAGES = frozenset({"models", "federation", "node_agent", "coordinator", "keyholder", "simulation", "bench",
                           "fenji"})


class AppNotApproved(PolicyRefusal):
    """The FAB of a task is not on the site's approved app list; it was not run (a declared refusal was sent)."""


def check_task(site_dir: Path, context: Context, fab: Fab) -> str:
    """The FAB's digest if this site may run it for this task, else a ``PolicyRefusal`` saying why.

    The digest is computed here from the bytes that would be installed, never taken from the run's
    metadata. The SuperNode's ``site-dir`` must be this launcher's: the policy checked is the policy
    of the site whose records the app would read.
    """
    digest = fab_digest(fab.content)
    node_site = context.node_config.get("site-dir")
    if node_site is None or Path(str(node_site)).resolve() != Path(site_dir).resolve():
        raise PolicyRefusal(f"the SuperNode's site-dir ({node_site}) is not this launcher's ({site_dir}): "
                            "start both with `fenji node up`")
    try:
        load_site_policy(site_dir).check_app(digest)
    except SiteDataError as exc:  # a broken policy never means "anything goes"
        raise PolicyRefusal(f"the site policy cannot be read: {first_line(exc)}") from exc
    return digest


def _refusal(site_dir: Path, message: Message, run: Run, fab: Fab, reason: str) -> Message:
    """Audit the refused app and build the declared refusal the coordinator will show."""
    try:
        run_id = str(message.content["config"].get("run-id", ""))
    except (KeyError, TypeError, AttributeError):
        run_id = ""
    entry = node_audit(site_dir).append(
        actor="node", action="app-refused", run_id=run_id, flower_run_id=run.run_id, app=run.fab_id,
        version=run.fab_version, fab=fab_digest(fab.content), message_type=message.metadata.message_type,
        reason=reason)
    return Message(RecordDict({"refusal": ConfigRecord({"site-id": Path(site_dir).name, "reason": reason,
                                                        "audit-head": entry["hash"]})}), reply_to=message)


def _forget_modules_of(fab: Fab) -> None:
    """Drop from ``sys.modules`` every module the FAB itself provides (the launcher imported this
    package to read the policy), so that Flower imports the approved FAB's code, not the copy
    installed at the node."""
    with zipfile.ZipFile(BytesIO(fab.content)) as bundle:
        tops = {name.split("/", 1)[0].removesuffix(".py") for name in bundle.namelist()} & _OWN_PACKAGES
    for name in [m for m in sys.modules if m.split(".", 1)[0] in tops]:
        del sys.modules[name]


def _verified_pull(site_dir: Path, pull: Callable[[RuntimeHttpClient], TaskInput]) -> Callable[[RuntimeHttpClient],
                                                                                              TaskInput]:
    def pull_and_check(client: RuntimeHttpClient) -> TaskInput:
        message, context, run, fab = pull(client)
        try:
            check_task(site_dir, context, fab)
        except PolicyRefusal as exc:
            try:
                reply = _refusal(site_dir, message, run, fab, str(exc))
            except AuditTamperedError as audit_error:  # unaudited, it is still refused; the coordinator hears why
                reply = Message(RecordDict({"refusal": ConfigRecord({
                    "site-id": Path(site_dir).name, "reason": f"{exc}; node audit log: {first_line(audit_error)}"})}),
                    reply_to=message)
            flower_clientapp.push_message(client, reply, context)
            # Raised into Flower's run_clientapp, which then installs and runs nothing and marks the
            # task failed with this reason; the reply above is the one the SuperLink gets.
            raise AppNotApproved(str(exc)) from exc
        _forget_modules_of(fab)
        return message, context, run, fab

    return pull_and_check


def run_approved_clientapp(site_dir: Path, *, runtime_api_address: str, token: str, insecure: bool,
                           certificates: bytes | None, parent_pid: int | None) -> None:
    """Flower's ``run_clientapp`` for one task, running the task's FAB only if the site approved it."""
    flower_clientapp.pull_task_input = _verified_pull(Path(site_dir), flower_clientapp.pull_task_input)
    flower_clientapp.run_clientapp(runtime_api_address=runtime_api_address, token=token, insecure=insecure,
                                   certificates=certificates, parent_pid=parent_pid, runtime_dependency_install=False)


class ApprovedAppExecutor(SubprocessExecutor):
    """Flower's subprocess executor for ClientApp tasks only, each started through this launcher."""

    def __init__(self, site_dir: Path) -> None:
        self.site_dir = Path(site_dir).resolve()

    def get_eligible_capacity(self, supported_task_types: set[TaskType], **_: object) -> tuple[set[TaskType], set[str]]:
        # A clinic's node runs ClientApps and nothing else (an agent app would be unapproved code too).
        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"this node runs approved ClientApps only, not {spec.task_type}")
        args = [sys.executable, "-m", "node_agent.launcher", "clientapp", "--site-dir", str(self.site_dir),
                "--runtime-api-address", spec.runtime_api_address, "--token", spec.token]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            args += ["--parent-pid", str(spec.parent_pid)]
        subprocess.Popen(args)
        return LaunchResult.accepted()


def run_launcher(site_dir: Path, *, runtime_api_address: str, insecure: bool,
                 root_certificates_path: str | None = None, parent_pid: int | None = None) -> None:
    """Take the SuperNode's tasks with Flower's SuperExec loop and this site's executor (never returns)."""
    executor = ApprovedAppExecutor(site_dir)
    log(INFO, "Fenji launcher: ClientApp tasks of %s run only if site %s approved their app bundle",
        runtime_api_address, executor.site_dir)
    # Flower 1.41 builds SuperExec's executor in ``get_executor``, with no option to change the
    # command of a task; this is the one seam where the launcher puts its own.
    flower_superexec.get_executor = lambda *_, **__: executor
    flower_superexec.run_superexec(runtime_api_address=runtime_api_address, insecure=insecure,
                                   root_certificates_path=root_certificates_path, parent_pid=parent_pid,
                                   runtime_dependency_install=False)


def _site_dir(value: str) -> Path:
    path = Path(value).resolve()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not a site folder")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m node_agent.launcher", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    superexec = commands.add_parser("superexec", help="take the SuperNode's ClientApp tasks (started by fenji node up)")
    superexec.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (host:port)")
    tls = superexec.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="plain HTTP to the SuperNode's Runtime API (loopback)")
    tls.add_argument("--root-certificates", help="CA of the SuperNode's Runtime API certificate")
    superexec.add_argument("--parent-pid", type=int, default=None)
    # Flower's own flwr-clientapp arguments, plus the site folder.
    clientapp = commands.add_parser("clientapp", parents=[_parse_args_run_flwr_clientapp()], add_help=False,
                                    conflict_handler="resolve", help="run one ClientApp task if its app is approved")
    for sub in (superexec, clientapp):
        sub.add_argument("--site-dir", required=True, type=_site_dir, help="the clinic's site folder (its policy)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "superexec":
        run_launcher(args.site_dir, runtime_api_address=args.runtime_api_address, insecure=args.insecure,
                     root_certificates_path=args.root_certificates, parent_pid=args.parent_pid)
        return
    from flwr.common.args import try_obtain_flwr_app_token

    run_approved_clientapp(args.site_dir, runtime_api_address=args.runtime_api_address,
                           token=try_obtain_flwr_app_token(args), insecure=args.insecure,
                           certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
                           parent_pid=args.parent_pid)


if __name__ == "__main__":
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    main()
