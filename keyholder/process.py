"""Start the key holder's service as a process of its own (simulation, the deployment test, the demo).

The caller gets a URL and nothing else: the service is ``python -m keyholder serve`` in a child
process that reads its own state folder, so the caller shares no memory, no pipe and no key with it.
``FENJI_MIN_SITES`` is set in the child's environment only, where the key holder reads it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from keyholder.errors import KeyHolderStateError
from keyholder.service import HEALTH_PATH
from keyholder.state import KeyHolderState

__all__ = ["LOG_FILE", "KeyHolderService", "free_port", "start_key_holder_service"]

LOG_FILE = "service.log"
_STOP_GRACE = 10.0
_TAIL_LINES = 20


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (the OS picks it; another process could still take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class KeyHolderService:
    """A running key holder service: its ``url``; ``stop()`` (or leaving the ``with`` block) ends it."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process, self.url, self.log_path = process, url, log_path

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Ask the service to stop; kill it if it has not within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_key_holder_service(home: Path, *, min_sites: int, host: str = "127.0.0.1", port: int | None = None,
                             timeout: float = 60) -> KeyHolderService:
    """Start ``python -m keyholder serve`` over the state folder ``home`` and wait until it answers.

    Raises
    ------
    KeyHolderStateError
        If ``home`` holds no key holder, or the service exits or does not answer within ``timeout``
        seconds (with the end of its log, ``home/service.log``).
    """
    home = Path(home).resolve()
    KeyHolderState(home).require()
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    command = [sys.executable, "-m", "keyholder", "serve", "--home", str(home), "--host", host, "--port", str(port)]
    log_path = home / LOG_FILE
    with log_path.open("ab") as log:  # the child holds its own copy of the descriptor
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "FENJI_MIN_SITES": str(min_sites)})
    service = KeyHolderService(process, url, log_path)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                raise KeyHolderStateError(f"the key holder service exited with code {process.returncode} before "
                                          f"it answered; end of {log_path}:\n{service.log_tail()}")
            try:
                answer = client.get(url + HEALTH_PATH).json()
                # Still running: a health answer from another process that held the port is not ours.
                if isinstance(answer, dict) and answer.get("status") == "ok" and process.poll() is None:
                    return service
            except (httpx.HTTPError, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                service.stop()
                raise KeyHolderStateError(f"the key holder service did not answer at {url} within {timeout:g} s; "
                                          f"end of {log_path}:\n{service.log_tail()}")
            time.sleep(0.1)
