"""The experiment's figures as tables, plot series and markdown: pure, no I/O.

A *load run* is one ``python -m client`` run against one cluster setting, kept as
``{"mode", "db_delay", "cache", "p", "summary"}`` where ``summary`` is the client's
``--json`` dict (:func:`client.stats.summarize`). A *kill run* is the timed loop around a
leader kill: ``{"mode", "kill_at", "killed", "new_leader", "samples"}`` with samples
``{"t", "operation", "latency_s", "status"}`` (``t`` seconds from the loop's start,
``status`` None when no answer came).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

#: The operations whose latency the experiment tables and plots show (the client's
#: ``verify`` reads are the integrity check, not part of the workload).
SHOWN_OPERATIONS = ("query", "order")
STATS = ("p50", "p90", "p99")

LoadRun = Mapping[str, Any]
KillRun = Mapping[str, Any]


def setting_label(mode: str, db_delay: float) -> str:
    """How a report names a replication mode with a database delay."""
    return f"{mode}, db-delay {db_delay:g} s"


def cache_label(cache: bool) -> str:
    return "on" if cache else "off"


def select(runs: Iterable[LoadRun], mode: str, db_delay: float, cache: bool | None = None) -> list[LoadRun]:
    """The runs of one setting, by p (then cache on before off)."""
    chosen = [run for run in runs if run["mode"] == mode and run["db_delay"] == db_delay
              and (cache is None or run["cache"] == cache)]
    return sorted(chosen, key=lambda run: (run["p"], not run["cache"]))


def latency_ms(run: LoadRun, operation: str, stat: str) -> float | None:
    """One percentile of one operation in one run; None when it had no samples."""
    value = run["summary"]["operations"][operation]["latency_ms"][stat]
    return None if value is None else float(value)


def _fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def latency_table(runs: Iterable[LoadRun], mode: str, db_delay: float) -> tuple[list[str], list[list[str]]]:
    """One row per (p, cache) of a setting: query and order p50/p90/p99 in ms, throughput,
    orders placed, and integrity failures."""
    header = ["p", "cache"] + [f"{op} {stat} ms" for op in SHOWN_OPERATIONS for stat in STATS] + [
        "throughput ops/s", "orders placed", "integrity failures"]
    rows = []
    for run in select(runs, mode, db_delay):
        summary = run["summary"]
        rows.append([f"{run['p']:.1f}", cache_label(run["cache"])]
                    + [_fmt(latency_ms(run, op, stat)) for op in SHOWN_OPERATIONS for stat in STATS]
                    + [_fmt(summary["throughput_ops_per_s"]), _fmt(summary["orders"]["placed"]),
                       _fmt(summary["integrity"]["failures"])])
    return header, rows


def settings(runs: Iterable[LoadRun]) -> list[tuple[str, float]]:
    """Every (mode, db_delay) present, in a stable order (raft first, then by delay)."""
    found = {(run["mode"], run["db_delay"]) for run in runs}
    return sorted(found, key=lambda item: (item[0] != "raft", item[0], item[1]))


def throughput_table(runs: Sequence[LoadRun]) -> tuple[list[str], list[list[str]]]:
    """Throughput (ops/s) with one row per (mode, db_delay, cache) and one column per p."""
    ps = sorted({run["p"] for run in runs})
    header = ["mode", "db-delay s", "cache"] + [f"p={p:.1f}" for p in ps]
    rows = []
    for mode, db_delay in settings(runs):
        for cache in (True, False):
            by_p = {run["p"]: run["summary"]["throughput_ops_per_s"] for run in select(runs, mode, db_delay, cache)}
            if by_p:
                rows.append([mode, f"{db_delay:g}", cache_label(cache)] + [_fmt(by_p.get(p)) for p in ps])
    return header, rows


def latency_series(runs: Iterable[LoadRun], mode: str, db_delay: float, cache: bool,
                   operation: str, stat: str) -> tuple[list[float], list[float]]:
    """(p values, latency ms) for a plot line; runs without samples are left out."""
    points = [(run["p"], latency_ms(run, operation, stat)) for run in select(runs, mode, db_delay, cache)]
    kept = [(p, ms) for p, ms in points if ms is not None]
    return [p for p, _ in kept], [ms for _, ms in kept]


def throughput_series(runs: Iterable[LoadRun], mode: str, db_delay: float,
                      cache: bool) -> tuple[list[float], list[float]]:
    """(p values, ops/s) for a plot line."""
    points = [(run["p"], run["summary"]["throughput_ops_per_s"]) for run in select(runs, mode, db_delay, cache)]
    kept = [(p, float(ops)) for p, ops in points if ops is not None]
    return [p for p, _ in kept], [ops for _, ops in kept]


def kill_timeline(kill: KillRun) -> dict[str, dict[str, list[float]]]:
    """Per operation, the points of the latency timeline: ``t`` seconds relative to the kill
    (when the request started), ``ms`` its latency, split into answered with success
    (``ok_*``) and failed (``failed_*``: an error status or no answer)."""
    lines: dict[str, dict[str, list[float]]] = {}
    for sample in kill["samples"]:
        line = lines.setdefault(sample["operation"], {"ok_t": [], "ok_ms": [], "failed_t": [], "failed_ms": []})
        prefix = "ok" if sample["status"] == 200 else "failed"
        line[f"{prefix}_t"].append(round(sample["t"] - kill["kill_at"], 4))
        line[f"{prefix}_ms"].append(round(sample["latency_s"] * 1000, 3))
    return lines


def kill_summary(kill: KillRun) -> dict[str, Any]:
    """What a reader wants to know about the kill: requests and failures before and after it,
    the slowest order after it, and ``recovery_s``: from the kill until the first order that
    started after it was acknowledged (None if none was)."""
    kill_at = kill["kill_at"]
    before = [s for s in kill["samples"] if s["t"] < kill_at]
    after = [s for s in kill["samples"] if s["t"] >= kill_at]
    orders_after = [s for s in after if s["operation"] == "order"]
    acknowledged = [s["t"] + s["latency_s"] for s in orders_after if s["status"] == 200]
    return {
        "requests_before": len(before),
        "failed_before": sum(1 for s in before if s["status"] != 200),
        "requests_after": len(after),
        "failed_after": sum(1 for s in after if s["status"] != 200),
        "max_order_ms_after": round(max(s["latency_s"] for s in orders_after) * 1000, 1) if orders_after else None,
        "recovery_s": round(min(acknowledged) - kill_at, 3) if acknowledged else None,
    }


def kill_table(kills: Sequence[KillRun]) -> tuple[list[str], list[list[str]]]:
    header = ["mode", "killed", "new leader", "requests before", "failed before", "requests after",
              "failed after", "slowest order after ms", "first order after kill acked in s"]
    rows = []
    for kill in kills:
        s = kill_summary(kill)
        rows.append([kill["mode"], _fmt(kill["killed"]), _fmt(kill["new_leader"]), _fmt(s["requests_before"]),
                     _fmt(s["failed_before"]), _fmt(s["requests_after"]), _fmt(s["failed_after"]),
                     _fmt(s["max_order_ms_after"]), _fmt(s["recovery_s"], 3)])
    return header, rows


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table; numeric-looking columns are right-aligned."""
    rows = [list(row) for row in rows]
    numeric = [all(_numeric(row[i]) for row in rows) and bool(rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    if cell == "-":
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def render_report(meta: Mapping[str, Any], runs: Sequence[LoadRun], kills: Sequence[KillRun],
                  images: Mapping[str, str]) -> str:
    """The whole ``report.md``.

    :param meta: how the experiment ran (clients, iterations, seed, combinations, duration).
    :param images: plot key (``latency/<mode>/<delay>``, ``throughput``, ``kill/<mode>``) to
        the PNG's path relative to the report.
    """
    out = [
        "# toystore experiment",
        "",
        f"{meta['clients']} client sessions, {meta['iterations']} iterations each, seed {meta['seed']}; "
        f"order probability p in {', '.join(f'{p:.1f}' for p in meta['ps'])}; "
        f"frontend cache on (size {meta['cache_size']}) and off; "
        f"replication {', '.join(meta['modes'])}; db-delay {', '.join(f'{d:g}' for d in meta['db_delays'])} s. "
        f"Ran {meta['started']} for {meta['duration_s']:.0f} s on one machine (all processes on 127.0.0.1).",
        "",
        "Latencies are nearest-rank percentiles in milliseconds, as the load client measures them "
        "(an order's latency includes the client's own retries). Throughput counts every operation "
        "of the run, including the final read-back of each order. Each setting (mode, db-delay, cache) "
        "has a fresh cluster that serves its p values one after the other. The client and all five "
        "processes share this machine's CPUs, so figures move from run to run; compare within a table "
        "rather than across machines. Raw figures: `results.json` and the client's own JSON per run in `raw/`.",
        "",
    ]
    for mode, db_delay in settings(runs):
        out += [f"## Latency: {setting_label(mode, db_delay)}", "",
                markdown_table(*latency_table(runs, mode, db_delay)), ""]
        image = images.get(f"latency/{mode}/{db_delay:g}")
        if image:
            out += [f"![latency per operation vs p, {setting_label(mode, db_delay)}]({image})", ""]
    if runs:
        out += ["## Throughput (operations per second)", "", markdown_table(*throughput_table(runs)), ""]
        if "throughput" in images:
            out += [f"![throughput vs p]({images['throughput']})", ""]
    if kills:
        out += ["## Leader kill during a run", "",
                f"{meta['clients']} threads query a random toy and order one with probability 0.5, one "
                "attempt each (no client retry: the frontend's own failover is what is measured); "
                "the order leader gets `kill -9` in the middle. Time 0 is the kill.", "",
                markdown_table(*kill_table(kills)), ""]
        for kill in kills:
            image = images.get(f"kill/{kill['mode']}")
            if image:
                out += [f"![latency around the leader kill, {kill['mode']}]({image})", ""]
    return "\n".join(out)
