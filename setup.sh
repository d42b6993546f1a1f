#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv. Safe to re-run.
#   ./setup.sh          runtime: torch (CPU wheel, pinned first), the package and its pins
#   ./setup.sh --tests  also pytest, ruff and (as root) the Debian packages the tests use
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[[ "${1:-}" == "--tests" ]] && extras="[test]"

[[ -x .venv/bin/python ]] || python3 -m venv .venv
# torch first and pinned: an unpinned torch pulled in by another package is a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup.sh: .venv ready ($(.venv/bin/python -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)'))"

# The tests' Debian packages: Chromium renders the HTML report; Slurm, munge and MariaDB make the
# test cluster of tests/slurm_cluster.py (its PACKAGES). Installing needs root; elsewhere those
# tests skip and say why.
debs=(chromium slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
if [[ -n "$extras" ]]; then
  missing=()
  for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || missing+=("$deb")
  done
  if (( ${#missing[@]} )) && [[ $(id -u) == 0 ]] && command -v apt-get > /dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # Not fatal: the tests try again and say why they skip (CELLMAPSEG_REQUIRE_SLURM=1: fail).
    if apt-get -qq -o DPkg::Lock::Timeout=300 update && apt-get -qq -o DPkg::Lock::Timeout=300 \
        install -y --no-install-recommends "${missing[@]}" > /dev/null; then
      echo "setup.sh: installed ${missing[*]}"
    else
      echo "setup.sh: WARNING: apt-get could not install ${missing[*]}" >&2
    fi
  elif (( ${#missing[@]} )); then
    echo "setup.sh: not root or no apt-get: ${missing[*]} missing, so the tests that need them skip"
  fi
fi
