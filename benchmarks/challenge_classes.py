"""Generate config/classes/challenge.yaml: the CellMap Segmentation Challenge's whole class
ontology as a `classes` config fragment (merged over config/config.yaml by --configfile).

Inputs are files of the challenge's repository (janelia-cellmap/cellmap-segmentation-challenge),
each taken from one commit with `git show COMMIT:PATH > FILE`:

    src/cellmap_segmentation_challenge/utils/classes.csv       name,id,members (no header)
    src/cellmap_segmentation_challenge/utils/tested_classes.csv      one name a line
    src/cellmap_segmentation_challenge/utils/train_crop_manifest.csv crop_name,...,class_label,...
    src/cellmap_segmentation_challenge/config.py                     INSTANCE_CLASSES (optional)

    python benchmarks/challenge_classes.py classes.csv tested_classes.csv \\
        train_crop_manifest.csv --config-py config.py [--commit HASH] \\
        > config/classes/challenge.yaml

Atomic classes (empty members) become channels with their official id as label value and the
fraction of training crops annotating them as frequency; groups list their members by name,
a member that is itself a group expanded to its atomic members. The instance classes are
config.py's INSTANCE_CLASSES less names that are not classes. Problems (duplicate ids or names,
unknown member ids, tested names that are not classes) fail with one line each on stderr.
"""

from __future__ import annotations

import argparse
import ast
import csv
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = "janelia-cellmap/cellmap-segmentation-challenge"
SRC = "src/cellmap_segmentation_challenge"
# The snapshot the shipped file was generated from, and the commits that last changed each
# input before it (`git log -1 SNAPSHOT -- PATH`).
SNAPSHOT = "6b9ad6893ef1059227917af2a59cc2e61d84fa7e"
LAST_CHANGED = {
    "utils/classes.csv": "7f9269451031645f73c9eb03967832afcba935a1",
    "utils/tested_classes.csv": "abd47e6cd86b5201585ef23c47e3026ef2d7eef2",
    "utils/train_crop_manifest.csv": "6c9eb77f7551f72f1a35a34e003bdaf86b4c9e85",
    "config.py": "f7f34a06b55a298465b335b64a69dfd67d340f72",
}
# config.py's INSTANCE_CLASSES at SNAPSHOT, used when --config-py is not given.
INSTANCE_CLASSES = ("nuc", "vim", "ves", "endo", "lyso", "ld", "perox", "mito", "np", "mt",
                    "cell", "instance")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # the schema's class-name pattern: plain YAML scalars
YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


@dataclass(frozen=True)
class Class:
    name: str
    id: int
    members: tuple[int, ...]  # empty for an atomic class


class SourceError(Exception):
    """The inputs are inconsistent; one problem a line."""


def read_classes(path: Path) -> list[Class]:
    """classes.csv's rows, in id order."""
    out = []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            name, ident, members = (row + [""])[:3]
            ids = tuple(int(m) for m in members.split(",") if m.strip())
            out.append(Class(name.strip(), int(ident), ids))
    return sorted(out, key=lambda c: c.id)


def read_tested(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_instance(path: Path | None) -> list[str]:
    """The INSTANCE_CLASSES list literal of the challenge's config.py."""
    if path is None:
        return list(INSTANCE_CLASSES)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "INSTANCE_CLASSES" for t in node.targets):
            return [str(v) for v in ast.literal_eval(node.value)]
    raise SourceError(f"{path}: no INSTANCE_CLASSES assignment")


