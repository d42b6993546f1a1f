"""Safety: checkpoints cannot run code when loaded, config strings never reach a shell, and the
HTML report escapes the names it displays.

Static checks parse the sources (src/ and workflow/) so that a new call site is covered the day it
is written; behavioural checks feed hostile values through the real code.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model

from cellmapseg import cli, stages
from cellmapseg.config import from_dict, load
from cellmapseg.data.inventory import write_inventory
from cellmapseg.errors import InputError
from cellmapseg.models import checkpoint
from cellmapseg.report.probe import caching_html, memory_html
from cellmapseg.runtime import torchrun
from cellmapseg.runtime.torchrun import torchrun_command

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cellmapseg"
WORKFLOW = ROOT / "workflow"
HOSTILE = "crop 'single' \"double\" $(touch /tmp/pwned) `touch /tmp/pwned2`; rm -rf x"
# The same without a slash, for folder names; commands run with cwd=tmp_path, so a shell that
# executed it would leave tmp_path/pwned or tmp_path/pwned2.
HOSTILE_NAME = "crop 'single' \"double\" $(touch pwned) `touch pwned2`; rm -rf x"
SCRIPT = "<script>alert('x')</script>"
TINY = tiny_model(eval_epochs=5, mixup_p=0.5)


def python_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py")) + sorted((WORKFLOW / "scripts").glob("*.py"))
    assert len(files) > 20
    return files


def calls(path: Path) -> Iterator[tuple[str, ast.Call]]:
    """Every call in a file with its dotted callee ("torch.load", "subprocess.run", ...)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def where(path: Path, call: ast.Call) -> str:
    return f"{path.relative_to(ROOT)}:{call.lineno}"


# ---------------------------------------------------------------- (a) checkpoints


def test_every_torch_load_in_the_sources_passes_weights_only_true() -> None:
    loads = []
    for path in python_files():
        text = path.read_text()
        assert not re.search(r"from\s+torch\s+import\s+[^\n]*\bload\b", text), path
        for name, call in calls(path):
            if name == "torch.load":
                loads.append(where(path, call))
                value = keyword(call, "weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, where(path, call)
    assert loads, "no torch.load found: the scan is looking in the wrong place"


UNPICKLERS = {"pickle.load", "pickle.loads", "dill.load", "joblib.load", "yaml.load",
              "yaml.unsafe_load", "yaml.full_load"}


def test_no_other_loader_that_unpickles() -> None:
    """pickle/dill/joblib loads, yaml.load/unsafe_load and numpy's allow_pickle=True are absent:
    torch.load(weights_only=True) is the only way a file becomes objects."""
    for path in python_files():
        for name, call in calls(path):
            assert name not in UNPICKLERS, where(path, call)
            if name in {"np.load", "numpy.load"}:
                value = keyword(call, "allow_pickle")
                assert value is None or (isinstance(value, ast.Constant) and not value.value), (
                    where(path, call))


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_a_pickled_object_is_refused_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"format": checkpoint.FORMAT, "model_name": "m",
                "model": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    with pytest.raises(InputError) as info:
        checkpoint.load(path, "m")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {path}: refused: it holds a pickled object "
                              "(posix.system)")
    assert "weights_only=True" in message and "weights_only` set to `False" not in message
    assert not marker.exists()


# ---------------------------------------------------------------- (b) no shell


def test_subprocesses_take_argument_lists_never_a_shell() -> None:
    spawns = []
    for path in python_files():
        for name, call in calls(path):
            assert name not in {"os.system", "os.popen", "subprocess.getoutput",
                                "subprocess.getstatusoutput"}, where(path, call)
            if not name.startswith("subprocess.") and not name.startswith("os.exec"):
                continue
            spawns.append(where(path, call))
            shell = keyword(call, "shell")
            assert shell is None or (isinstance(shell, ast.Constant) and not shell.value), (
                where(path, call))
            if call.args and name.startswith("subprocess."):
                first = call.args[0]  # a command string would be split by nobody: or by a shell
                assert not isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp), (
                    where(path, call))
    assert spawns, "no subprocess call found: the scan is looking in the wrong place"


