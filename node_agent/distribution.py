"""Model distribution at the clinic: fetch the version governance marked for production, verify it,
keep the last good one, and load it offline when the coordinator cannot be reached.

Versions are cached under ``<site>/models/<task>/<version>/``; ``<site>/models/current.json`` names the
last good set (task -> version and bundle digest). A version whose bundle digest differs from the one
registered (or from the one the node was told about) is refused and the last good set stays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from models.advisor import Advisor
from models.bundle import bundle_digest
from models.errors import RegistryError

__all__ = ["ModelDistribution"]

log = logging.getLogger(__name__)


class ModelDistribution:
    def __init__(self, site_dir: Path, tracking_uri: str | None, *, alias: str = "production") -> None:
        self.cache = Path(site_dir) / "models"
        self.tracking_uri = tracking_uri
        self.alias = alias

    @property
    def state_file(self) -> Path:
        return self.cache / "current.json"

    def current(self) -> dict[str, dict[str, str]]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def fetch(self, expected_digests: Mapping[str, str] | None = None) -> Advisor:
        """The production versions from the registry, verified; they become the last good set."""
        if not self.tracking_uri:
            raise RegistryError("no model registry configured for this node")
        advisor = Advisor.from_registry(self.tracking_uri, alias=self.alias, cache_dir=self.cache)
        state = {}
        for task, ref in advisor.models.items():
            digest = bundle_digest(self.cache / task / ref.version / "bundle")
            wanted = (expected_digests or {}).get(task)
            if wanted and wanted != digest:
                raise RegistryError(f"{ref.name} version {ref.version} has digest {digest[:12]}…, but this node was "
                                    f"told to expect {wanted[:12]}…; keeping the last good version")
            state[task] = {"version": ref.version, "digest": digest}
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)
        return advisor

    def last_good(self) -> Advisor:
        """The last verified set, from the node's own disk (no network)."""
        state = self.current()
        if not state:
            raise RegistryError(f"no model has been fetched to {self.cache} yet")
        for task, entry in state.items():
            if bundle_digest(self.cache / task / entry["version"] / "bundle") != entry["digest"]:
                raise RegistryError(f"the cached {task} version {entry['version']} changed on disk; refusing it")
        return Advisor.from_folders({t: (self.cache / t / e["version"], e["version"]) for t, e in state.items()})

    def load(self, expected_digests: Mapping[str, str] | None = None) -> Advisor:
        """``fetch``, or the last good set if the registry is unreachable or refuses."""
        try:
            return self.fetch(expected_digests)
        except Exception as exc:  # noqa: BLE001 - unreachable, refused or corrupt: all mean "keep the last good"
            log.warning("model fetch failed (%s); serving the last good version", exc)
            return self.last_good()
