"""``fenji keyholder …`` (also ``python -m keyholder …``): the commands the key holder's admin runs
on the key holder's own machine. Every command works on one state folder (``--home``; default
``FENJI_KEYHOLDER_HOME``, else ``keyholder`` under ``FENJI_HOME``), see ``keyholder.state``."""

from __future__ import annotations

import ipaddress
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from federation.crypto import WIDE_SCALE_BITS
from keyholder.errors import EnrolmentError
from keyholder.settings import load_keyholder_settings
from keyholder.state import KeyHolderState

__all__ = ["keyholder_app"]

keyholder_app = typer.Typer(help="Commands run by the key holder (the party that holds the secret key).",
                            no_args_is_help=True, pretty_exceptions_enable=False)
token_app = typer.Typer(help="Bearer tokens of the key holder's callers (the coordinator).", no_args_is_help=True)
keyholder_app.add_typer(token_app, name="token")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

Home = Annotated[Path | None, typer.Option(
    "--home", help="The key holder's state folder (default: FENJI_KEYHOLDER_HOME, else FENJI_HOME/keyholder).")]


def _state(home: Path | None) -> KeyHolderState:
    return KeyHolderState(home if home is not None else load_keyholder_settings().state_dir)


@keyholder_app.command("init")
def init_command(home: Home = None) -> None:
    """Make the key holder's keys (CKKS context, signing key) in its state folder; never overwrites them."""
    state = _state(home)
    made = state.init()
    verb = "Made the key holder's keys in" if made else "A key holder is already there, in"
    console.print(f"{verb} {escape(str(state.home))} (nothing overwritten).", soft_wrap=True)
    console.print(f"Key holder fingerprint: [bold]{state.keyholder_id}[/]")


@keyholder_app.command("enrol")
def enrol_command(
    site_id: Annotated[str, typer.Option(help="The site's id in the federation (e.g. its node's name).")],
    institution: Annotated[str, typer.Option(help="The clinic's registration code: one enrolment per clinic.")],
    out: Annotated[Path, typer.Option(help="Where to write the site's enrolment file (a secret of the site).")],
    home: Home = None,
) -> None:
    """Enrol a site: write its enrolment file (key holder's verification key and the site's tag key)."""
    state = _state(home).require()
    if out.exists():  # checked first: an enrolment nobody can install would block the site id
        raise EnrolmentError(f"{out} exists already; choose another --out (it may be another site's secret)")
    enrolment = state.enrol(site_id, institution)
    try:
        enrolment.save(out)
    except OSError:
        state.revoke_site(enrolment.site_id)  # the tag key exists nowhere else: undo rather than strand it
        raise
    console.print(f"Enrolled site [bold]{escape(enrolment.site_id)}[/] ({escape(enrolment.institution)}); "
                  f"its enrolment is in {escape(str(out))} (readable by you only).", soft_wrap=True)
    console.print("Hand that file to the clinic out of band (not by e-mail or through the coordinator); they "
                  f"install it with `fenji node enrol`. Key holder fingerprint to confirm by phone: "
                  f"{enrolment.keyholder}.", soft_wrap=True)


@keyholder_app.command("revoke-site")
def revoke_site_command(
    site_id: Annotated[str, typer.Option(help="The enrolled site to revoke.")],
    home: Home = None,
) -> None:
    """Revoke a site's enrolment: sums that claim it are refused from now on."""
    _state(home).require().revoke_site(site_id)
    console.print(f"Revoked site {escape(site_id)}; it may be enrolled again with a new key.", soft_wrap=True)


@token_app.command("issue")
def token_issue_command(
    name: Annotated[str, typer.Option(help="The caller's name, as the ledger records it.")],
    role: Annotated[str, typer.Option(help="The caller's role.")] = "coordinator",
    quiet: Annotated[bool, typer.Option("--quiet", help="Print the token alone (for `export X=$(…)`).")] = False,
    home: Home = None,
) -> None:
    """Issue a bearer token for a caller (replacing any earlier token of that name). Shown once only."""
    token = _state(home).require().issue_token(name, role)
    if not quiet:
        console.print(f"Token for {escape(name)} ({escape(role)}), shown once; only its hash is kept:",
                      soft_wrap=True)
    typer.echo(token)  # plain: no wrapping or markup may touch it


