"""Cross-fitting folds over the validation crops: crop i (inventory order) is in fold i mod k;
fold f is scored with what was chosen on every other fold's crops, so no crop is ever scored
with a threshold or member chosen on it."""

from __future__ import annotations

from collections.abc import Sequence

from cellmapseg.errors import InputError


def assign(crops: Sequence[str], folds: int) -> dict[str, int]:
    """{crop: fold}; InputError when there are fewer crops than folds (a fold would be empty
    and its complement would hold every crop)."""
    if len(crops) < folds:
        raise InputError(f"config: key 'tuning.folds' = {folds} but there are only "
                         f"{len(crops)} validation crop(s); lower tuning.folds or add crops")
    return {crop: i % folds for i, crop in enumerate(crops)}


def tuning_crops(assignment: dict[str, int], fold: int) -> list[str]:
    """The crops a fold's choices are made on: every crop not in `fold`."""
    return [c for c, f in assignment.items() if f != fold]


def scored_crops(assignment: dict[str, int], fold: int) -> list[str]:
    return [c for c, f in assignment.items() if f == fold]
