"""Checkpoints: written atomically, loaded with weights_only=True, checked against the config.

Only tensors and plain types are stored (no pickled objects), so `torch.load(...,
weights_only=True)` can read them and a checkpoint cannot run code when loaded.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cellmapseg.atomic import atomic_path
from cellmapseg.errors import InputError

FORMAT = 1


def save(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load(path: str | Path, model_name: str | None = None,
         network: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint; one-line InputError if it is missing, damaged or for another model."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise InputError(f"checkpoint {path}: truncated or corrupt ({detail})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"checkpoint {path}: not a cellmapseg checkpoint (format {FORMAT})")
    if model_name is not None and state.get("model_name") != model_name:
        raise InputError(f"checkpoint {path}: written for model '{state.get('model_name')}', "
                         f"not '{model_name}'")
    if network is not None and state.get("network") != network:
        raise InputError(f"checkpoint {path}: network config {state.get('network')} differs from "
                         f"the configured {network}")
    return state


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:  # noqa: ANN401
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def check_same_run(path: Path, state: dict[str, Any], run_config: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written under another configuration: continuing it would
    mix two schedules, and silently starting over would throw away a long run."""
    changed = _differences(state.get("run_config"), run_config)
    if changed:
        raise InputError(
            f"checkpoint {path}: written under a different configuration (changed: "
            f"{', '.join(changed)}); restore that configuration to resume, or delete "
            f"{path.parent} to train from scratch"
        )
