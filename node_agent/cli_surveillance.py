"""``fenji node surveillance``: the site admin says whether and how the clinic takes part in syndromic
surveillance (``SitePolicy.surveillance``; ``node_agent.surveillance`` answers by it).

Like every policy edit, the change is validated in full before the file is written and lands in the
node's audit log with the old and new values.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console

from models.errors import first_line
from node_agent.budget import node_audit
from node_agent.errors import SiteDataError
from node_agent.paths import site_folder
from node_agent.policy import (
    SurveillancePolicy,
    load_site_policy,
    policy_lock,
    save_site_policy,
)

__all__ = ["change_surveillance", "register", "surveillance_command"]

console = Console()


def change_surveillance(site_dir: Path, *, by: str, **changes: object) -> dict[str, tuple[object, object]]:
    """Apply ``changes`` (fields of ``SurveillancePolicy``; None: unchanged) and return ``{field: (old, new)}``.

    Raises
    ------
    SiteDataError
        If a value is not valid (the policy file is left as it was).
    """
    with policy_lock(site_dir):
        policy = load_site_policy(site_dir)
        old = policy.surveillance.model_dump()
        try:
            new = SurveillancePolicy.model_validate(old | {k: v for k, v in changes.items() if v is not None})
        except ValidationError as exc:
            raise SiteDataError(f"not a valid surveillance policy: {first_line(exc.errors()[0].get('msg', exc))}") from exc
        diff = {k: (old[k], v) for k, v in new.model_dump().items() if old[k] != v}
        if diff:
            policy.surveillance = new
            save_site_policy(site_dir, policy)
            node_audit(site_dir).append(actor=by, action="policy-changed", old={k: o for k, (o, _) in diff.items()},
                                        new={k: n for k, (_, n) in diff.items()})
    return diff


def surveillance_command(
    site_dir: Annotated[Path, typer.Option(help="The site's folder (policy.json is kept there).")],
    allow: Annotated[bool | None, typer.Option("--allow/--deny", help="Answer surveillance queries at all.")] = None,
    district: Annotated[str | None, typer.Option(help="The health district the clinic reports to.")] = None,
    clinic_series: Annotated[Literal["none", "week", "day"] | None, typer.Option(
        help="Publish the clinic's own series (and leave the district's sum): none, week or day.")] = None,
    clinic_min_cell: Annotated[int | None, typer.Option(help="Smallest count of the clinic's own series that "
                                                             "leaves; smaller ones are sent as 0 (default 10).")] = None,
    sum_min_cell: Annotated[int | None, typer.Option(help="Smallest daily count sent into the district's encrypted "
                                                          "sum (default 1: all).")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who makes the change (default: the logged-in user).")] = None,
) -> None:
    """Show the site's surveillance policy; with options, change it (audited with old and new values)."""
    site_folder(site_dir, SiteDataError, must_exist=True)
    changes = {"allowed": allow, "district": district, "clinic_series": clinic_series,
               "clinic_min_cell": clinic_min_cell, "sum_min_cell": sum_min_cell}
    if any(v is not None for v in changes.values()):
        diff = change_surveillance(site_dir, by=by or getpass.getuser(), **changes)
        for field, (old, new) in diff.items():
            console.print(f"surveillance.{field}: {old} → [bold]{new}[/]")
        if not diff:
            console.print("surveillance policy unchanged (it already had these values)")
    rules = load_site_policy(site_dir).surveillance
    if not rules.allowed:
        console.print("Syndromic surveillance: not answered (fenji node surveillance --allow --district ...)")
    elif rules.clinic_series == "none":
        console.print(f"Syndromic surveillance: daily counts into district {rules.district}'s encrypted sum "
                      f"(cells below {rules.sum_min_cell} sent as zeros); no series of its own")
    else:
        every = {"week": "weekly", "day": "daily"}[rules.clinic_series]
        console.print(f"Syndromic surveillance: the clinic publishes its own {every} series in "
                      f"district {rules.district}, counts below {rules.clinic_min_cell} sent as 0")


def register(app: typer.Typer) -> None:
    app.command("surveillance")(surveillance_command)
