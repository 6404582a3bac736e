"""A model version's serving bundle: the files a node needs to score, and their digest.

``task.yaml``, ``encoding.json``, ``calibration.json``, ``tier_policy.yaml`` and ``parameters.npy``
(the flat float64 parameter vector: no pickle, nothing executable). The registry logs them under
``bundle/`` with the version and tags the version with their SHA-256 (``bundle-sha256``); a node
verifies it before serving the version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

from models.calibration import Calibration
from models.encoding import EncodingParams
from models.errors import BundleError
from models.policy import TierPolicy
from models.spec import TaskSpec
from models.yamlfile import safe_load

__all__ = ["BUNDLE_FILES", "bundle_digest", "read_bundle", "write_bundle"]

BUNDLE_FILES = ("task.yaml", "encoding.json", "calibration.json", "tier_policy.yaml", "parameters.npy")


def write_bundle(folder: Path, *, spec: TaskSpec, encoding: EncodingParams, calibration: Calibration,
                 policy: TierPolicy, flat: np.ndarray) -> str:
    """Write the bundle into ``folder``; return its digest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    (folder / "encoding.json").write_text(json.dumps(encoding.to_dict(), sort_keys=True))
    (folder / "calibration.json").write_text(json.dumps(calibration.to_dict(), sort_keys=True))
    (folder / "tier_policy.yaml").write_text(yaml.safe_dump(policy.model_dump(), sort_keys=False))
    np.save(folder / "parameters.npy", np.asarray(flat, dtype=np.float64), allow_pickle=False)
    return bundle_digest(folder)


def bundle_digest(folder: Path) -> str:
    """SHA-256 over the bundle's files, in a fixed order, each prefixed by its name and size."""
    h = hashlib.sha256()
    for name in BUNDLE_FILES:
        path = Path(folder) / name
        if not path.exists():
            raise BundleError(f"model bundle {folder} lacks {name}")
        data = path.read_bytes()
        h.update(f"{name}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()


def read_bundle(folder: Path) -> tuple[TaskSpec, EncodingParams, Calibration, TierPolicy, np.ndarray]:
    folder = Path(folder)
    spec = TaskSpec.model_validate(safe_load((folder / "task.yaml").read_text(encoding="utf-8")))
    encoding = EncodingParams.from_dict(json.loads((folder / "encoding.json").read_text()))
    calibration = Calibration.from_dict(json.loads((folder / "calibration.json").read_text()))
    policy = TierPolicy.model_validate(safe_load((folder / "tier_policy.yaml").read_text()))
    flat = np.load(folder / "parameters.npy", allow_pickle=False)
    return spec, encoding, calibration, policy, flat