@token_app.command("revoke")
def token_revoke_command(
    name: Annotated[str, typer.Option(help="The caller whose token to revoke.")],
    home: Home = None,
) -> None:
    """Revoke a caller's token: the service refuses it from the next request on."""
    _state(home).require().revoke_token(name)
    console.print(f"Revoked the token of {escape(name)}.", soft_wrap=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@keyholder_app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8470,
    home: Home = None,
) -> None:
    """Serve the key holder's API (info, decrypt) with min-sites from FENJI_MIN_SITES."""
    import uvicorn

    from keyholder.key_holder import KeyHolder
    from keyholder.service import create_app

    settings = load_keyholder_settings()
    state = _state(home).require()
    if not _is_loopback(host):
        # Bearer tokens and decrypted sums would cross the network in clear text otherwise.
        err_console.print(f"warning: serving on {escape(host)}, not loopback: terminate TLS in front of the key "
                          "holder (a reverse proxy) and let only the coordinator reach it")
    key_holder = KeyHolder(state, min_sites=settings.min_sites, max_dp_epsilon=settings.max_dp_epsilon)
    console.print(f"Key holder {state.keyholder_id} at http://{host}:{port} (min-sites {settings.min_sites}, "
                  f"state {escape(str(state.home))})", soft_wrap=True)
    sys.stdout.flush()
    uvicorn.run(create_app(key_holder), host=host, port=port, log_level="info")


@keyholder_app.command("show")
def show_command(home: Home = None) -> None:
    """Show this key holder: fingerprint, min-sites, CKKS parameters and the enrolled sites (never keys)."""
    import tenseal as ts

    settings = load_keyholder_settings()
    state = _state(home).require()
    context = ts.context_from(state.public_context())
    data = context.seal_context().data.key_context_data()
    degree = data.parms().poly_modulus_degree()
    table = Table("setting", "value", title="Key holder")
    table.add_row("state folder", str(state.home))
    table.add_row("fingerprint", state.keyholder_id)
    table.add_row("min-sites", f"{settings.min_sites} (FENJI_MIN_SITES, set only here): decrypts only sums over "
                               f"≥ {settings.min_sites} sites")
    table.add_row("differencing rule", "no sum whose cohort, combined with earlier ones, isolates fewer than "
                  f"min-sites sites; waived only for DP releases at epsilon ≤ {settings.max_dp_epsilon:g} "
                  "(FENJI_MAX_DP_EPSILON)")
    table.add_row("CKKS ring (poly modulus degree)", f"{degree} ({degree // 2} slots)")
    table.add_row("coefficient modulus", f"{data.total_coeff_modulus_bit_count()} bits")
    table.add_row("scale", f"2^{round(math.log2(context.global_scale))} (wide sums: 2^{WIDE_SCALE_BITS})")
    console.print(table)
    sites = Table("site", "institution", "enrolled at", title="Enrolled sites")
    for site_id, entry in sorted(state.enrolments().items()):
        sites.add_row(site_id, entry["institution"], entry["enrolled_at"])
    console.print(sites if sites.row_count else "No site enrolled yet (`fenji keyholder enrol`).")


@keyholder_app.command("ledger")
def ledger_command(
    last: Annotated[int, typer.Option(min=1, help="How many of the latest entries to show.")] = 20,
    home: Home = None,
) -> None:
    """Check the ledger's hash chain, then show its latest entries (every decryption asked for, and why refused)."""
    ledger = _state(home).require().ledger
    count = ledger.verify()  # AuditTamperedError if broken: nothing is shown from a ledger nobody can trust
    console.print(f"[green]chain intact: {count} entries[/]")
    table = Table(title=f"Last {last} entries")
    for column in ("seq", "at (UTC)", "actor", "action", "query", "cohort size"):
        table.add_column(column, no_wrap=column in ("seq", "at (UTC)", "action"))
    table.add_column("reason", overflow="fold")
    for entry in ledger.entries()[-last:]:
        details = entry.get("details", {})
        cohort = details.get("cohort")
        table.add_row(str(entry["seq"]), entry["at"][:19].replace("T", " "), entry["actor"], entry["action"],
                      details.get("query", ""), "" if cohort is None else str(len(cohort)),
                      details.get("reason", ""))
    console.print(table)
