"""The rules' conda environments (workflow/envs/*.yaml) pin exactly pyproject.toml's pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted((ROOT / "workflow" / "envs").glob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCAL = "-e ../.."  # the repository itself (see the comment in the env file)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(specs: list[str], where: str) -> dict[str, str]:
    out = {}
    for spec in specs:
        m = PIN.match(spec.strip())
        assert m, f"{where}: {spec!r} is not an exact pin (name==version)"
        out[_norm(m.group(1))] = f"{m.group(1)}=={m.group(2)}"
    return out


def _env(path: Path) -> tuple[list, list[str]]:
    env = yaml.safe_load(path.read_text())
    deps = env["dependencies"]
    pip = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, f"{path.name}: expected one pip: section, found {len(pip)}"
    return [d for d in deps if isinstance(d, str)], pip[0]


def test_there_is_an_env_and_every_rule_uses_one_that_exists():
    assert ENVS, "no workflow/envs/*.yaml"
    rules = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
    used = {(r, m) for r in rules for m in re.findall(r'conda:\s*\n\s*"([^"]+)"', r.read_text())}
    assert used, "no rule declares a conda: environment"
    for rule_file, rel in used:
        assert (rule_file.parent / rel).resolve().is_file(), f"{rule_file.name}: {rel} missing"


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_pins_equal_pyproject_pins(env_file):
    _, pip = _env(env_file)
    pinned = _pins([s for s in pip if s != LOCAL], env_file.name)
    wanted = _pins(PYPROJECT["project"]["dependencies"], "pyproject.toml [project.dependencies]")
    problems = [f"{wanted[k]} is in pyproject.toml but not in {env_file.name}"
                for k in sorted(wanted.keys() - pinned.keys())]
    problems += [f"{pinned[k]} is in {env_file.name} but not in pyproject.toml"
                 for k in sorted(pinned.keys() - wanted.keys())]
    problems += [f"{env_file.name} pins {pinned[k]} but pyproject.toml pins {wanted[k]}"
                 for k in sorted(wanted.keys() & pinned.keys()) if pinned[k] != wanted[k]]
    assert not problems, "conda env and pyproject.toml drifted apart:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_python_satisfies_requires_python_and_installs_the_package(env_file):
    conda, pip = _env(env_file)
    python = [d for d in conda if re.match(r"^python\s*[=<>]", d)]
    assert python, f"{env_file.name}: no python= pin"
    version = tuple(int(x) for x in re.findall(r"\d+", python[0])[:2])
    minimum = tuple(int(x) for x in re.findall(r"\d+", PYPROJECT["project"]["requires-python"]))
    assert version >= minimum[:2], f"{env_file.name}: {python[0]} but pyproject requires " \
                                   f"{PYPROJECT['project']['requires-python']}"
    assert "pip" in conda, f"{env_file.name}: the pip: section needs `- pip`"
    # conda runs pip from the folder of snakemake's copy, <repo>/.snakemake/conda/<hash>.yaml.
    assert pip[-1] == LOCAL, f"{env_file.name}: last pip entry must be {LOCAL!r} (the package)"
    repo = (ROOT / ".snakemake" / "conda" / LOCAL.split()[-1]).resolve()
    assert repo == ROOT and (repo / "pyproject.toml").is_file()
    assert PYPROJECT["project"]["name"] == "cellmapseg"


def test_setup_installs_the_debian_packages_the_tests_use():
    from slurm_cluster import PACKAGES

    line = re.search(r"^debs=\((.*)\)$", (ROOT / "setup.sh").read_text(), re.M)
    assert line, "setup.sh has no debs=(...) list"
    assert set(line.group(1).split()) == {"chromium", *PACKAGES}