def test_hostile_strings_stay_single_arguments_of_the_launch_command(tmp_path: Path) -> None:
    path = tmp_path / HOSTILE / "config.yaml"
    cmd = torchrun_command(2, "cellmapseg.train.rank", ["--model", "m", "--config", path,
                                                       "--crop", HOSTILE])
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd)
    assert cmd[cmd.index("--config") + 1] == str(path)
    assert cmd[cmd.index("--crop") + 1] == HOSTILE
    assert cmd.count(HOSTILE) == 1


@pytest.fixture
def train_inputs(tmp_path: Path, make_dataset: Callable[..., Path]) -> tuple[Path, Path, Path]:
    """A valid inventory, caching decision and config for the train stage."""
    raw = {"data": {"datalist": str(make_dataset(tmp_path / "data")),
                    "synthetic": {"enabled": False}},
           "train": {"num_workers": 0}, "models": {"tiny": TINY}}
    write_inventory(from_dict(raw), tmp_path / "inventory.csv")
    (tmp_path / "caching.json").write_text(json.dumps(
        {"strategy": "A", "store_dir": str(tmp_path), "disk_dir": str(tmp_path),
         "d_threshold_mb": 1}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "config.yaml", tmp_path / "inventory.csv", tmp_path / "caching.json"


def test_the_train_stage_hands_torchrun_hostile_paths_as_single_arguments(
    train_inputs: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real stage (checks, resolved config, launch), with subprocess.run recorded."""
    config, inventory, caching = train_inputs
    seen: list[tuple[list[str], dict]] = []

    def record(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        seen.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(torchrun.subprocess, "run", record)
    out = tmp_path / HOSTILE_NAME / "train"
    stages.train(load(config), "tiny", inventory, caching, out)
    ((cmd, kwargs),) = seen
    assert isinstance(cmd, list) and not kwargs.get("shell", False)
    assert cmd[cmd.index("--out") + 1] == str(out)
    assert cmd[cmd.index("--config") + 1] == str(out / "config.yaml")
    assert (out / "config.yaml").is_file()  # the folder name was used as-is, not split


def test_torchrun_delivers_a_hostile_argument_intact(tmp_path: Path) -> None:
    """The launch command really runs: torchrun starts a rank that records its argv."""
    (tmp_path / "echo_argv.py").write_text(
        "import json, sys\nfrom pathlib import Path\n"
        "Path(sys.argv[2]).write_text(json.dumps(sys.argv[1:]))\n")
    out = tmp_path / HOSTILE_NAME
    cmd = torchrun_command(1, "echo_argv", [HOSTILE_NAME, out])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text()) == [HOSTILE_NAME, str(out)]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def _rules(text: str) -> dict[str, str]:
    """rule name -> its body (the indented block after `rule NAME:` or `checkpoint NAME:`)."""
    blocks = re.split(r"^\s*(?:local)?(?:rule|checkpoint)\s+(\w+)\s*:\s*$", text, flags=re.M)
    return dict(zip(blocks[1::2], blocks[2::2], strict=True))


def test_workflow_rules_run_scripts_never_shell_commands() -> None:
    """Config strings (paths, crop names) reach the stages through Snakemake's script object,
    never through a command line that a shell would parse."""
    files = [WORKFLOW / "Snakefile", *sorted((WORKFLOW / "rules").glob("*.smk"))]
    rules: dict[str, str] = {}
    for path in files:
        text = path.read_text()
        assert not re.search(r"^\s*(shell|run)\s*:", text, flags=re.M), path
        assert not re.search(r"\bshell\s*\(", text), path
        rules.update(_rules(text))
    assert {"inventory", "train", "predict_crop", "predict", "evaluate_crop", "evaluate"} <= set(
        rules)
    for name, body in rules.items():
        actions = re.findall(r"^\s*(script|shell|run|notebook|wrapper|cwl)\s*:", body, flags=re.M)
        assert actions in ([], ["script"]), (name, actions)
        if name != "all":
            assert actions == ["script"], name


def test_model_names_cannot_carry_shell_or_path_characters() -> None:
    """Model keys become folder names and rule wildcards; the schema allows [a-z0-9_] only."""
    with pytest.raises(InputError, match="models"):
        from_dict({"models": {"a b$(x)": TINY}})


# ---------------------------------------------------------------- (c) HTML escaping


def probe_memory() -> dict:
    m = {"private_bytes_per_voxel_per_rank": 2.0, "shared_bytes_per_voxel": 0.1,
         "node_pss_bytes_per_voxel": 2.1}
    return {"host": {"hostname": SCRIPT, "ram_total_bytes": 2**40, "ram_available_bytes": 2**39,
                     "cgroup": {"limit_bytes": None}, "job_available_bytes": 2**39,
                     "store_dir": {"path": f"/dev/shm/{SCRIPT}", "free_bytes": 2**30,
                                   "tmpfs": True},
                     "cpus_usable": 8, "gpus": {"torch_device_count": 0}},
            "world_size": 1, "probe_ranks": 1, "probe_crops": [SCRIPT], "probe_voxels": 10**6,
            "data": {"crops": 1, "voxels": 10**6}, "measurements": {"A": m},
            "skipped": {"B": f"<img src=x onerror=alert(1)> {SCRIPT}"}}


def probe_selection() -> dict:
    est = {"per_rank_bytes": 2**30, "per_node_bytes": 2**30, "model": f"model {SCRIPT}",
           "feasible": True, "why": f"why <b>&</b> {SCRIPT}"}
    return {"strategy": "B", "requested": SCRIPT, "reason": f"reason {SCRIPT}",
            "world_size": 1, "available_bytes": 2**35, "ram_fraction": 0.7,
            "rank_allowance_bytes": 2**30, "budget_bytes": 2**34,
            "store_dir": f"/dev/shm/{SCRIPT}", "disk_dir": f"cache {SCRIPT}",
            "estimates": {"B": est}}


@pytest.mark.parametrize("page", [lambda: memory_html(probe_memory()),
                                  lambda: caching_html(probe_selection())],
                         ids=["memory", "caching"])
def test_probe_pages_escape_hostnames_paths_and_reasons(page: Callable[[], str]) -> None:
    html = page()
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    tags = set(re.findall(r"</?([a-zA-Z0-9]+)", html))
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h2", "h3", "p", "table",
                    "thead", "tbody", "tr", "th", "td"}, tags


def test_probe_pages_show_the_hostile_values_escaped_not_dropped() -> None:
    memory = memory_html(probe_memory())
    assert "<td>host</td><td>&lt;script&gt;" in memory
    assert "B: &lt;img src=x onerror=alert(1)&gt;" in memory
    caching = caching_html(probe_selection())
    assert "<p>reason &lt;script&gt;" in caching
    assert "why &lt;b&gt;&amp;&lt;/b&gt;" in caching


def test_probe_pages_via_the_stage_escape_what_the_json_files_hold(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """report-probe reads the probe's JSON files and writes the pages (the console entry)."""
    (tmp_path / "results/probe").mkdir(parents=True)
    (tmp_path / "results/probe/memory.json").write_text(json.dumps(probe_memory()))
    (tmp_path / "results/probe/caching_strategy.json").write_text(json.dumps(probe_selection()))
    (tmp_path / "c.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    cli.main(["-c", "c.yaml", "report-probe"])
    for name in ("memory", "caching"):
        page = (tmp_path / f"results/probe/report/{name}.html").read_text()
        assert "<script" not in page and "&lt;script&gt;" in page
