"""The load client's options and wiring: one reactor, one treq pool, N sessions, a progress bar.

``python -m client --help`` lists the options; bad values exit with status 2 and one line
saying what is wrong, before anything connects.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence, TextIO

from tqdm import tqdm
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from client.session import HttpRequester, Session, SessionConfig
from client.stats import RunStats, exit_code, format_report, summarize
from toystore.config import DEFAULT_FRONTEND_URL, parse_base_url
from toystore.http import make_http_client


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs, validated."""

    frontend: str
    clients: int
    iterations: int
    p: float
    seed: int
    quantity_max: int
    timeout: float
    json_file: str | None
    progress: bool

    def session_config(self) -> SessionConfig:
        return SessionConfig(self.frontend, self.iterations, self.p, self.quantity_max, self.timeout)

    def report_config(self) -> dict[str, Any]:
        """The options as the report shows them (without the output settings)."""
        shown = asdict(self)
        del shown["json_file"], shown["progress"]
        return shown


def _url(text: str) -> str:
    try:
        return parse_base_url(text)
    except usage.UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _number(kind: type, low: float, high: float | None = None) -> Any:
    bounds = f"from {low} to {high}" if high is not None else f"at least {low}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number {bounds}") from None
        if not (low <= value and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Load the toy store's frontend with concurrent sessions, then check every order they made.")
    parser.add_argument("--frontend", type=_url, default=DEFAULT_FRONTEND_URL, help="frontend base URL (%(default)s)")
    parser.add_argument("--clients", type=_number(int, 1), default=5, help="concurrent sessions (%(default)s)")
    parser.add_argument("--iterations", type=_number(int, 0), default=20, help="iterations per session (%(default)s)")
    parser.add_argument("-p", type=_number(float, 0, 1), default=0.5,
                        help="probability of ordering a toy that is in stock, 0..1 (%(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="seed for every session's choices (random, printed)")
    parser.add_argument("--quantity-max", type=_number(int, 1), default=3,
                        help="largest quantity per order; each order takes 1..this (%(default)s)")
    parser.add_argument("--json", dest="json_file", metavar="FILE", default=None, help="also write the figures here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=_number(float, 0.001, 3600), default=10.0,
                        help="seconds per HTTP request (%(default)s)")
    return parser


def parse_args(argv: Sequence[str]) -> RunOptions:
    """Validated options; exits with status 2 and a clear message on bad ones."""
    args = build_parser().parse_args(list(argv))
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    return RunOptions(args.frontend, args.clients, args.iterations, args.p, seed, args.quantity_max,
                      args.timeout, args.json_file, not args.no_progress)


def session_rng(seed: int, index: int) -> random.Random:
    """Session ``index``'s generator: the same seed gives every session the same choices."""
    return random.Random(f"toystore-client/{seed}/{index}")


async def run_sessions(options: RunOptions, http: HttpRequester, clock: IReactorTime,
                       progress: TextIO | None) -> dict[str, Any]:
    """Run every session concurrently; returns the :func:`~client.stats.summarize` dict.

    :param progress: where the progress bar goes; None for none.
    """
    stats = RunStats()
    bar = tqdm(total=options.clients * options.iterations, unit="it", desc="iterations",
               file=progress, disable=progress is None)
    sessions = [Session(index, options.session_config(), http, clock, session_rng(options.seed, index),
                        stats, on_iteration=lambda: bar.update(1))
                for index in range(options.clients)]
    started = clock.seconds()
    try:
        await gatherResults([ensureDeferred(session.run()) for session in sessions], consumeErrors=True)
    finally:
        bar.close()
    return summarize(stats, options.report_config(), clock.seconds() - started)


async def main(reactor: Any, options: RunOptions) -> None:
    """The whole run on ``reactor``: prints the report, writes ``--json``, exits 0 or 1."""
    print(f"seed {options.seed} (rerun with --seed {options.seed} for the same choices)", file=sys.stderr)
    http, pool = make_http_client(reactor, max_per_host=max(options.clients, 2))
    show_progress = options.progress and sys.stderr.isatty()
    try:
        summary = await run_sessions(options, http, reactor, sys.stderr if show_progress else None)
    finally:
        await pool.closeCachedConnections()
    print(format_report(summary))
    code = exit_code(summary)
    if options.json_file is not None:
        try:
            with open(options.json_file, "w", encoding="utf-8") as out:
                json.dump(summary, out, indent=2)
                out.write("\n")
        except OSError as error:
            print(f"error: cannot write --json {options.json_file}: {error.strerror}", file=sys.stderr)
            code = 1
    if code:
        raise SystemExit(code)
