"""``python -m toystore.faults.chaos`` (``toystore-chaos``): a soak of fault scenarios.

Starts a proxied local cluster, runs the chosen scenarios in rounds (in a seeded random
order) until the time is used, then runs every checker over the whole history and the final
state, prints the figures and a verdict table, and exits 0 only if every checker passed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from toystore.cluster import ClusterConfig, LocalCluster
from toystore.faults.checkers import CheckResult, check_all, verdict_table
from toystore.faults.history import write_jsonl
from toystore.faults.nemesis import Nemesis
from toystore.faults.scenarios import FAULTS, SETTLE_TIMEOUT, scenario
from toystore.faults.workload import Workload, WorkloadOptions, figures, snapshot

ROUND_SECONDS = {"churn": 15.0, "majority-down": 9.0, "rapid-leader-kills": 8.0}
DEFAULT_ROUND_SECONDS = 7.0
MIN_ROUND_SECONDS = 4.0


def parse_scenarios(text: str) -> list[str]:
    """``all`` or a comma-separated list of scenario names.

    :raises argparse.ArgumentTypeError: naming the unknown scenarios and the known ones.
    """
    if text.strip() == "all":
        return list(FAULTS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAULTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenarios {unknown or [text]}; choose from {', '.join(FAULTS)} or all")
    return names


def plan_round(names: Sequence[str], rng: random.Random, remaining: float) -> tuple[str, float] | None:
    """The next round: a scenario and its length, or None when too little time is left."""
    if remaining < MIN_ROUND_SECONDS:
        return None
    name = rng.choice(list(names))
    return name, min(ROUND_SECONDS.get(name, DEFAULT_ROUND_SECONDS), remaining)


def figures_table(numbers: dict[str, int], rounds: Counter[str]) -> str:
    lines = ["| figure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in numbers.items()]
    lines.append(f"| rounds | {sum(rounds.values())} ({', '.join(f'{n} x{c}' for n, c in sorted(rounds.items()))}) |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toystore.faults.chaos",
                                     description="Run fault scenarios against a local cluster and check every invariant.")
    parser.add_argument("--scenarios", type=parse_scenarios, default=list(FAULTS),
                        help=f"comma-separated, from: {', '.join(FAULTS)}; or all (default)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load (default 60)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--data-dir", type=Path, help="where state and logs go (default: a temporary folder, "
                                                      "kept if a checker fails)")
    parser.add_argument("--history", type=Path, help="write the history here as JSON lines (and the final "
                                                     "state beside it, .state.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshot-every", type=int, default=None,
                        help="the replicas' --snapshot-every (default: theirs, 10000); a small one makes "
                             "followers back from a fault catch up by snapshot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients and --duration must be positive")
    if args.snapshot_every is not None and args.snapshot_every < 0:
        parser.error("--snapshot-every must be a whole number from 0")

    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="toystore-chaos-"))).resolve()
    cluster = LocalCluster(ClusterConfig(data_dir=data_dir, proxied=True, initial_stock=1_000_000,
                                         restock_interval=0, snapshot_every=args.snapshot_every))
    rng = random.Random(args.seed)
    nemesis = Nemesis(cluster, rng=random.Random(args.seed + 1))
    workload = Workload(cluster.frontend_url, WorkloadOptions(clients=args.clients, seed=args.seed))
    rounds: Counter[str] = Counter()
    harness_failures: list[str] = []  # rounds that found no leader or did not settle
    settle_times: list[float] = []
    passed = False
    try:
        print(f"Starting a proxied cluster in {data_dir} ...", file=sys.stderr, flush=True)
        cluster.start()
        started = time.monotonic()
        with tqdm(total=round(args.duration), unit="s", file=sys.stderr, disable=args.no_progress,
                  bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}") as bar:
            while (planned := plan_round(args.scenarios, rng, args.duration - (time.monotonic() - started))):
                name, seconds = planned
                bar.set_postfix_str(f"{name}, {len(workload.history())} ops")
                round_start = time.monotonic()
                try:
                    result = scenario(name, cluster, nemesis, workload, seconds, check=False)
                except TimeoutError as error:  # a leader never came: liveness, not the harness
                    harness_failures.append(f"round {sum(rounds.values()) + 1} ({name}): {error}")
                else:
                    settle = result.measures["settle_seconds"]
                    if settle is None:
                        harness_failures.append(f"round {sum(rounds.values()) + 1} ({name}): replicas did not "
                                                f"converge, or reservations stayed held, {SETTLE_TIMEOUT:.0f} s "
                                                f"after the clients stopped")
                    else:
                        settle_times.append(settle)
                rounds[name] += 1
                bar.update(min(time.monotonic() - round_start, bar.total - bar.n))
            bar.set_postfix_str(f"checking {len(workload.history())} ops")
        history = workload.history()
        state = snapshot(cluster)
        results: list[CheckResult] = check_all(history, state, restocks_possible=False)
        results.append(CheckResult("every round recovered", not harness_failures, harness_failures or [
            f"a leader each time; settled at most {max(settle_times, default=0.0):.1f} s after load stopped"]))
        if args.history:
            write_jsonl(args.history, history)
            args.history.with_suffix(".state.json").write_text(json.dumps(state.to_json(), indent=1))
        print(figures_table(figures(history), rounds))
        print()
        print(verdict_table(results))
        failing = [result for result in results if not result.ok]
        for result in failing:
            print(f"\n{result.name}:\n  " + "\n  ".join(result.details))
        passed = not failing
        kept = "" if passed and args.data_dir is None else f"; logs in {cluster.log_dir}"
        print(f"\n{'PASS' if passed else 'FAIL'}: {len(results) - len(failing)}/{len(results)} checkers passed; "
              f"faults logged {len(nemesis.events)}{kept}")
        return 0 if passed else 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except TimeoutError as error:  # the cluster never started
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        workload.stop()
        workload.join()
        cluster.stop()
        if args.data_dir is None and passed:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
