"""What ``fenji node policy`` and ``fenji node status`` print: the site's policy (plans, apps, DP,
minimum n, what is released, statistics queries) and the last entries of the node's audit log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from node_agent.analytics import cell_threshold
from node_agent.policy import PlanBounds, SitePolicy

__all__ = ["audit_table", "bounds_text", "policy_notes", "show_policy"]

console = Console()


def bounds_text(bounds: PlanBounds) -> str:
    return (f"≤ {bounds.max_rounds} rounds, ≤ {bounds.max_local_epochs} local epochs, "
            f"learning rate ≤ {bounds.max_learning_rate:g}")


def _plans_table(policy: SitePolicy) -> Table:
    table = Table(title="Approved training plans", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption="bounds: most rounds / local epochs / highest learning rate")
    for column in ("task", "family", "plan", "bounds"):
        table.add_column(column, no_wrap=True)
    table.add_column("approved by", min_width=8)
    table.add_column("on (UTC)", no_wrap=True)
    for digest, plan in sorted(policy.approved_plans.items(), key=lambda item: (item[1].task, item[0])):
        bounds = plan.bounds
        table.add_row(escape(plan.task), plan.family, digest[:12],
                      f"{bounds.max_rounds}/{bounds.max_local_epochs}/{bounds.max_learning_rate:g}",
                      escape(plan.approved_by), plan.approved_at[:10])
    return table


def _dp_text(policy: SitePolicy) -> str:
    dp = policy.dp
    if not dp.enabled:
        return "off (updates leave without the site's DP noise)"
    return (f"on: epsilon {dp.epsilon_per_run:g} per run, delta {dp.delta:g}, clipping {dp.max_grad_norm:g}; "
            f"budget epsilon {dp.budget_epsilon:g} per {dp.period_days} days")


def _analytics_text(policy: SitePolicy) -> str:
    analytics = policy.analytics
    if not analytics.allowed:
        return "none answered (`fenji node policy --analytics-allow count,mean`)"
    kinds = ", ".join(analytics.allowed)
    k = cell_threshold(policy)
    if analytics.dp_epsilon > 0:
        return (f"{kinds} answered about approved tasks, with Laplace noise at epsilon {analytics.dp_epsilon:g} "
                f"per query (charged to the budget), noisy cells under {k} suppressed")
    return f"{kinds} answered about approved tasks, exact (no noise), cells under {k} rows suppressed"


def show_policy(policy: SitePolicy) -> None:
    if policy.approved_plans:
        console.print(_plans_table(policy))
    else:
        console.print("Approved training plans: [bold]none[/] (every job is refused; `fenji node approve`)")
    if policy.approved_apps:
        for digest, app in sorted(policy.approved_apps.items(), key=lambda item: item[1].approved_at):
            console.print(f"Approved app: {digest} {escape(app.app or '(by digest)')} {escape(app.version)} "
                          f"({escape(app.approved_by)}, {app.approved_at[:10]})", soft_wrap=True)
    else:
        console.print("Approved apps: [bold]none[/] (the launcher runs no app bundle; `fenji node approve-app`)")
    console.print(f"Differential privacy: {_dp_text(policy)}")
    console.print(f"Minimum n: {policy.min_n} (no number about fewer rows leaves the site)")
    console.print(f"Training loss released: {'yes' if policy.release_train_loss else 'no'}")
    console.print(f"Held-out metrics: {'on count-sized grids' if policy.coarse_metrics else 'exact above min n'}")
    console.print(f"Statistics queries: {_analytics_text(policy)}", soft_wrap=True)
    if policy.allow_plaintext:
        console.print("[yellow]Plaintext updates allowed by this policy[/]")


def policy_notes(policy: SitePolicy) -> None:
    """Warn of settings that refuse every run or query they are about (after an edit)."""
    dp = policy.dp
    if dp.enabled and dp.epsilon_per_run > dp.budget_epsilon:
        console.print("[yellow]note: epsilon per run exceeds the budget per period: every DP run will be refused[/]")
    if policy.analytics.allowed and policy.analytics.dp_epsilon > dp.budget_epsilon:
        console.print("[yellow]note: the statistics queries' epsilon exceeds the budget per period: every "
                      "noised query will be refused[/]")


def _why(details: dict[str, Any]) -> str:
    if "reason" in details:
        return str(details["reason"])
    old, new = details.get("old"), details.get("new")
    if isinstance(old, dict) and isinstance(new, dict):
        return ", ".join(f"{k} {old.get(k)} → {v}" for k, v in new.items())
    return ""


def audit_table(entries: Sequence[dict[str, Any]], *, title: str) -> Table:
    """The node audit log's ``entries`` as a table: when, what, the run and task, and why or what changed."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column, wrap in (("seq", False), ("at (UTC)", False), ("action", False), ("run", False), ("task", True)):
        table.add_column(column, no_wrap=not wrap)
    table.add_column("reason / change", ratio=1)
    for entry in entries:
        details = entry.get("details", {})
        # Run ids are 32 hex digits; their first 8 find the run in the coordinator's log.
        table.add_row(str(entry.get("seq")), str(entry.get("at", ""))[:16].replace("T", " "),
                      escape(str(entry.get("action"))), escape(str(details.get("run_id") or "")[:8]),
                      escape(str(details.get("task") or "")), escape(_why(details)))
    return table
