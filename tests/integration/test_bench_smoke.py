"""``python -m toystore.bench --quick`` end to end on real processes: it finishes, stops
what it started, and its JSON holds every figure. Nothing here judges speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import toystore

REPO = Path(toystore.__file__).resolve().parent.parent

EXPECTED_FIGURES = [
    "baseline_get_rps", "cached_get_rps", "cached_get_to_baseline", "uncached_get_rps",
    *(f"orders_c{c}_{what}" for c in (1, 16, 64) for what in ("per_s", "p50_ms", "p99_ms")),
    "failover_median_s", "failover_min_s", "failover_max_s",
    "catchup_s", "catchup_after_answering_s", "catchup_orders",
    "group_restart_before_per_s", "group_restart_after_per_s", "group_restart_after_over_before",
    "group_restart_back_s",
]


def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "toystore.bench", "--quick", "--out", str(tmp_path), "--json", "quick.json",
         "--data-dir", str(tmp_path / "data")],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "quick.json").read_text())
    figures = report["figures"]
    missing = [name for name in EXPECTED_FIGURES if name not in figures]
    assert not missing, missing
    assert all(figures[name] > 0 for name in EXPECTED_FIGURES), figures
    assert report["all_checks_passed"], report["checks"]
    assert report["machine"]["cores"] >= 1 and report["durations_s"]["total"] > 0
    assert "| cached GET /products/<name> |" in done.stdout
    # Where a lone order's time went, read from every process's histograms.
    stages = report["details"]["orders_c1_stages"]
    timeline = ["frontend: leader's answer arrived", "frontend: answer ready", "leader: stock reserved",
                "leader: appended to its log", "leader: durable on its disk",
                "leader: committed on a majority, applied", "leader: answer ready"]
    assert set(timeline) <= set(stages) and "follower fsync" in stages
    assert all(stage["count"] > 0 and stage["mean_ms"] > 0 and stage["p50_ms"] > 0 for stage in stages.values())
    leaders = [stages[name]["p50_ms"] for name in timeline[2:]]
    assert leaders == sorted(leaders)  # each stage of the leader's comes after the one before
    assert "Where a lone order's time goes" in done.stdout
    assert (tmp_path / "quick-latency.png").read_bytes().startswith(b"\x89PNG")
    assert report["details"]["etcd"] == "skipped: a quick run"
    if shutil.which("pgrep"):
        leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
        assert leftovers.stdout == "", "processes still running from this run"
