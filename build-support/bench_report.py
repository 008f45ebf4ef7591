#!/usr/bin/env python3
"""Turns build-support/bench's results (JSON lines) into the side-by-side table,
each figure with its ratio to the limit and the targets met or missed, then one
JSON line with everything.

Usage: bench_report.py RESULTS.jsonl CORES "CPU MODEL"
"""

import json
import sys


def read_results(path):
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def main():
    results = read_results(sys.argv[1])
    cores, cpu = sys.argv[2], sys.argv[3]
    limit = {r["clients"]: r["tps"] for r in results if r["kind"] == "pgbench"}
    loads = {r["label"]: r for r in results if r["kind"] == "load"}
    e2e = {r["label"]: r for r in results if r["kind"] == "end_to_end"}
    rss = {}
    for r in results:
        if r["kind"] == "rss":
            key = (r["phase"], r["service"])
            rss[key] = max(rss.get(key, 0), r["kib"])
    ready = {(r["phase"], r["service"]): r["seconds"] for r in results if r["kind"] == "ready"}
    trips = next((r["trips"] for r in results if r["kind"] == "breaker"), None)

    def limit_for(concurrency):
        # The limit at the same number of clients; beyond 32, the 32-client figure.
        candidates = [c for c in limit if c <= concurrency]
        return limit[max(candidates)] if candidates else None

    def ratio(value, reference):
        return f"{100 * value / reference:.0f} %" if value is not None and reference else "-"

    rows = []

    def row(what, value, p50="", p99="", against=""):
        rows.append((what, value, p50, p99, against))

    for clients in sorted(limit):
        row(f"(a) pgbench, PlaceOrder's transaction, {clients} clients", f"{limit[clients]:.0f} tps", "", "", "the limit")
    for scope, prefix in (("order-api alone", "api"), ("whole platform", "platform")):
        for concurrency in (1, 8, 32, 128):
            load = loads.get(f"{prefix}-c{concurrency}")
            if not load:
                continue
            reference = limit_for(concurrency)
            row(
                f"(b) PlaceOrder, {scope}, {concurrency} concurrent",
                f"{load['throughput_per_s']:.0f}/s",
                f"{load['place_order'].get('p50_ms', 0):.1f} ms",
                f"{load['place_order'].get('p99_ms', 0):.1f} ms",
                f"{ratio(load['throughput_per_s'], reference)} of {reference:.0f} tps" if reference else "-",
            )
    half = loads.get("api-open-half")
    if half:
        row(
            f"(c) PlaceOrder, open loop at {half['rate']}/s (half the maximum)",
            f"{half['throughput_per_s']:.0f}/s",
            f"{half['place_order'].get('p50_ms', 0):.1f} ms",
            f"{half['place_order'].get('p99_ms', 0):.1f} ms",
            f"errors {half['errors'] or 'none'}, dropped {half['dropped']}",
        )
    for concurrency in (1, 8, 32, 128):
        figures = e2e.get(f"platform-c{concurrency}")
        load = loads.get(f"platform-c{concurrency}")
        if not figures or not load:
            continue
        row(
            f"(d) end to end, gateway latency 0, {concurrency} concurrent",
            f"{figures['terminal_per_s'] or 0:.0f} paid/s",
            f"{figures['p50_ms'] or 0:.1f} ms",
            f"{figures['p99_ms'] or 0:.1f} ms",
            f"{ratio(figures['terminal_per_s'], load['throughput_per_s'])} of PlaceOrder's {load['throughput_per_s']:.0f}/s",
        )
    seed = e2e.get("seed-open")
    seed_load = loads.get("seed-open")
    if seed and seed_load:
        share = 100 * seed["completed"] / seed["orders"] if seed["orders"] else 0
        row(
            f"(e) terminal/s sustained at the seed's gateway latency (1-5 s), offered {seed_load['rate']}/s",
            f"{seed.get('sustained_per_s') or 0:.0f}/s",
            f"{seed['p50_ms'] or 0:.0f} ms",
            f"{seed['p99_ms'] or 0:.0f} ms",
            f"{seed['terminal']}/{seed['orders']} terminal ({seed['terminal_per_s'] or 0:.0f}/s counting the {seed.get('drain_s') or 0:.0f} s drain), "
            f"{share:.0f} % COMPLETED, {seed['failed_fast_by_breaker']} failed fast, {trips} breaker trips",
        )
    for (phase, service), kib in sorted(rss.items()):
        started = ready.get((phase, service))
        row(
            f"(f) {service}, {phase} phase",
            f"{kib / 1024:.0f} MiB peak RSS",
            "",
            "",
            f"ready in {started:.2f} s" if started is not None else "",
        )

    width = max(len(r[0]) for r in rows)
    print(f"machine: {cores} cores, {cpu}; everything on this one machine")
    print(f"{'what':<{width}}  {'figure':>16}  {'p50':>9}  {'p99':>9}  against")
    for what, value, p50, p99, against in rows:
        print(f"{what:<{width}}  {value:>16}  {p50:>9}  {p99:>9}  {against}")

    # Targets.
    targets = []

    def target(name, met, detail):
        targets.append({"target": name, "met": bool(met), "detail": detail})

    api32 = loads.get("api-c32")
    if api32 and limit.get(32):
        target("PlaceOrder, order-api alone, 32 concurrent >= 100 % of pgbench at 32",
               api32["throughput_per_s"] >= limit[32],
               ratio(api32["throughput_per_s"], limit[32]))
    zero32, load32 = e2e.get("platform-c32"), loads.get("platform-c32")
    if zero32 and load32:
        target("end to end (latency 0, 32 concurrent) >= 60 % of PlaceOrder",
               (zero32["terminal_per_s"] or 0) >= 0.6 * load32["throughput_per_s"],
               ratio(zero32["terminal_per_s"], load32["throughput_per_s"]))
    if seed:
        target(">= 300 orders/s terminal at the seed's gateway latency",
               (seed.get("sustained_per_s") or 0) >= 300,
               f"{seed.get('sustained_per_s')}/s sustained over {seed.get('sustained_window_s')} s")
    if half:
        target("PlaceOrder p99 <= 10 ms at half the maximum rate",
               half["place_order"].get("p99_ms", 1e9) <= 10, f"{half['place_order'].get('p99_ms')} ms")
    zero1 = e2e.get("platform-c1")
    if zero1:
        target("end to end p50 <= 20 ms at concurrency 1", (zero1["p50_ms"] or 1e9) <= 20, f"{zero1['p50_ms']} ms")
    services = [key for key in rss if key[1] != "kafka"]
    if services:
        worst = max(services, key=lambda key: rss[key])
        target("RSS <= 64 MiB per service under load", rss[worst] <= 64 * 1024,
               f"largest {worst[1]} ({worst[0]}) {rss[worst] / 1024:.0f} MiB")
    print()
    for t in targets:
        print(f"  {'met   ' if t['met'] else 'MISSED'}  {t['target']}: {t['detail']}")

    print(json.dumps({
        "machine": {"cores": int(cores), "cpu": cpu},
        "limit_tps": limit,
        "loads": loads,
        "end_to_end": e2e,
        "rss_kib": {f"{phase}/{service}": kib for (phase, service), kib in rss.items()},
        "ready_seconds": {f"{phase}/{service}": s for (phase, service), s in ready.items()},
        "breaker_trips": trips,
        "targets": targets,
    }, separators=(",", ":")))


if __name__ == "__main__":
    main()
