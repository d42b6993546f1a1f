"""Logging and the bad-input exit of every process (console script, workflow script, rank)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from cellmapseg.errors import InputError

EXIT_BAD_INPUT = 2
log = logging.getLogger("cellmapseg")


def setup_logging(log_file: str | Path | None = None) -> None:
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    handlers: list[logging.Handler] = [console]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@contextlib.contextmanager
def bad_input_exits() -> Iterator[None]:
    """Turn an InputError into its message lines on stderr and a non-zero exit (no traceback:
    the message already names the file, crop or key). Other exceptions propagate unchanged."""
    try:
        yield
    except InputError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        if any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers):
            log.error("%s", exc, extra={"file_only": True})  # the rule's log file gets it too
        sys.exit(EXIT_BAD_INPUT)
