"""``fenji node token ...``: manage a site's access tokens on the node itself.

``token_app`` is a Typer app for ``node_app.add_typer(token_app, name="token")``; each command is a
thin wrapper over ``TokenStore``, which works while the server runs (it rereads the token file).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.errors import first_line
from node_agent.budget import node_audit
from node_agent.errors import SiteDataError, TokenFileError
from node_agent.paths import site_folder
from node_agent.serve.access import Role
from node_agent.serve.tokens import TOKEN_FILE, IssuedToken, TokenInfo, TokenStore

__all__ = ["create_token", "list_tokens", "revoke_token", "token_app"]

token_app = typer.Typer(help="Access tokens for the scoring API and the workstation page.", no_args_is_help=True)
console = Console()
SiteDir = Annotated[Path, typer.Option(help="The site's folder (tokens are kept hashed in access_tokens.json there).")]


def create_token(site_dir: Path, *, role: Role | str, name: str) -> IssuedToken:
    issued = TokenStore.for_site(site_dir).create(role=role, name=name)
    node_audit(site_dir).append(actor="site-admin", action="token-created", token_id=issued.info.token_id,
                                name=issued.info.name, role=issued.info.role.value)
    return issued


def list_tokens(site_dir: Path) -> list[TokenInfo]:
    return TokenStore.for_site(site_dir).list()


def revoke_token(site_dir: Path, token_id: str, *, force: bool = False) -> TokenInfo:
    info = TokenStore.for_site(site_dir).revoke(token_id, keep_last_admin=not force)
    node_audit(site_dir).append(actor="site-admin", action="token-revoked", token_id=info.token_id, name=info.name,
                                role=info.role.value)
    return info


@contextlib.contextmanager
def _one_line_errors(site_dir: Path, *, must_exist: bool = False) -> Iterator[None]:
    """A site folder that is a file (or, with ``must_exist``, missing) and a token file that is not
    JSON (edited by hand, cut off) as the node's errors; the root command prints them as one line."""
    site_folder(site_dir, SiteDataError, must_exist=must_exist)
    try:
        yield
    except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError both are
        raise TokenFileError(f"the token file {site_dir / TOKEN_FILE} is not readable ({first_line(exc)}): restore "
                             "it from a backup, or move it aside and create new tokens") from exc


@token_app.command("create")
def create_command(
    site_dir: SiteDir,
    role: Annotated[Role, typer.Option(help="What the holder may do.", case_sensitive=False)],
    name: Annotated[str, typer.Option(help="Who holds it, e.g. 'Dr Wang'.")],
) -> None:
    """Create a token and print it once: only its hash is stored."""
    with _one_line_errors(site_dir):
        issued = create_token(site_dir, role=role, name=name)
    console.print(f"token for {issued.info.name} ({issued.info.role.value}), id {issued.info.token_id}:")
    typer.echo(issued.token)
    console.print("[dim]Shown this once; hand it over now. Revoke with `fenji node token revoke`.[/]")


@token_app.command("list")
def list_command(site_dir: SiteDir) -> None:
    """List the site's tokens (holders and roles; never the tokens)."""
    table = Table("id", "name", "role", "created (UTC)")
    with _one_line_errors(site_dir, must_exist=True):
        infos = list_tokens(site_dir)
    for info in infos:
        table.add_row(info.token_id, info.name, info.role.value, f"{info.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@token_app.command("revoke")
def revoke_command(
    site_dir: SiteDir,
    token_id: Annotated[str, typer.Argument(help="The token's id, from `fenji node token list`.")],
    force: Annotated[bool, typer.Option(help="Revoke even the last site-admin token.")] = False,
) -> None:
    """Revoke a token: it stops working at once, also in a running server."""
    with _one_line_errors(site_dir, must_exist=True):
        info = revoke_token(site_dir, token_id, force=force)
    console.print(f"revoked {info.token_id} ({info.name}, {info.role.value})")
