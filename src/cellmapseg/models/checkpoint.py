"""Checkpoints: written atomically, loaded with weights_only=True, checked against the config.

Only tensors and plain types are stored (no pickled objects), so `torch.load(...,
weights_only=True)` can read them and a checkpoint cannot run code when loaded.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cellmapseg.atomic import atomic_path
from cellmapseg.errors import InputError

FORMAT = 1
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _detail(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())[:200]


def identity(network: dict[str, Any], atomic: Sequence[str]) -> dict[str, Any]:
    """What a checkpoint's weights fit: the network section and the classes of its output
    channels (a checkpoint of other classes has other heads, or the same heads meaning other
    classes)."""
    return {**network, "classes": list(atomic)}


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
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if not text.startswith("Weights only load failed"):
            raise InputError(f"checkpoint {path}: truncated or corrupt ({_detail(exc)})") from exc
        # torch's weights_only unpickler stopped. Never repeat its hint to retry with
        # weights_only=False: that would run whatever the file holds.
        found = _GLOBAL.search(text)
        if found:  # a class or function reference: an arbitrary pickled object
            raise InputError(
                f"checkpoint {path}: refused: it holds a pickled object ({found.group(1)}) "
                "other than tensors and plain values (checkpoints load with weights_only=True)"
            ) from exc
        _, sep, rest = text.partition("WeightsUnpickler error:")
        detail = _detail(rest.split("Check the documentation", 1)[0]) if sep else ""
        raise InputError(f"checkpoint {path}: truncated or corrupt "
                         f"({detail or 'not a readable pickle stream'})") from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        detail = _cut_short(path) or _detail(exc)
        raise InputError(f"checkpoint {path}: truncated or corrupt ({detail})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"checkpoint {path}: not a cellmapseg checkpoint (format {FORMAT})")
    if model_name is not None and state.get("model_name") != model_name:
        raise InputError(f"checkpoint {path}: written for model '{state.get('model_name')}', "
                         f"not '{model_name}'")
    if network is not None and state.get("network") != network:
        saved = state.get("network") or {}
        changed = "; ".join(f"{key} is {_get(saved, key)!r} in the checkpoint, "
                            f"{_get(network, key)!r} configured"
                            for key in _differences(saved, network))
        raise InputError(f"checkpoint {path}: network config differs from this model's: {changed}")
    return state


def inference_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint predicts with: the EMA's when training kept one."""
    return state["ema_model"] if state.get("ema_model") is not None else state["model"]


def _cut_short(path: Path) -> str | None:
    """torch.save writes a zip archive, whose directory is at the end: a file that starts like
    one but has no directory was cut short (torch itself reports only an OSError)."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return f"a zip archive without its directory: cut short at {path.stat().st_size} bytes"
    return None


def _get(tree: Any, dotted: str) -> Any:  # a JSON-like value
    for part in dotted.split(".") if dotted else ():
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
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


def check_same_world(path: Path, state: dict[str, Any], world: int) -> None:
    """Refuse to resume under another world size: the steps per epoch, each rank's share of the
    crops and the learning-rate schedule all follow from it, so the run would silently change
    its schedule halfway."""
    saved = int(state.get("world_size", world))
    if saved != world:
        raise InputError(
            f"checkpoint {path}: written by {saved} rank(s), this run has {world}; the step "
            f"schedule depends on the world size. Resume with {saved} rank(s) (train.gpus, the "
            f"job's resources.gpu, or train.cpu_ranks on CPU), or delete {path.parent} to train "
            "from scratch"
        )
