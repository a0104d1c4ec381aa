"""``scripts/experiment --quick`` end to end: real clusters, the load client, a leader kill,
and a report with its tables and PNGs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the experiment's plots need matplotlib (pip install '.[experiment]')")

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quick_experiment_writes_report_tables_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "report"
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "toystore.experiment", "--out", str(out), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - began < 90

    report = (out / "report.md").read_text()
    for png in ("latency-raft-delay0.png", "throughput.png", "kill-raft.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC), png
        assert f"({png})" in report
    latency_rows = [line for line in report.splitlines() if line.startswith(("| 0.0 |", "| 0.8 |"))]
    assert [line.split(" | ")[:2] for line in latency_rows] == [
        ["| 0.0", "on"], ["| 0.0", "off"], ["| 0.8", "on"], ["| 0.8", "off"]]
    assert "| raft | 0 | on |" in report and "| raft | 0 | off |" in report

    results = json.loads((out / "results.json").read_text())
    assert len(results["load_runs"]) == 4
    for run in results["load_runs"]:
        assert run["summary"]["integrity"]["failures"] == 0
        assert run["summary"]["operations"]["query"]["successes"] > 0
        assert (run["p"] == 0.0) == (run["summary"]["orders"]["placed"] == 0)
    [kill] = results["kill_runs"]
    assert kill["new_leader"] not in (None, kill["killed"])
    assert any(s["t"] > kill["kill_at"] and s["operation"] == "order" and s["status"] == 200
               for s in kill["samples"]), "no order was acknowledged after the leader kill"
    assert len(list((out / "raw").glob("*.json"))) == 5
