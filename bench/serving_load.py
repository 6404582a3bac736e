"""The serving benchmark's machinery: two of its servers (the clinic's scoring app and a bare FastAPI
endpoint), each in a process of its own under uvicorn, and the load generator (Debian's ``wrk``). The
third server, ``mlflow models serve``, is started by ``bench.serving_mlflow``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from bench.errors import BenchUnavailable

__all__ = ["BATCH", "WRK_MARK", "free_port", "impl", "serve", "server", "wrk", "wrk_version"]

BATCH = 256
WRK_MARK = "FENJI-WRK "


# -- the servers --------------------------------------------------------------------------------

def _bare_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/bare")
    async def bare() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _fenji_app(config: Mapping) -> object:
    from federation.errors import RegistryError
    from models.advisor import Advisor
    from models.bundle import bundle_digest
    from node_agent.serve import AdvisorHolder, create_app

    versions = [{task: (Path(folder), version) for task, (folder, version) in v.items()} for v in config["versions"]]
    turn = iter(range(1, 1 << 30))

    def provider() -> Advisor:
        """Alternates between the versions, each read from disk and its digest checked, as a node's
        ``ModelDistribution`` does with the versions it has cached."""
        folders = versions[next(turn) % len(versions)]
        for task, (folder, version) in folders.items():
            if bundle_digest(folder / "bundle") != (folder / "bundle-sha256").read_text():
                raise RegistryError(f"{task} version {version}: bundle digest mismatch")
        return Advisor.from_folders(folders)

    return create_app(AdvisorHolder(Advisor.from_folders(versions[0])), site_dir=Path(config["site_dir"]),
                      max_batch=BATCH, provider=provider)


def serve(config_file: str) -> None:  # pragma: no cover - runs in the server's own process
    """The server process: ``python -m bench.serving_load CONFIG.json``."""
    import uvicorn

    config = json.loads(Path(config_file).read_text())
    app = _bare_app() if config["kind"] == "bare" else _fenji_app(config)
    uvicorn.run(app, host="127.0.0.1", port=config["port"], log_level="warning")  # as `fenji node serve`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(config: dict, workdir: Path) -> Iterator[str]:
    config = {**config, "port": free_port()}
    config_file = workdir / f"server-{config['kind']}.json"
    config_file.write_text(json.dumps(config))
    log = open(workdir / f"server-{config['kind']}.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.serving_load", str(config_file)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1])
    base = f"http://127.0.0.1:{config['port']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise BenchUnavailable(f"the {config['kind']} server exited: {Path(log.name).read_text()[-2000:]}")
            try:
                httpx.get(base + "/api/v1/health", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise BenchUnavailable(f"the {config['kind']} server did not start within 120 s") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# -- the load generator -------------------------------------------------------------------------

_LUA = r"""
wrk.method = "POST"
wrk.body = __BODY__
wrk.headers["Content-Type"] = "application/json"
__AUTH__
local threads = {}
function setup(thread) table.insert(threads, thread) end
__RESPONSE__
done = function(summary, latency, requests)
  local counts = ""
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    if c then counts = counts .. c end
  end
  io.write(string.format(
    '__MARK__{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"counts":"%s"}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, counts))
end
"""

# Counts answers by the model versions they name (one thread: its own counters, read in done()).
_COUNT_VERSIONS = r"""
local seen = {}
function response(status, headers, body)
  local key = "s" .. status
  if status == 200 then
    local versions = {}
    local n = 0
    for v in string.gmatch(body, '"version":"([^"]*)"') do
      if not versions[v] then versions[v] = true; n = n + 1 end
    end
    if n == 1 then for v, _ in pairs(versions) do key = "v" .. v end else key = "mixed" end
  end
  seen[key] = (seen[key] or 0) + 1
  local parts = {}
  for k, c in pairs(seen) do table.insert(parts, k .. "=" .. c) end
  wrk.thread:set("counts", table.concat(parts, ","))
end
"""


def _lua(body: str, token: str | None, *, count_versions: bool = False) -> str:
    def lua_string(text: str) -> str:
        return "[==[" + text + "]==]"

    auth = f'wrk.headers["Authorization"] = {lua_string("Bearer " + token)}' if token else ""
    return (_LUA.replace("__BODY__", lua_string(body)).replace("__AUTH__", auth).replace("__MARK__", WRK_MARK)
            .replace("__RESPONSE__", _COUNT_VERSIONS if count_versions else ""))


def wrk(url: str, *, body: str, token: str | None, connections: int, duration: float, workdir: Path,
        count_versions: bool = False) -> dict:
    """One ``wrk`` run (one thread): requests/s, latency percentiles in ms, errors."""
    exe = shutil.which("wrk")
    if exe is None:
        raise BenchUnavailable("the load generator `wrk` is not installed (Debian: apt-get install wrk)")
    script = workdir / f"load-{connections}.lua"
    script.write_text(_lua(body, token, count_versions=count_versions))
    out = subprocess.run([exe, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(WRK_MARK)), None)
    if out.returncode != 0 or line is None:
        raise BenchUnavailable(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    raw = json.loads(line[len(WRK_MARK):])
    seconds = raw["duration_us"] / 1e6
    latency = {k: v / 1000 for k, v in raw["latency_us"].items()}
    result = {"connections": connections, "seconds": seconds, "requests": raw["requests"],
              "requests_per_second": raw["requests"] / seconds, "latency_ms": latency,
              "failed": sum(raw["errors"].values()), "errors": raw["errors"]}
    if count_versions:
        result["answers"] = {k: int(v) for k, v in (p.split("=") for p in raw["counts"].split(",") if p)}
    return result


def impl(module: str) -> str:
    try:
        __import__(module)
        return module
    except ImportError:
        return "asyncio" if module == "uvloop" else "h11"


def wrk_version() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        return "wrk (not installed)"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk\s+(\S+)", out.stdout + out.stderr)
    return f"wrk {match.group(1) if match else '?'} (1 thread)"


if __name__ == "__main__":  # pragma: no cover - the server process
    serve(sys.argv[1])
