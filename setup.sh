#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv. Safe to re-run.
#   ./setup.sh          runtime: torch (CPU wheel, pinned first), the package and its pins
#   ./setup.sh --tests  also pytest and ruff
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[[ "${1:-}" == "--tests" ]] && extras="[test]"

[[ -x .venv/bin/python ]] || python3 -m venv .venv
# torch first and pinned: an unpinned torch pulled in by another package is a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup.sh: .venv ready ($(.venv/bin/python -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)'))"
