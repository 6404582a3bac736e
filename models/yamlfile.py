"""Read a YAML file into a pydantic model, with one kind of error for everything that can go wrong."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from models.errors import FenjiError

__all__ = ["load_yaml_model", "safe_load"]

M = TypeVar("M", bound=BaseModel)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: ~10x faster where it is built in


def safe_load(text: str) -> object:
    """``yaml.safe_load`` with libyaml's C parser when PyYAML has it (loading a model version parses
    three task specs; with the pure-Python parser that paused a serving node for ~80 ms)."""
    return yaml.load(text, Loader=_Loader)


def load_yaml_model(path: Path, model: type[M], error: type[FenjiError], what: str) -> M:
    """Parse ``path`` as ``model``; raise ``error`` naming ``what`` ("task", "mapping") if it fails
    (missing, a folder, unreadable, not YAML, not valid).

    An empty file gives the model's defaults.
    """
    try:
        raw = safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{what} file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise error(f"{what} {path} is a folder: give the path of a {what} YAML file") from exc
    except PermissionError as exc:
        raise error(f"cannot read the {what} file {path}: permission denied") from exc
    except OSError as exc:  # e.g. a path through a file (NotADirectoryError), an I/O error
        raise error(f"cannot read the {what} file {path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{what} file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise error(f"{what} file {path} must hold a mapping at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(f"{what} file {path} is not a valid {what}:\n{exc}") from exc
