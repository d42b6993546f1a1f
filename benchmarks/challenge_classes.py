"""Write config/classes/challenge.yaml from the challenge repository's class files.

    python benchmarks/challenge_classes.py CLASSES_CSV TESTED_CSV TRAIN_MANIFEST_CSV \
        --instance nuc vim ves endo lyso ld perox mito np mt cell --commit 6b9ad68 \
        > config/classes/challenge.yaml

classes.csv rows are `name,id,members` (members: ids, empty for an atomic class); a group whose
members include another group is expanded to atomic ids (our groups are unions of atomic
classes). frequency = distinct training crops whose manifest rows name the class / all training
crops: what the synthetic data draws annotations from.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_classes(path: Path) -> tuple[dict[int, str], dict[int, list[int]]]:
    names: dict[int, str] = {}
    members: dict[int, list[int]] = {}
    for row in csv.reader(path.read_text().splitlines()):
        if not row:
            continue
        name, ident, parts = row[0].strip(), int(row[1]), (row[2] if len(row) > 2 else "")
        if ident in names:
            raise SystemExit(f"{path}: id {ident} twice")
        names[ident] = name
        members[ident] = [int(m) for m in parts.split(",") if m.strip()]
    return names, members


def atomic_members(ident: int, members: dict[int, list[int]]) -> list[int]:
    """A group's atomic ids, groups among its members expanded."""
    out: list[int] = []
    for m in members[ident]:
        out.extend(atomic_members(m, members) if members[m] else [m])
    return sorted(set(out))


def frequencies(manifest: Path) -> tuple[dict[str, float], int]:
    crops: set[str] = set()
    by_class: dict[str, set[str]] = {}
    with manifest.open() as fh:
        for row in csv.DictReader(fh):
            crops.add(row["crop_name"])
            by_class.setdefault(row["class_label"], set()).add(row["crop_name"])
    return {name: len(c) / len(crops) for name, c in by_class.items()}, len(crops)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classes", type=Path)
    p.add_argument("tested", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--instance", nargs="+", required=True)
    p.add_argument("--commit", required=True)
    a = p.parse_args()
    names, members = read_classes(a.classes)
    tested = [t.strip() for t in a.tested.read_text().splitlines() if t.strip()]
    freq, n_crops = frequencies(a.manifest)
    known = set(names.values())
    unknown = [n for n in [*tested, *a.instance] if n not in known]
    if unknown:
        raise SystemExit(f"not classes of {a.classes}: {unknown}")
    atomic = [i for i in sorted(names) if not members[i]]
    groups = [i for i in sorted(names) if members[i]]
    nested = [names[g] for g in groups if any(members[m] for m in members[g])]
    lines = [
        f"# The CellMap Segmentation Challenge's class ontology: {len(atomic)} atomic classes "
        f"(official ids as label values),",
        f"# {len(groups)} groups (unions of atomic classes), the {len(a.instance)} instance "
        f"classes and the {len(tested)} tested ones.",
        "# Source: janelia-cellmap/cellmap-segmentation-challenge at commit "
        f"{a.commit}: src/cellmap_segmentation_challenge/",
        "# utils/classes.csv, utils/tested_classes.csv, config.py INSTANCE_CLASSES; frequency = "
        "fraction of the",
        f"# {n_crops} training crops of utils/train_crop_manifest.csv annotating the class "
        "(0: never).",
    ]
    if nested:
        lines.append(f"# Groups listing other groups, expanded to atomic members: "
                     f"{', '.join(nested)}.")
    lines += [
        "# Use: snakemake --configfile config/config.yaml config/classes/challenge.yaml",
        "# Regenerate: python benchmarks/challenge_classes.py (see its docstring).",
        "classes:",
        "  atomic:",
        *(f"    - {{name: {names[i]}, label: {i}, frequency: {round(freq.get(names[i], 0.0), 4)}}}"
          for i in atomic),
        "  groups:",
        *(f"    - {{name: {names[g]}, members: "
          f"[{', '.join(names[m] for m in atomic_members(g, members))}]}}" for g in groups),
        f"  instance: [{', '.join(a.instance)}]",
        f"  tested: [{', '.join(tested)}]",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
