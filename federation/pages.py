"""What the parties' web pages share: this package's ``static/`` folder, which the clinic's
workstation (``node_agent.serve``) and the health commission's console (``coordinator.service``) both
serve, each under its own static path and after its own files. The two pages share no other code (a
party imports nothing of another); the folder holds the model-card renderer, ``markdown.js``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHARED_STATIC", "SHARED_STATIC_DIR"]

SHARED_STATIC_DIR = Path(__file__).resolve().parent / "static"
# For Starlette's ``StaticFiles(directory=<the page's own folder>, packages=[SHARED_STATIC])``: a file
# is looked for in the page's own folder first, then in this package's ``static`` folder.
SHARED_STATIC = (__name__.rpartition(".")[0], SHARED_STATIC_DIR.name)
