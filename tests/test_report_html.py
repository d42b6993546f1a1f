"""The end of the DAG on the embedded default: comparison printed, HTML report written and
rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg
from slurm_cluster import DAG_CONFIGS  # the configs of the session's whole-DAG run

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CELLMAPSEG_ARTIFACTS", ROOT / "test-artifacts"))
MODELS = ("segresnet", "swinunetr", "flexunet_resnet34")
# the embedded default's rows: its models, then its variants and ensembles
ENTRIES = (*MODELS, "segresnet_tta", "segresnet_tuned", "ensemble_mean", "ensemble_per_class")

# Runs inside the page once React has rendered: what a reader would see, as JSON in the title.
PROBE_SCRIPT = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const pngs = [...document.images].filter(i => i.src.startsWith('data:image/png'));
  const table = document.querySelector('table.comparison');
  document.title = 'RENDERED ' + JSON.stringify({
    table_rows: table ? [...table.querySelectorAll('tbody tr')].map(r => r.cells[0].innerText) : [],
    best_cells: document.querySelectorAll('td.best').length,
    figures: pngs.map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
  });
}, 1500));
</script>"""


def chromium() -> str:
    """The browser binary: installed from Debian if missing and allowed (root)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock = ["-o", "DPkg::Lock::Timeout=600"]
        subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends",
                        "chromium"], check=True, env=env)
        return shutil.which("chromium") or pytest.fail("chromium installed but not on PATH")
    if os.environ.get("CELLMAPSEG_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is required (CELLMAPSEG_REQUIRE_BROWSER=1) but cannot be installed")
    pytest.skip("chromium not installed and not root: cannot install Debian's chromium")


def browser(*args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(embedded_dag) -> Path:
    assert embedded_dag.returncode == 0, embedded_dag.stderr[-4000:]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"),
         "--directory", str(embedded_dag.workdir), "--configfile",
         *map(str, DAG_CONFIGS), "--report", "results/report.html"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return embedded_dag.workdir / "results" / "report.html"


@pytest.mark.slow
def test_all_prints_the_comparison_table(embedded_dag):
    out = embedded_dag.stdout + embedded_dag.stderr
    assert "# Model comparison" in out and "HTML report:" in out
    table = pd.read_csv(embedded_dag.workdir / "results" / "comparison.csv")
    assert list(table["model"]) == list(ENTRIES) and set(table["status"]) == {"ok"}
    # the leaderboard's view beside the scores over the classes scored, from each summary
    for model, row in table.set_index("model").iterrows():
        summary = json.loads(
            (embedded_dag.workdir / "results" / model / "eval_summary.json").read_text())
        board = summary["leaderboard"]
        assert row["leaderboard_overall"] == pytest.approx(board["overall"])
        assert (row["tested_covered"], row["n_tested"]) == (board["covered"], board["n_tested"])
    assert "Leaderboard" in out and "tested classes" in out  # the coverage sentence, printed


@pytest.mark.slow
def test_ensembles_tta_and_tuned_thresholds_are_rows_with_intervals(embedded_dag):
    results = embedded_dag.workdir / "results"
    table = pd.read_csv(results / "comparison.csv").set_index("model")
    assert table.loc["ensemble_per_class", "kind"] == "ensemble"
    # the member chosen for each atomic class is shown, one of the three models
    choices = dict(item.split(": ") for item in table.loc["ensemble_per_class", "choices"]
                   .split("; "))
    assert {c.split("@")[0].replace(" (untuned)", "") for c in choices.values()} <= set(MODELS)
    # TTA costs prediction time: 8 passes against 1
    assert table.loc["segresnet_tta", "predict_s"] > 2 * table.loc["segresnet", "predict_s"]
    for col in ("overall", "semantic_mean_iou", "iou_ecs", "nuc_combined"):
        scored = table[col].notna()
        assert (table.loc[scored, f"{col}_lo"] <= table.loc[scored, col] + 1e-12).all(), col
        assert (table.loc[scored, col] <= table.loc[scored, f"{col}_hi"] + 1e-12).all(), col
    leads = pd.read_csv(results / "comparison_leads.csv")
    assert len(leads) and set(leads["winner"]) | set(leads["runner_up"]) <= set(ENTRIES)
    assert (leads["diff_lo"] <= leads["diff_hi"]).all()
    assert set(leads["column"]) <= {c[:-3] for c in table.columns if c.endswith("_lo")}
    # cross-fitted: each crop of a tuned row was predicted with another fold's choices
    choice = json.loads((results / "segresnet_tuned" / "thresholds.json").read_text())
    for fold in choice["per_fold"]:
        assert not set(fold["tuned_on"]) & set(fold["scored"])
    assert "≈" in (results / "comparison.md").read_text()  # 4 crops: some lead cannot hold


@pytest.mark.slow
def test_every_model_has_its_report_figures(embedded_dag):
    for model in ENTRIES:
        names = ["scores.png", "examples.png"]
        names += ["training_curves.png"] if model in MODELS else []
        for name in names:
            path = embedded_dag.workdir / "results" / model / "report" / name
            assert path.read_bytes()[:4] == b"\x89PNG", path


@pytest.mark.slow
def test_report_is_one_self_contained_page(report):
    text = report.read_text()
    assert "Model comparison" in text
    for category in ("1. Comparison", "2. Models", "3. Memory and caching"):
        assert category in text
    for item in ("comparison.png", "training_curves.png", "memory.html", "caching.html"):
        assert item in text
    # nothing fetched from elsewhere: the page works offline
    assert not re.search(r"""(src|href)=["']https?://""", text)


@pytest.mark.slow
def test_browser_renders_the_comparison_table_and_figure(report, tmp_path):
    probe = tmp_path / "probe.html"
    head, tail = report.read_text().rsplit("</body>", 1)  # the page's own end, not a JS string's
    probe.write_text(f"{head}{PROBE_SCRIPT}</body>{tail}")
    dom = browser("--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r"<title>RENDERED (.*?)</title>", dom.stdout, re.S)
    assert found, "the page did not render (no RENDERED title): " + dom.stdout[:500]
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["table_rows"] == list(ENTRIES)
    assert seen["best_cells"] >= 1
    assert seen["figures"] and all(ok and w > 100 and h > 50 for ok, w, h in seen["figures"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    proc = browser(f"--screenshot={shot}", "--window-size=1600,1100", report.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (1100, 1600)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1])[::97], axis=0)) > 50, "blank page"
