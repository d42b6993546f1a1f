"""The structure holds: the package's layers (import-linter), the workflow on top of them, and one
owner for each file contract (the results layout, the predictions store, the inventory's
columns, the network types). docs/architecture.md describes what these tests enforce."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import yaml

from cellmapseg import config, layout
from cellmapseg.models.registry import NETWORKS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cellmapseg"
WORKFLOW = ROOT / "workflow"
FROM_PACKAGE = re.compile(r"^\s*(?:from|import) (cellmapseg[\w.]*)", re.M)
AT_PARSE_TIME = re.compile(r"^(?:from|import) (cellmapseg[\w.]*)", re.M)  # not in a function


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def code_strings(path: Path) -> list[str]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_module_imports_from_a_layer_above_it():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_workflow_scripts_call_only_the_stages_and_the_runtime():
    for script in sorted((WORKFLOW / "scripts").glob("*.py")):
        used = set(FROM_PACKAGE.findall(script.read_text()))
        assert used, script
        allowed = {"cellmapseg", "cellmapseg.stages", "cellmapseg.runtime.process",
                   "cellmapseg.runtime.snakemake"}
        assert used <= allowed, (script.name, used - allowed)


def test_rules_import_only_light_modules_at_parse_time():
    light = {"cellmapseg", "cellmapseg.layout", "cellmapseg.config",
             "cellmapseg.runtime.process", "cellmapseg.report.console"}
    for rules in [WORKFLOW / "Snakefile", *sorted((WORKFLOW / "rules").glob("*.smk"))]:
        used = set(AT_PARSE_TIME.findall(rules.read_text()))
        assert used <= light, (rules.name, used - light)


def test_results_paths_are_spelled_only_by_the_layout_module():
    for path in sources():
        if path == SRC / "layout.py":
            continue
        spelled = [s for s in code_strings(path) if "results/" in s or s == "results"]
        assert not spelled, (path.relative_to(ROOT), spelled)
    for rules in [WORKFLOW / "Snakefile", *sorted((WORKFLOW / "rules").glob("*.smk"))]:
        code = "\n".join(line.split("#", 1)[0] for line in rules.read_text().splitlines())
        assert '"results' not in code, rules.name


def test_the_schema_default_datalist_lies_in_the_layout_synthetic_folder():
    default = config.from_dict({}).data.datalist
    assert Path(default) == layout.RESULTS.synthetic_dir / "datalist.json"


def test_each_zarr_store_contract_has_one_opening_module():
    # the predictions store, the challenge's data (read by one module, written only by the
    # synthetic generator) and the submission store
    owners = [p for p in sources() if re.search(r"zarr\.open", p.read_text())]
    assert owners == [SRC / "data" / "predictions.py", SRC / "data" / "zarr_crops.py",
                      SRC / "submit" / "store.py", SRC / "synthetic" / "zarr_layout.py"]


def test_crop_files_are_read_only_through_volume_io():
    # a reader that went to nibabel or data.nifti directly would not see the Zarr route's
    # .zcrop references; only the dispatcher, the Zarr reference reader (the header type),
    # the checks (the header type) and the writers (synthetic data, convert, the probe's copy
    # of a corner for the spec's own loader) may
    uses = {p for p in sources()
            if re.search(r"^\s*(?:from cellmapseg\.data(?:\.nifti)? import .*\bnifti\b|"
                         r"from cellmapseg\.data\.nifti import|import nibabel)", p.read_text(),
                         re.M)}
    allowed = {SRC / "data" / n for n in ("volume_io.py", "zcrop.py", "checks.py", "nifti.py",
                                          "convert.py")} | {
        SRC / "synthetic" / "generate.py", SRC / "probe" / "memory.py"}
    assert uses <= allowed, sorted(str(p.relative_to(ROOT)) for p in uses - allowed)
    assert SRC / "data" / "volume_io.py" in uses


def test_the_challenge_zarr_paths_are_spelled_only_by_challenge_layout():
    for path in sources():
        if path == SRC / "challenge_layout.py":
            continue
        spelled = [s for s in code_strings(path) if "recon-1" in s]
        assert not spelled, (path.relative_to(ROOT), spelled)


def test_only_the_inventory_module_lists_inventory_columns():
    for path in sources():
        if path == SRC / "data" / "inventory.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List)):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                assert not {"crop_id", "annotated_classes"} <= values, (
                    f"{path.relative_to(ROOT)}:{node.lineno} lists inventory columns")


def test_every_schema_network_type_has_a_registry_entry():
    schema = yaml.safe_load((SRC / "config_schema.yaml").read_text())
    types = schema["$defs"]["network"]["properties"]["type"]["enum"]
    assert sorted(types) == sorted(NETWORKS)
