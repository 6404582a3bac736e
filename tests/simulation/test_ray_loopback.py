"""The simulation engine stays on this machine: Ray listens on loopback only and connects nowhere else.

A tiny simulation runs in a child process under ``strace``, which records every ``connect``,
``sendto`` and ``sendmsg`` of it and of every process it starts (Ray's GCS, raylet, dashboard,
agents and workers); while it runs, the child lists the sockets Ray's processes listen on.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Run in the child: one site, one round, and a look at every socket Ray's processes have open
# while the round is done (on_round runs while all of them are up).
CHILD = """
import json, os, socket, sys
from pathlib import Path


def main():
    import ray  # noqa: F401  (puts the psutil that Ray bundles on the path)
    import psutil

    from simulation.engine import run_simulated_federation
    from models.spec import load_task

    out, site = Path(sys.argv[1]), Path(sys.argv[2])
    sockets = []

    def look(server_round, metrics):
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                name, conns = proc.name(), proc.net_connections(kind="inet")
            except psutil.Error:
                continue
            for c in conns:
                listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
                if listening:
                    sockets.append({"process": name, "type": c.type.name, "ip": c.laddr.ip, "port": c.laddr.port})

    # FENJI_MIN_SITES=1 (the key holder's rule): a federation of one is enough to start every part of Ray.
    os.environ["FENJI_MIN_SITES"] = "1"
    run_simulated_federation(load_task("referral_risk"), [site], rounds=1, on_round=look,
                             keyholder_home=out.parent / "keyholder")
    out.write_text(json.dumps(sockets))


if __name__ == "__main__":
    main()
"""

ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def _is_loopback(text: str) -> bool:
    ip = ipaddress.ip_address(text)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as dual-stack sockets show it
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.fixture(scope="module")
def traced_run(small_federation, tmp_path_factory):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install -y strace): it is what watches Ray's connect calls")
    work = tmp_path_factory.mktemp("loopback")
    (work / "child.py").write_text(CHILD)
    trace, sockets = work / "trace.txt", work / "sockets.json"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    # --seccomp-bpf stops only at the traced calls, so the run is not slowed by every other call.
    command = ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace),
               sys.executable, str(work / "child.py"), str(sockets), str(small_federation[0])]
    done = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return trace.read_text(), json.loads(sockets.read_text())


def test_every_socket_ray_listens_on_is_bound_to_loopback(traced_run):
    _, sockets = traced_run
    processes = {s["process"] for s in sockets}
    assert {"gcs_server", "raylet"} <= processes, f"Ray's servers were not seen running: {processes}"
    exposed = [s for s in sockets if not _is_loopback(s["ip"])]
    assert exposed == [], f"listening beyond this machine: {exposed}"


def test_no_process_connects_to_an_address_outside_this_machine(traced_run):
    trace, _ = traced_run
    addresses = {v4 or v6 for v4, v6 in ADDRESS.findall(trace)}
    assert addresses, "strace recorded no network call at all: the trace is not watching the run"
    outside = sorted(a for a in addresses if not _is_loopback(a))
    lines = [line for line in trace.splitlines() if any(f'"{a}"' in line for a in outside)]
    assert outside == [], "connected beyond this machine:\n" + "\n".join(lines[:10])
