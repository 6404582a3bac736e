"""``python -m keyholder …``: the key holder's commands without the rest of Fenji (how
``keyholder.process`` starts the service). A known failure ends in one line and its exit code."""

from __future__ import annotations

import sys

from keyholder.cli import keyholder_app
from models.errors import FenjiError, first_line


def main() -> None:
    try:
        keyholder_app(prog_name="python -m keyholder")
    except FenjiError as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
