"""What `snakemake all` prints when it succeeds: the comparison and where the HTML report is."""

from __future__ import annotations

from pathlib import Path

from cellmapseg.layout import RESULTS


def report_target(argv: list[str]) -> str | None:
    """The file given to Snakemake's --report in this command line, if any."""
    for i, arg in enumerate(argv):
        if arg.startswith("--report="):
            return arg.split("=", 1)[1]
        if arg == "--report" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            return argv[i + 1]
    return None


def print_comparison(markdown: str | Path, argv: list[str]) -> None:
    path = Path(markdown)
    if not path.is_file():  # a dry run or a run that did not reach the comparison
        return
    print("\n" + path.read_text())
    target = report_target(argv)
    if target:
        print(f"HTML report: {Path(target).resolve()} (written next, after the run)")
    else:
        print(f"HTML report: run `snakemake --report {RESULTS.report}` to write it")
