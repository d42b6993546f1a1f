"""The class ontology: atomic classes (one network channel each, one label value each), group
classes (unions of atomic ones, composed at prediction, never trained) and the instance classes.

Built from the config's `classes` section (schema: config_schema.yaml), whose default is the
spec's 14 classes (§3.4, label values 1-14) with the challenge's groups over them. The shipped
config/classes/challenge.yaml holds the challenge's whole ontology with its official ids.
Everything sized by the number of classes asks an `Ontology`; nothing else lists classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from cellmapseg.errors import ConfigError

# Synthetic annotation frequency of a class the configuration gives none for.
DEFAULT_FREQUENCY = 0.5


@dataclass(frozen=True)
class Ontology:
    atomic: tuple[str, ...]  # channel c predicts atomic[c]
    labels: tuple[int, ...]  # label value of atomic[c] in the label volumes
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (name, atomic members), in config order
    instance: frozenset[str]  # classes scored as instances (atomic, group, or tested only)
    tested: tuple[str, ...]  # the leaderboard's class list (may name classes not predicted)
    frequency: tuple[float, ...]  # fraction of crops annotating atomic[c] (synthetic data)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {n: c for c, n in enumerate(self.atomic)})

    # ------------------------------------------------------------------ sizes and names
    @property
    def num_channels(self) -> int:
        return len(self.atomic)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Every predicted class: the atomic ones in channel order, then the groups."""
        return (*self.atomic, *(g for g, _ in self.groups))

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.groups)

    @property
    def max_label(self) -> int:
        return max(self.labels)

    @property
    def label_dtype(self) -> np.dtype:
        """uint8 while every label value fits, else uint16."""
        return np.dtype(np.uint8 if self.max_label <= 255 else np.uint16)

    def channel(self, name: str) -> int:
        return self._index[name]

    def is_instance(self, name: str) -> bool:
        return name in self.instance

    def is_group(self, name: str) -> bool:
        return name in dict(self.groups)

    def members(self, name: str) -> tuple[int, ...]:
        """Channels whose union is class `name` (an atomic class is its own single member)."""
        if name in self._index:
            return (self._index[name],)
        return tuple(self._index[m] for m in dict(self.groups)[name])

    def label_values(self, name: str) -> tuple[int, ...]:
        """Label values whose union is class `name` in a label volume."""
        return tuple(self.labels[c] for c in self.members(name))

    def annotated(self, channels: Iterable[int]) -> tuple[str, ...]:
        """Classes annotated in a crop annotating `channels`: those atomic classes, and each
        group all of whose members are among them (a union is known only where every member
        is), in `names` order."""
        have = set(channels)
        return tuple(n for n in self.names if set(self.members(n)) <= have)

    def annotation_mask(self, channels: Iterable[int]) -> np.ndarray:
        """(num_channels,) float32: 1 for the channels a crop annotates."""
        mask = np.zeros(self.num_channels, np.float32)
        mask[list(channels)] = 1.0
        return mask

    def lookup(self) -> np.ndarray:
        """Channel + 1 of every label value 0..max_label (0: background or not a class)."""
        table = np.zeros(self.max_label + 1, np.int64)
        table[list(self.labels)] = np.arange(1, self.num_channels + 1)
        return table

    # -------------------------------------------------------------------- (de)serialise
    def as_dict(self) -> dict[str, Any]:
        return {
            "atomic": [{"name": n, "label": v, "frequency": f}
                       for n, v, f in zip(self.atomic, self.labels, self.frequency, strict=True)],
            "groups": [{"name": g, "members": list(m)} for g, m in self.groups],
            "instance": sorted(self.instance, key=self._order),
            "tested": list(self.tested),
        }

    def _order(self, name: str) -> tuple[int, int]:
        """Ontology order, then tested order for tested-only classes."""
        if name in self.names:
            return 0, self.names.index(name)
        return 1, self.tested.index(name) if name in self.tested else len(self.tested)

    def summary(self) -> dict[str, Any]:
        """What eval_summary.json and the report record of the ontology."""
        return {"atomic": list(self.atomic), "groups": {g: list(m) for g, m in self.groups},
                "instance": sorted(self.instance, key=self._order),
                "tested": list(self.tested)}


def from_config(section: Mapping[str, Any]) -> Ontology:
    """The ontology of a schema-validated `classes` section; ConfigError, one line per problem
    (duplicate, unknown member, group of groups, unknown instance class), naming the key."""
    atomic = list(section["atomic"])
    groups = list(section["groups"])
    problems: list[str] = []
    names: dict[str, str] = {}  # name -> the key that defined it
    labels: dict[int, str] = {}
    for i, entry in enumerate(atomic):
        key = f"classes.atomic[{i}]"
        _unique(names, entry["name"], key, problems)
        if entry["label"] in labels:
            problems.append(f"config: key '{key}.label' = {entry['label']} is the label value of "
                            f"{labels[entry['label']]} already")
        labels.setdefault(entry["label"], entry["name"])
    atomic_names = {e["name"] for e in atomic}
    for i, entry in enumerate(groups):
        key = f"classes.groups[{i}]"
        _unique(names, entry["name"], key, problems)
        problems.extend(_member_problems(entry, key, atomic_names, {g["name"] for g in groups}))
    for i, name in enumerate(section["instance"]):
        if name not in names and name not in section["tested"]:
            problems.append(f"config: key 'classes.instance[{i}]': '{name}' is neither a class "
                            "of classes.atomic/groups nor a tested class")
    problems.extend(_duplicates(section["instance"], "classes.instance"))
    problems.extend(_duplicates(section["tested"], "classes.tested"))
    if problems:
        raise ConfigError("\n".join(problems))
    return Ontology(
        atomic=tuple(e["name"] for e in atomic), labels=tuple(int(e["label"]) for e in atomic),
        groups=tuple((g["name"], tuple(g["members"])) for g in groups),
        instance=frozenset(section["instance"]), tested=tuple(section["tested"]),
        frequency=tuple(float(e.get("frequency", DEFAULT_FREQUENCY)) for e in atomic))


def _unique(names: dict[str, str], name: str, key: str, problems: list[str]) -> None:
    if name in names:
        problems.append(f"config: key '{key}.name': class '{name}' is defined twice "
                        f"(also {names[name]})")
    names.setdefault(name, key)


def _member_problems(entry: Mapping[str, Any], key: str, atomic: set[str],
                     groups: set[str]) -> list[str]:
    problems = []
    for j, member in enumerate(entry["members"]):
        where = f"config: key '{key}.members[{j}]'"
        if member in groups:
            problems.append(f"{where}: '{member}' is a group; a group is a union of atomic "
                            "classes (list the group's members instead)")
        elif member not in atomic:
            problems.append(f"{where}: unknown atomic class '{member}'")
    problems.extend(_duplicates(entry["members"], f"{key}.members"))
    return problems


def _duplicates(values: Sequence[str], key: str) -> list[str]:
    seen: set[str] = set()
    out = []
    for v in values:
        if v in seen:
            out.append(f"config: key '{key}' lists '{v}' more than once")
        seen.add(v)
    return out
