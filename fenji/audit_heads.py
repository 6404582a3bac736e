"""``fenji audit heads``: does a clinic's node audit log still hold every head it reported?

Each node sends its audit log's head hash with every reply, and the coordinator records the heads of
a run's sites in its ``training-run`` entry (``site_audit_heads``). An auditor with both logs (the
clinic's ``node-audit.jsonl`` and the coordinator's ``audit.jsonl``) checks here that the node's
chain is intact and still contains each reported head, in the order the runs saw them: a node log
rewritten after a run (an entry edited and the chain re-hashed, or entries dropped) no longer holds
the head it reported then. The coordinator's own log is covered by the key holder's countersignature
(``fenji audit verify``); this covers the other side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from federation.audit import GENESIS, AuditLog
from federation.errors import AuditTamperedError, SiteDataError

__all__ = ["HeadsReport", "check_reported_heads", "heads_command"]


@dataclass
class HeadsReport:
    site: str
    node_entries: int
    checked: list[dict] = field(default_factory=list)  # {"run": seq, "version", "head", "position"}


def check_reported_heads(node_log: AuditLog, coordinator_log: AuditLog, site: str) -> HeadsReport:
    """Check ``site``'s node log against the heads the coordinator recorded for it.

    Raises
    ------
    AuditTamperedError
        If either chain is broken, a reported head is not in the node's chain, or the heads appear in
        the node's chain in another order than the runs recorded them.
    """
    coordinator_log.verify()
    count = node_log.verify()
    positions = {GENESIS: 0} | {entry["hash"]: entry["seq"] for entry in node_log.entries()}
    report, last = HeadsReport(site=site, node_entries=count), 0
    for entry in coordinator_log.entries():
        details = entry.get("details", {})
        if entry.get("action") != "training-run" or site not in details.get("site_audit_heads", {}):
            continue
        head = str(details["site_audit_heads"][site])
        position = positions.get(head)
        what = f"{details.get('task', '?')} version {details.get('version', '?')} (coordinator entry {entry['seq']})"
        if position is None:
            raise AuditTamperedError(
                f"{site}'s node audit log no longer holds the head {head[:16]}… it reported with the run of {what}: "
                "its log was rewritten after that run")
        if position < last:
            raise AuditTamperedError(f"{site}'s node audit log holds the head it reported with {what} before the "
                                     "head of an earlier run: its entries were reordered")
        last = position
        report.checked.append({"run": entry["seq"], "what": what, "head": head, "position": position})
    return report


def heads_command(
    site_dir: Annotated[Path, typer.Option(help="The clinic's site folder (its node-audit.jsonl).")],
    site: Annotated[str | None, typer.Option(help="The site's id in the runs (default: the folder's name).")] = None,
) -> None:
    """Check that a clinic's node audit log still holds every head it reported with the coordinator's
    training runs (FENJI_HOME/audit.jsonl): exit 8 if either log was rewritten."""
    from coordinator.settings import load_coordinator_settings
    from node_agent.budget import node_audit

    settings = load_coordinator_settings()
    if not (site_dir / "node-audit.jsonl").is_file():
        raise SiteDataError(f"no node audit log in {site_dir}")
    if not settings.audit_path.is_file():
        raise SiteDataError(f"no coordinator training log at {settings.audit_path}")
    name = site or site_dir.name
    report = check_reported_heads(node_audit(site_dir), AuditLog(settings.audit_path), name)
    console = Console()
    if not report.checked:
        console.print(f"{escape(name)}: its node log is intact ({report.node_entries} entries); no training run "
                      "in the coordinator's log recorded a head for it", soft_wrap=True)
        return
    console.print(f"[green]{escape(name)}: its node log is intact ({report.node_entries} entries) and holds all "
                  f"{len(report.checked)} head(s) it reported, in order[/]", soft_wrap=True)
    for row in report.checked:
        console.print(f"  {escape(row['what'])}: head {row['head'][:16]}… at entry {row['position']}", soft_wrap=True)