def crops_by_class(path: Path) -> tuple[int, dict[str, set[str]]]:
    """The number of distinct training crops, and the crops with a row of each class_label."""
    crops: set[str] = set()
    by_class: dict[str, set[str]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            crops.add(row["crop_name"])
            by_class.setdefault(row["class_label"], set()).add(row["crop_name"])
    return len(crops), by_class


def check(classes: Sequence[Class], tested: Sequence[str]) -> None:
    problems = []
    seen_ids: dict[int, str] = {}
    seen_names: set[str] = set()
    for c in classes:
        if c.id in seen_ids:
            problems.append(f"classes.csv: id {c.id} of '{c.name}' is also the id of "
                            f"'{seen_ids[c.id]}'")
        if c.name in seen_names:
            problems.append(f"classes.csv: class '{c.name}' is defined twice")
        if not NAME.match(c.name) or c.name in YAML_WORDS:
            problems.append(f"classes.csv: class name '{c.name}' is not a plain lower-case name")
        seen_ids.setdefault(c.id, c.name)
        seen_names.add(c.name)
    for c in classes:
        problems += [f"classes.csv: group '{c.name}' has unknown member id {m}"
                     for m in c.members if m not in seen_ids]
    problems += [f"tested_classes.csv: '{t}' is not a class of classes.csv"
                 for t in tested if t not in seen_names]
    problems += [f"tested_classes.csv: '{t}' is listed more than once"
                 for i, t in enumerate(tested) if t in tested[:i]]
    if problems:
        raise SourceError("\n".join(problems))


def atomic_members(group: Class, by_id: dict[int, Class], path: tuple[int, ...] = ()) -> set[int]:
    """Atomic ids of a group, groups among its members expanded (recursively)."""
    if group.id in path:
        raise SourceError(f"classes.csv: group '{group.name}' contains itself")
    out: set[int] = set()
    for m in group.members:
        member = by_id[m]
        out |= atomic_members(member, by_id, (*path, group.id)) if member.members else {m}
    return out


def render(classes: Sequence[Class], tested: Sequence[str], instance: Sequence[str],
           n_crops: int, crops: dict[str, set[str]], commit: str, argv: Sequence[str]) -> str:
    by_id = {c.id: c for c in classes}
    names = {c.name for c in classes}
    atomic = [c for c in classes if not c.members]
    groups = [c for c in classes if c.members]
    expanded = [g.name for g in groups if any(by_id[m].members for m in g.members)]
    dropped = [n for n in instance if n not in names]
    kept = [n for n in instance if n in names]
    unknown_labels = sorted(set(crops) - names)
    lines = [
        f"# The CellMap Segmentation Challenge's class ontology ({len(classes)} classes: "
        f"{len(atomic)} atomic, {len(groups)} groups), with the",
        "# challenge's official ids as label values. Use:",
        "#   snakemake --configfile config/config.yaml config/classes/challenge.yaml",
        f"# Source: github.com/{REPO}, every file at commit",
        f"#   {commit}" + (" (in parentheses: the commit that last changed it):"
                         if commit == SNAPSHOT else ":"),
        *(f"#   {SRC}/{p}" + (f" ({h[:7]})" if commit == SNAPSHOT else "")
          for p, h in LAST_CHANGED.items()),
        "# atomic: the classes with no members, in id order; label = the official id. frequency =",
        "#   (distinct crop_name of train_crop_manifest.csv with a row whose class_label is the",
        f"#   class) / (distinct crop_name: {n_crops}), to 4 decimals; 0.0: never annotated there.",
        "# groups: the classes with members, in id order, members by name in id order.",
    ]
    if expanded:
        lines.append("#   Groups with a group among their members, expanded to atomic ones: "
                     + ", ".join(expanded) + ".")
    else:
        lines.append("#   No group has a group among its members (none needed expanding).")
    lines.append("# instance: config.py's INSTANCE_CLASSES" + (
        ", less " + ", ".join(f"'{n}'" for n in dropped) + " (not a class of classes.csv)"
        if dropped else "") + ".")
    lines.append("# tested: tested_classes.csv, in file order.")
    if unknown_labels:
        lines.append("# Manifest class_labels that are not classes (ignored): "
                     + ", ".join(unknown_labels) + ".")
    lines += ["# Regenerate: git show COMMIT:PATH > FILE for each file above, then",
              "#   python benchmarks/challenge_classes.py " + shlex.join(argv[:3])]
    if len(argv) > 3:
        lines.append(f"#       {shlex.join(argv[3:])}")
    lines += ["#       > config/classes/challenge.yaml", "classes:", "  atomic:"]
    for c in atomic:
        freq = round(len(crops.get(c.name, ())) / n_crops, 4) if n_crops else 0.0
        lines.append(f"    - {{name: {c.name}, label: {c.id}, frequency: {freq}}}")
    lines.append("  groups:")
    for g in groups:
        members = ", ".join(by_id[m].name for m in sorted(atomic_members(g, by_id)))
        lines.append(f"    - {{name: {g.name}, members: [{members}]}}")
    lines.append(f"  instance: [{', '.join(kept)}]")
    lines.append(f"  tested: [{', '.join(tested)}]")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("classes", type=Path, help="utils/classes.csv")
    parser.add_argument("tested", type=Path, help="utils/tested_classes.csv")
    parser.add_argument("manifest", type=Path, help="utils/train_crop_manifest.csv")
    parser.add_argument("--config-py", type=Path, default=None,
                        help="the challenge's config.py (INSTANCE_CLASSES); default: a copy "
                             f"of it at {SNAPSHOT[:7]}")
    parser.add_argument("--commit", default=SNAPSHOT,
                        help="the commit the files were taken from (recorded in the output)")
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(args_list)
    try:
        classes = read_classes(args.classes)
        tested = read_tested(args.tested)
        check(classes, tested)
        instance = read_instance(args.config_py)
        n_crops, crops = crops_by_class(args.manifest)
        text = render(classes, tested, instance, n_crops, crops, args.commit, args_list)
    except SourceError as exc:
        print(exc, file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
