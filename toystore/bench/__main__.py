"""``python -m toystore.bench``: measure a local cluster, print a markdown table, write JSON.

``./scripts/bench`` installs wrk first when it can; see ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from toystore.bench import whole_numbers
from toystore.bench.loadgen import find_wrk
from toystore.bench.report import render
from toystore.bench.runner import Bench, Settings


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m toystore.bench",
        description="Benchmark a local toystore cluster (3 Raft replicas): cached and uncached reads "
                    "against a bare Klein baseline, committed orders/s, failover and catch-up times.")
    parser.add_argument("--seconds", type=float, default=None, help="length of each load point (default 10; 1 with --quick)")
    parser.add_argument("--kills", type=int, default=None, help="leader kills for the failover median (default 5; 1 with --quick)")
    parser.add_argument("--catchup-orders", type=int, default=None,
                        help="orders a killed follower misses (default 10000; 500 with --db-delay; 50 with --quick)")
    parser.add_argument("--db-delay", type=float, default=0.0,
                        help="simulated seconds per database read or write in every service (0.2: the spec's setting)")
    parser.add_argument("--get-concurrency", type=int, default=16, help="connections for the read figures")
    parser.add_argument("--order-clients", type=whole_numbers, default=(1, 16, 64, 256),
                        help="concurrent clients of each order figure, comma-separated (default 1,16,64,256: "
                             "the last shows what the cluster can take when latency is no object)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator for reads and orders (auto: wrk when installed)")
    parser.add_argument("--replication", choices=["raft", "primary-backup"], default="raft",
                        help="replication mode of the order replicas; primary-backup adds the restart-under-load point")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: a few seconds per figure")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the JSON (default: here)")
    parser.add_argument("--json", default="bench-results.json", help="JSON file name inside --out")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where clusters keep state and logs (default: a temporary folder, removed after a clean run)")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 10.0
    if args.kills is None:
        args.kills = 1 if args.quick else 5
    if args.catchup_orders is None:
        args.catchup_orders = 50 if args.quick else 500 if args.db_delay > 0 else 10_000
    if args.seconds <= 0 or args.kills < 1 or args.catchup_orders < 1 or args.get_concurrency < 1:
        parser.error("--seconds, --kills, --catchup-orders and --get-concurrency must be positive")
    return args


def write_plot(report: dict[str, Any], path: Path) -> str:
    """The latency plot beside the JSON; what to print of it."""
    try:
        from toystore.bench.plot import plot_latency
    except ImportError:
        return "Plot: not drawn, matplotlib is not installed (./scripts/bench installs it)."
    return f"Plot: {path}" if plot_latency(report, path) else "Plot: not drawn, no latency was measured."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if find_wrk() else "python"
    elif generator == "wrk" and not find_wrk():
        print("error: --generator wrk but wrk is not installed", file=sys.stderr)
        return 2
    if generator == "python":
        print("note: reads and orders are driven by the Python load generator (wrk not used); "
              "its own CPU use competes with the services on this machine.", flush=True)
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="toystore-bench-"))).resolve()
    settings = Settings(data_dir=data_dir, seconds=args.seconds, kills=args.kills,
                        catchup_orders=args.catchup_orders, db_delay=args.db_delay,
                        get_concurrency=args.get_concurrency, order_concurrency=args.order_clients,
                        generator=generator, quick=args.quick, replication=args.replication)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    bench = Bench(settings, say=lambda line: print(line, flush=True))
    try:
        report = bench.run()
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"error: {error}\n(state and logs kept in {data_dir})", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / args.json
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render(report))
    print(f"\nJSON: {json_path}")
    print(write_plot(report, args.out / f"{json_path.stem}-latency.png"))
    if args.data_dir is None and report["all_checks_passed"]:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if report["all_checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
