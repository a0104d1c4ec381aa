"""The benchmark's report as markdown: the conditions it was measured in, then one table
row per measurement, from the JSON report alone (so a stored JSON can be re-rendered)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toystore.bench.restart import CONCURRENCY as RESTART_CONCURRENCY


@dataclass
class Row:
    measurement: str
    result: str
    detail: str = ""


def _rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def table_rows(report: dict[str, Any]) -> list[Row]:
    """The figures of a report, one row per measurement, in the order they were taken."""
    f = report["figures"]
    s = report["settings"]
    checks = report.get("checks", {})
    rows: list[Row] = []

    def latency(name: str) -> str:
        text = f"p50 {f[name + '_p50_ms']:.1f} ms, p99 {f[name + '_p99_ms']:.1f} ms"
        cores = f.get(name + "_generator_cores")
        return text + (f"; load generator used {cores:.2f} cores" if cores is not None else "")

    conc = s["get_concurrency"]
    if "baseline_get_rps" in f:
        rows.append(Row("bare Klein baseline, GET (fixed body)", _rate(f["baseline_get_rps"], "req/s"),
                        f"{latency('baseline_get')}; {conc} connections"))
    if "cached_get_rps" in f:
        ratio = f.get("cached_get_to_baseline")
        spread = (f"median of its windows, each against the baseline windows either side: "
                  f"{f['cached_get_to_baseline_min']:.2f} to {f['cached_get_to_baseline_max']:.2f}; "
                  if "cached_get_to_baseline_min" in f else "")
        floor = (f"**{f['cached_get_to_bare_resource']:.2f} × a bare twisted.web Resource** (windows "
                 f"{f['cached_get_to_bare_resource_min']:.2f} to {f['cached_get_to_bare_resource_max']:.2f}; it "
                 f"served {f['bare_resource_get_rps']:,.0f} req/s); " if "cached_get_to_bare_resource" in f else "")
        rows.append(Row("cached GET /products/<name>", _rate(f["cached_get_rps"], "req/s"),
                        (f"**{ratio:.2f} × baseline**; " if ratio is not None else "") + spread + floor
                        + latency("cached_get")))
    if "uncached_get_rps" in f:
        ratio = f.get("uncached_get_to_baseline")
        of_cached = f"{f['uncached_get_to_cached']:.2f} × cached; " if "uncached_get_to_cached" in f else ""
        rows.append(Row("uncached GET /products/<name> (cache size 0)", _rate(f["uncached_get_rps"], "req/s"),
                        (f"{ratio:.2f} × baseline; " if ratio is not None else "") + of_cached
                        + latency("uncached_get")))
    for clients in s["order_concurrency"]:
        name = f"orders_c{clients}"
        if f"{name}_per_s" in f:
            check = checks.get(name, {})
            verdict = (f"{check.get('acknowledged')} acknowledged, {check.get('committed')} committed"
                       if check.get("passed") else f"MISMATCH: {check}")
            against = (f"; **{f[name + '_per_s_to_etcd']:.2f} × etcd's puts/s**, p50 "
                       f"{f[name + '_p50_to_etcd']:.2f} × etcd's" if f"{name}_per_s_to_etcd" in f else "")
            rows.append(Row(f"committed orders, {clients} client{'s' if clients > 1 else ''}",
                            _rate(f[f"{name}_per_s"], "orders/s"), f"{latency(name)}; {verdict}{against}"))
    for clients in s["order_concurrency"]:
        name = f"etcd_put_c{clients}"
        if f"{name}_per_s" in f:
            rows.append(Row(f"etcd puts (3 members, fsync), {clients} client{'s' if clients > 1 else ''}",
                            _rate(f[f"{name}_per_s"], "puts/s"), latency(name)))
    if "failover_median_s" in f:
        rows.append(Row("failover: kill -9 leader → next order acknowledged",
                        f"median {f['failover_median_s']:.2f} s",
                        f"min {f['failover_min_s']:.2f} s, max {f['failover_max_s']:.2f} s over {s['kills']} kills; "
                        "counts only orders sent after the kill, one every 10 ms"))
    if "catchup_s" in f:
        rows.append(Row(f"catch-up of {f['catchup_orders']:,} missed orders", f"{f['catchup_s']:.2f} s",
                        f"from restart of the process; {f['catchup_after_answering_s']:.2f} s after it first answered"))
    if "restart_after_over_before" in f:
        rows.append(Row(f"kill -9 and restart of the leader, {RESTART_CONCURRENCY} connections",
                        f"after/before {f['restart_after_over_before']:.2f}",
                        f"orders/s: {f['restart_before_per_s']:,.0f} before, {f['restart_down_per_s']:,.0f} down, "
                        f"{f['restart_rejoin_per_s']:,.0f} rejoining, {f['restart_after_per_s']:,.0f} after; "
                        f"caught up {f['restart_caught_up_s']:.1f} s after the restart"))
    if "group_restart_after_over_before" in f:
        rows.append(Row(f"kill -9 and restart of the whole order group, {RESTART_CONCURRENCY} connections",
                        f"after/before {f['group_restart_after_over_before']:.2f}",
                        f"orders/s: {f['group_restart_before_per_s']:,.0f} before, "
                        f"{f['group_restart_after_per_s']:,.0f} after; back {f['group_restart_back_s']:.1f} s after "
                        f"the restart; held reservations {f['group_restart_held_before']:,} before, "
                        f"{f['group_restart_held_at_kill']:,} at the kill, {f['group_restart_held_after']:,} after"))
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| measurement | result | detail |", "|---|---|---|"]
    for row in rows:
        cells = [cell.replace("|", "\\|") for cell in (row.measurement, row.result, row.detail)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    """The table and the conditions it was measured in, as markdown."""
    m, s, d = report["machine"], report["settings"], report["durations_s"]
    header = (f"Machine: {m['cores']} cores, Python {m['python']}, {m['platform']}; load average at start "
              f"{', '.join(str(x) for x in m['load_average'])}.\n"
              f"Reads by {m['read_load_generator']}; orders by {m['order_load_generator']}.\n"
              f"{s['seconds_per_point']} s per load point, --db-delay {s['db_delay']}, 3 {'primary-backup' if s.get('replication') == 'primary-backup' else 'Raft'} replicas; "
              f"whole run {d.get('total', 0):.0f} s"
              + "".join(f"; {stage.replace('_', ' ')} {seconds:.0f} s" for stage, seconds in d.items() if stage != "total")
              + ".\nThe machine is shared: compare figures within one run (ratios), not across runs.")
    footer = "" if report.get("all_checks_passed", True) else "\n\n**Some checks failed**: see \"checks\" in the JSON."
    return header + "\n\n" + markdown_table(table_rows(report)) + stage_table(report) + footer


def stage_table(report: dict[str, Any]) -> str:
    """Where a lone order's time went, when the 1-client point measured it (empty otherwise)."""
    stages = report.get("details", {}).get("orders_c1_stages")
    if not stages:
        return ""
    lines = ["", "", "Where a lone order's time goes (1 client, over the point; p50 and p99 read off each "
             "histogram's buckets). The frontend's and the leader's stages are times since that process "
             "received the order; the rest are durations inside the leader's, and the follower's append "
             "runs beside the leader's fsync:", "",
             "| stage | p50 | p99 | mean | observations |", "|---|---|---|---|---|"]
    lines += [f"| {stage} | {_ms(figure['p50_ms'])} | {_ms(figure['p99_ms'])} | {_ms(figure['mean_ms'])} "
              f"| {figure['count']:.0f} |" for stage, figure in stages.items()]
    return "\n".join(lines)


def _ms(figure: float | None) -> str:
    return "n/a" if figure is None else f"{figure:.2f} ms"


#: The latency lines of the bench's plot: (prefix of the figures, label).
LATENCY_LINES = (("orders", "toystore orders (committed)"), ("etcd_put", "etcd puts"))


def latency_series(report: dict[str, Any], prefix: str, stat: str) -> tuple[list[int], list[float]]:
    """(connections, milliseconds) of the figures ``<prefix>_c<connections>_<stat>_ms`` that
    the run measured, by connections."""
    points = [(clients, report["figures"].get(f"{prefix}_c{clients}_{stat}_ms"))
              for clients in report["settings"]["order_concurrency"]]
    measured = sorted((clients, ms) for clients, ms in points if ms is not None)
    return [clients for clients, _ in measured], [ms for _, ms in measured]
