"""Shared helpers for benchmarks: environment facts, repeat statistics, JSON output."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import statistics
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

__all__ = ["current_rss_mb", "environment", "peak_kb", "reset_peak", "save_figure", "spread", "subplots", "write_json"]


def environment() -> dict[str, object]:
    packages = {}
    for name in ("flwr", "torch", "tenseal", "duckdb", "mlflow", "numpy"):
        try:
            packages[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is just not reported
            packages[name] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "packages": packages}


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of repeated measurements."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float))


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the file-only Agg backend (no display on a server or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: Path, *, dpi: int = 120) -> None:
    """Lay out, write (creating the folder) and close a benchmark's figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def reset_peak() -> None:
    """Forget the peak RSS this process inherited: Linux keeps the high-water mark across the fork and
    exec that start a spawned process, so without this a child of a large parent (e.g. after a run on
    Flower's engine in the same command) reports the parent's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_kb() -> float:
    """This process's peak RSS in kB since ``reset_peak`` (VmHWM), else since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def current_rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB: a benchmark's baseline before what it measures."""
    from bench.errors import BenchUnavailable

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024
    raise BenchUnavailable("no VmRSS in /proc/self/status: this benchmark measures memory on Linux only")


@contextlib.contextmanager
def quiet_flwr(quiet: bool = True):
    """Flower's logger at ERROR inside the block (when ``quiet``), its own level again after it."""
    logger = logging.getLogger("flwr")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
