"""Print the "Bad inputs" table of docs/reliability.md from real runs (not a pytest module).

Runs every case of tests/test_bad_inputs.py as a `python -m cellmapseg.cli` process, the
truncated-store run and the Snakemake cases, each in a fresh temporary folder, and prints one
Markdown row per case with the `error:` line(s) it produced (temporary paths shortened to the file
name) and the exit status.

    /tmp/venv/bin/python tests/make_reliability_table.py > /tmp/rows.md
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_bad_inputs as matrix  # after the path it is found on


def shorten(text: str, roots: list[Path]) -> str:
    """Paths under the temporary folders -> their file names."""
    for root in roots:
        # names with spaces first (whole, as they exist), then anything else up to a space
        known = [Path(d) / n for d, dirs, files in os.walk(root) for n in [*dirs, *files]]
        for path in sorted(known, key=lambda p: len(str(p)), reverse=True):
            if " " in str(path.relative_to(root)):
                text = text.replace(str(path), path.name)
        text = re.sub(re.escape(str(root)) + r"/(\S+)", lambda m: Path(m.group(1)).name, text)
        text = text.replace(str(root), ".")
    return text


def cell(lines: list[str]) -> str:
    """Each line as a code span (double backticks: some messages hold single ones)."""
    return "<br>".join(f"`` {ln.replace('|', chr(92) + '|')} ``" for ln in lines) or "(none)"


def main() -> None:
    print("| case | stage | message | exit code |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="cellmapseg-reliability-") as tmp:
        base = matrix.prepare_base(Path(tmp) / "base")
        for case in matrix.CASES:
            root = Path(tmp) / case.id
            w, code, stderr = matrix.run_case(case, root, base, process=True)
            matrix.check(case, w, code, stderr)  # the table shows only what the tests assert
            lines = shorten("\n".join(matrix.error_lines(stderr)), [root, base.root])
            print(f"| {case.id} | {case.stage} | {cell(lines.splitlines())} | {code} |",
                  flush=True)

        root = Path(tmp) / "caching-store-truncated"
        _, code, stderr, state = matrix.run_store_truncated(root, base)
        assert code == 0 and all(state.values()), stderr[-2000:]
        print(f"| caching-store-truncated | train | (none: the store is found incomplete, rebuilt, "
              f"and training completes) | {code} |", flush=True)

        for case_id, (make_override, _) in matrix.SNAKEMAKE_CASES.items():
            root = Path(tmp) / case_id
            root.mkdir()
            proc = matrix.run_snakemake(root, make_override(root))
            lines = shorten("\n".join(matrix.error_lines(proc.stdout + proc.stderr)), [root])
            print(f"| {case_id} | snakemake (target results/data/inventory.csv) | "
                  f"{cell(lines.splitlines())} | {proc.returncode} |", flush=True)


if __name__ == "__main__":
    main()
