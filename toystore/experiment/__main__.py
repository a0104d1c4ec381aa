"""``python -m toystore.experiment --out DIR``: run the experiment and write
``DIR/report.md``, its PNG plots, ``DIR/results.json`` and the client's JSON per run in
``DIR/raw/``. ``--quick`` runs a few combinations briefly (the smoke test uses it)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from toystore.experiment.report import render_report, settings
from toystore.experiment.runner import CACHE_SIZE, PS, QUICK_PS, Plan, Results, Runner

MODES = ("raft", "primary-backup")


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [mode for mode in modes if mode not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: modes are a comma-separated choice of {', '.join(MODES)}")
    return modes


def _delays(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        delays = ()
    if not delays or any(not 0 <= delay <= 5 for delay in delays):
        raise argparse.ArgumentTypeError(f"{text!r}: db-delays are comma-separated seconds from 0 to 5, e.g. 0,0.2")
    return delays


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/experiment",
        description="Reproduce the spec's evaluation on local clusters: 5 clients, p from 0 to 0.8, cache on and "
                    "off, both replication modes, with and without a database delay, and a leader kill.")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md, the PNGs and the raw JSON")
    parser.add_argument("--iterations", type=_positive, default=None, help="iterations per client (20; --quick: 5)")
    parser.add_argument("--quick", action="store_true",
                        help="a brief run: p 0 and 0.8, raft only, no db-delay (unless given), 5 iterations")
    parser.add_argument("--modes", type=_modes, default=None, help="replication modes (raft,primary-backup)")
    parser.add_argument("--db-delays", type=_delays, default=None, help="db-delays in seconds (0,0.2; --quick: 0)")
    parser.add_argument("--seed", type=int, default=7, help="the load client's seed, the same for every run (7)")
    return parser


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(modes=args.modes or ("raft",), db_delays=args.db_delays or (0.0,), ps=QUICK_PS,
                    iterations=args.iterations or 5, seed=args.seed, kill_before=1.5, kill_after=3.0)
    return Plan(modes=args.modes or MODES, db_delays=args.db_delays or (0.0, 0.2), ps=PS,
                iterations=args.iterations or 20, seed=args.seed)


def write_outputs(out: Path, plan: Plan, results: Results, started: str, duration: float) -> Path:
    """results.json, the PNGs and report.md in ``out``; returns the report's path."""
    from toystore.experiment import plots  # matplotlib only when there is something to draw

    images: dict[str, str] = {}
    for mode, db_delay in settings(results.load_runs):
        name = f"latency-{mode}-delay{db_delay:g}.png"
        plots.plot_latency(results.load_runs, mode, db_delay, out / name)
        images[f"latency/{mode}/{db_delay:g}"] = name
    if results.load_runs:
        plots.plot_throughput(results.load_runs, out / "throughput.png")
        images["throughput"] = "throughput.png"
    for kill in results.kill_runs:
        name = f"kill-{kill['mode']}.png"
        plots.plot_kill(kill, out / name)
        images[f"kill/{kill['mode']}"] = name
    meta: dict[str, Any] = {"clients": plan.clients, "iterations": plan.iterations, "seed": plan.seed,
                            "ps": list(plan.ps), "modes": list(plan.modes), "db_delays": list(plan.db_delays),
                            "cache_size": CACHE_SIZE, "started": started, "duration_s": duration}
    (out / "results.json").write_text(json.dumps({"meta": meta, **results.as_dict()}, indent=1) + "\n")
    report = out / "report.md"
    report.write_text(render_report(meta, results.load_runs, results.kill_runs, images) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_from_args(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    began = time.monotonic()
    runner = Runner(plan, out / "raw", lambda line: print(line, file=sys.stderr, flush=True))
    results = runner.run()
    report = write_outputs(out, plan, results, started, time.monotonic() - began)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
