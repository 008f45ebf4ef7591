#!/usr/bin/env python3
"""Turns build-support/bench's results (JSON lines) into the side-by-side table,
each figure with its ratio to the limit and the targets met or missed, then one
JSON line with everything.

Usage: bench_report.py RESULTS.jsonl CORES "CPU MODEL"
"""

import json
import re
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
    # Every start's time to ready, for the phases that start a service more than once.
    ready_all = {}
    for r in results:
        if r["kind"] == "ready":
            ready_all.setdefault((r["phase"], r["service"]), []).append(r["seconds"])
    trips = next((r["trips"] for r in results if r["kind"] == "breaker"), None)
    steps = [r for r in results if r["kind"] == "sustained_step"]
    sustained = next((r for r in results if r["kind"] == "sustained"), None)
    drill = next((r for r in results if r["kind"] == "breaker_drill"), None)
    overload = next((r for r in results if r["kind"] == "overload"), None)

    def limit_for(concurrency):
        # The limit at the same number of clients; beyond 32, the 32-client figure.
        candidates = [c for c in limit if c <= concurrency]
        return limit[max(candidates)] if candidates else None

    def fmt_s(seconds):
        return "never" if seconds is None else f"{seconds:.1f} s"

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
    best = e2e.get(sustained["label"]) if sustained and sustained["rate"] is not None else None
    if sustained:
        tried = ", ".join(f"{r['rate']:g}/s {'pass' if r['pass'] else 'fail'}" for r in steps)
        row(
            f"(d) e2e sustained, gateway latency 0, open loop, {sustained['seconds']} s a step",
            f"{sustained['rate']:g}/s" if best else "none passed",
            f"{best['p50_ms'] or 0:.1f} ms" if best else "",
            f"{best['p99_ms'] or 0:.1f} ms" if best else "",
            (f"{ratio(sustained['rate'], limit.get(32))} of pgbench at 32; " if best and limit.get(32) else "")
            + f"steps: {tried}",
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
    if drill:
        row(
            f"(g) breaker drill: timeout rate 0.9 at {drill['rate']}/s, then 0",
            f"open in {fmt_s(drill['open_s'])}",
            "",
            "",
            f"closed {fmt_s(drill['close_s'])} after the gateway recovered (recovery timeout {drill['recovery_s']} s); "
            f"{drill['healthy_trips']} trips in the {drill['healthy_seconds']} s healthy, {drill['trips']} in all",
        )
    overload_load = loads.get("overload")
    overload_e2e = e2e.get("overload")
    answered = (overload_load or {}).get("answered")
    if overload and overload_load:
        row(
            f"(h) overload: offered {overload['rate']:g}/s, bound {overload['bound']} pending",
            f"{overload_load['throughput_per_s']:.0f}/s placed",
            f"{answered['p50_ms']:.1f} ms" if answered and "p50_ms" in answered else "",
            f"{answered['p99_ms']:.1f} ms" if answered and "p99_ms" in answered else "",
            f"answered max {answered.get('max_ms') if answered else 'unknown'} ms, "
            f"rejected {overload_load.get('rejected', 'unknown')}, errors {overload_load['errors'] or 'none'}, "
            f"dropped {overload_load['dropped']}; backlog max {overload['max_backlog']}; "
            + (f"{overload_e2e['terminal']}/{overload_e2e['orders']} terminal" if overload_e2e else "not settled"),
        )
    # (i)/(j): each secured figure beside its plaintext twin, rounds interleaved;
    # the median over the rounds of each.
    def median(values):
        values = sorted(v for v in values if v is not None)
        if not values:
            return None
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    def counted(label, prefix):
        # The measured rounds (-r1, -r2, ...), not the warm-up (-rw).
        return re.fullmatch(re.escape(prefix) + r"-r\d+", label) is not None

    def rounds(prefix):
        return [r for label, r in loads.items() if counted(label, prefix)]

    def pct(value, reference):
        return f"{100 * (value / reference - 1):+.1f} %" if value is not None and reference else "-"

    security = {}
    for concurrency in (1, 32):
        plain = rounds(f"security-api-plaintext-c{concurrency}")
        tls = rounds(f"security-api-tls-c{concurrency}")
        if not plain or not tls:
            continue
        figures = {}
        for mode, runs in (("plaintext", plain), ("TLS", tls)):
            figures[mode] = (
                median([r["throughput_per_s"] for r in runs]),
                median([r["place_order"].get("p50_ms") for r in runs]),
                median([r["place_order"].get("p99_ms") for r in runs]),
            )
            row(
                f"(i) PlaceOrder, order-api alone, {concurrency} concurrent, {mode}",
                f"{figures[mode][0]:.0f}/s",
                f"{figures[mode][1]:.2f} ms",
                f"{figures[mode][2]:.2f} ms",
                f"median of {len(runs)} rounds"
                + ("" if mode == "plaintext" else
                   f"; throughput {pct(figures['TLS'][0], figures['plaintext'][0])}, "
                   f"p50 {pct(figures['TLS'][1], figures['plaintext'][1])} vs plaintext"),
            )
        security[f"tls_c{concurrency}"] = {
            "throughput_change": (figures["TLS"][0] / figures["plaintext"][0] - 1) if figures["plaintext"][0] else None,
            "p50_change": (figures["TLS"][1] / figures["plaintext"][1] - 1) if figures["plaintext"][1] else None,
        }
    kafka = {}
    for mode in ("plaintext", "scram"):
        runs = rounds(f"security-kafka-{mode}-c32")
        ends = [e2e[label] for label in e2e if counted(label, f"security-kafka-{mode}-c32")]
        if runs and ends:
            kafka[mode] = {
                "throughput": median([r["throughput_per_s"] for r in runs]),
                "publish_p50": median([r["publish_delay"].get("p50_ms") for r in runs]),
                "publish_p99": median([r["publish_delay"].get("p99_ms") for r in runs]),
                "paid": median([e["terminal_per_s"] for e in ends]),
                "e2e_p50": median([e["p50_ms"] for e in ends]),
                "e2e_p99": median([e["p99_ms"] for e in ends]),
                # The median of every start in this mode (the warm-up's included).
                "ready": {service: median(ready_all.get((f"security-{mode}", service), []))
                          for service in ("order-api", "payment-service", "notification-service")},
                "rounds": len(runs),
            }
    for mode, name in (("plaintext", "plaintext"), ("scram", "SASL/SCRAM-SHA-512 + ACLs")):
        k = kafka.get(mode)
        if not k:
            continue
        other = kafka.get("plaintext") if mode == "scram" else None
        ready_text = ", ".join(f"{service} {seconds:.2f} s" for service, seconds in k["ready"].items() if seconds is not None)
        row(f"(j) Kafka {name}: PlaceOrder, whole platform, 32 concurrent", f"{k['throughput']:.0f}/s", "", "",
            f"median of {k['rounds']} rounds" + (f"; {pct(k['throughput'], other['throughput'])} vs plaintext" if other else ""))
        row(f"(j) Kafka {name}: outbox publish delay", "", f"{k['publish_p50'] or 0:.1f} ms", f"{k['publish_p99'] or 0:.1f} ms",
            f"p50 {pct(k['publish_p50'], other['publish_p50'])} vs plaintext" if other else "")
        row(f"(j) Kafka {name}: end to end", f"{k['paid'] or 0:.0f} paid/s", f"{k['e2e_p50'] or 0:.1f} ms", f"{k['e2e_p99'] or 0:.1f} ms",
            (f"paid/s {pct(k['paid'], other['paid'])}, p50 {pct(k['e2e_p50'], other['e2e_p50'])} vs plaintext; " if other else "")
            + f"ready: {ready_text}")
    if kafka.get("plaintext") and kafka.get("scram"):
        security["scram"] = {
            "throughput_change": kafka["scram"]["throughput"] / kafka["plaintext"]["throughput"] - 1,
            "publish_p50_change": (kafka["scram"]["publish_p50"] / kafka["plaintext"]["publish_p50"] - 1)
            if kafka["plaintext"]["publish_p50"] else None,
            "e2e_p50_change": (kafka["scram"]["e2e_p50"] / kafka["plaintext"]["e2e_p50"] - 1)
            if kafka["plaintext"]["e2e_p50"] else None,
        }

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
    if sustained:
        reference = limit.get(32)
        target("e2e sustained",
               best is not None and reference is not None and sustained["rate"] >= 0.6 * reference,
               (f"{sustained['rate']:g}/s with p50 {best['p50_ms']} ms, p99 {best['p99_ms']} ms: " if best else "no step passed; ")
               + (f"{ratio(sustained['rate'], reference)} of pgbench at 32 ({reference:.0f} tps), target >= 60 %"
                  if reference else "pgbench at 32 not measured in this run (phase api)"))
    zero1 = e2e.get("platform-c1")
    if zero1:
        target("e2e p50 at concurrency 1",
               (zero1["p50_ms"] if zero1["p50_ms"] is not None else 1e9) <= 8
               and (zero1["p99_ms"] if zero1["p99_ms"] is not None else 1e9) <= 20,
               f"p50 {zero1['p50_ms']} ms (<= 8), p99 {zero1['p99_ms']} ms (<= 20)")
    if seed:
        target("seed latency",
               (seed.get("sustained_per_s") or 0) >= 400 and trips == 0,
               f"{seed.get('sustained_per_s')}/s sustained over {seed.get('sustained_window_s')} s (>= 400), "
               f"{trips} breaker trips (0)")
    if half:
        target("PlaceOrder p99 <= 10 ms at half the maximum rate",
               half["place_order"].get("p99_ms", 1e9) <= 10, f"{half['place_order'].get('p99_ms')} ms")
    if drill:
        target("breaker",
               drill["healthy_trips"] == 0
               and drill["open_s"] is not None and drill["open_s"] <= 5
               and drill["close_s"] is not None and drill["close_s"] <= drill["recovery_s"] + 10,
               f"opened {fmt_s(drill['open_s'])} after the timeout rate went to 0.9 (<= 5 s), closed "
               f"{fmt_s(drill['close_s'])} after it went back to 0 (<= {drill['recovery_s'] + 10} s), "
               f"{drill['healthy_trips']} trips while healthy (0)")
    if overload:
        max_ms = answered.get("max_ms") if answered else None
        bounded = overload["max_backlog"] <= overload["bound"] * 1.1
        settled = bool(overload_e2e) and overload_e2e["terminal"] == overload_e2e["orders"]
        target("overload",
               max_ms is not None and max_ms <= 100 and bool(overload_load) and overload_load["dropped"] == 0
               and bounded and settled,
               f"answered p99 {answered.get('p99_ms') if answered else 'unknown'} ms, max "
               f"{'unknown' if max_ms is None else max_ms} ms (<= 100), rejected "
               f"{overload_load.get('rejected', 'unknown') if overload_load else 'unknown'}, "
               f"dropped {overload_load['dropped'] if overload_load else 'unknown'}; backlog max {overload['max_backlog']} "
               f"(<= {overload['bound'] * 1.1:.0f}); "
               + (f"{overload_e2e['terminal']}/{overload_e2e['orders']} accepted orders terminal" if overload_e2e else "not settled"))
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
        "sustained": sustained,
        "sustained_steps": steps,
        "breaker_drill": drill,
        "overload": overload,
        "security": security,
        "targets": targets,
    }, separators=(",", ":")))


if __name__ == "__main__":
    main()
