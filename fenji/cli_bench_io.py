"""What every ``fenji bench`` command shares: its console, its list options and its last step."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from models.errors import FenjiError

__all__ = ["console", "ints", "write_results"]

console = Console()
console.width = max(console.width, 120)  # the tables need room; logs are not 80 wide


def ints(text: str, option: str) -> list[int]:
    """A comma-separated list of positive integers, or a ``FenjiError`` naming the option."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FenjiError(f"{option} takes whole numbers separated by commas, not {text!r}") from None
    if not values or min(values) < 1:
        raise FenjiError(f"{option} takes positive whole numbers separated by commas, not {text!r}")
    return values


def write_results(json_out: Path, plot: Path | None, report: dict, plot_fn) -> None:
    """Every benchmark's last step: its JSON, its plot if asked for, and where they went."""
    from bench.common import write_json

    write_json(json_out, report)
    if plot:
        plot_fn(report, plot)
    console.print(f"Results written to {json_out}" + (f" and {plot}" if plot else ""))
