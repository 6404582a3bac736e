"""``fenji keyholder …``: the key holder's commands. Today it shows what this key holder would
enforce; it becomes a service of its own (with its own key file and API) in the key-holder issue."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from federation.crypto import CKKSParams
from keyholder.settings import load_keyholder_settings

__all__ = ["keyholder_app"]

keyholder_app = typer.Typer(help="Commands run by the key holder (the party that holds the secret key).",
                            no_args_is_help=True)
console = Console()


@keyholder_app.command("show")
def show_command() -> None:
    """Show the rule this key holder enforces (FENJI_MIN_SITES) and its CKKS parameters."""
    settings, params = load_keyholder_settings(), CKKSParams()
    table = Table("setting", "value", title="Key holder")
    table.add_row("min-sites (FENJI_MIN_SITES)", f"decrypts only sums over ≥ {settings.min_sites} sites")
    table.add_row("CKKS ring (poly modulus degree)", f"{params.poly_modulus_degree} ({params.slots} slots)")
    table.add_row("coefficient moduli (bits)", ", ".join(str(b) for b in params.coeff_mod_bit_sizes))
    table.add_row("scale", f"2^{params.scale_bits}")
    console.print(table)
