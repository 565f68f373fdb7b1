#!/usr/bin/env python3
"""ringlb's performance targets, judged from one load-benchmark run.

run.py appends this section to every report; `python3 benches/load/targets.py RUN.json`
prints it again for a stored run. Each target gets the measured ratio, a verdict, and
what the same run shows about the bound: the proxy core's user/kernel split (a ratio
below what the kernel alone costs cannot be reached by user-space work), how busy the
origin + load-generator core was (a cell bound by CPU 0 cannot be won by the proxy), and
the no-proxy latency of the fixed-rate cell (a proxy's hop cannot be faster than none).
Ratios are medians of per-repetition ratios, as in the main table.
"""
import json, statistics, sys

CPU_RATIO = {"13B-c50": 0.65, "13B-c100": 0.65, "13B-c200": 0.65, "4KiB-c50": 0.65, "64KiB-c50": 0.75}
RPS_VS_NGINX = {"13B-c200": 1.3}
RPS_VS_BEST = 1.1
P99_VS_NGINX = {"fixed-10k": 0.7}
DEAD_VS_NGINX = {"dead-c50": 2.0}
IDLE_MAX_BYTES = 1024
SATURATED = 0.9  # a core this busy, with the other core idling more, bounds its cell
ME, REF, FLOOR = "ringlb", "nginx", "direct"
LIMITS = set(CPU_RATIO.values()) | set(RPS_VS_NGINX.values()) | {RPS_VS_BEST} | set(P99_VS_NGINX.values()) | set(DEAD_VS_NGINX.values())


def per_rep(raw, wl, a, b, fa, fb=None):
    """Median over repetitions of fa(run of a) / fb(run of b), pairing the same repetition."""
    fb = fb or fa
    vals = [fa(x) / fb(y) for x, y in zip(raw[wl][a], raw[wl][b]) if fb(y)]
    return statistics.median(vals) if vals else None


def med(raw, wl, t, key):
    runs = raw[wl].get(t) or []
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else None


def verdict(ok):
    return "**met**" if ok else "**missed**"


def show(r):
    """A ratio with enough digits that it cannot read as the limit it missed."""
    return f"{r:.2f}x" if abs(r - round(r, 2)) < 0.001 or round(r, 2) not in LIMITS else f"{r:.3f}x"


def cpu_rows(raw):
    rows = []
    for wl, limit in CPU_RATIO.items():
        if wl not in raw or not raw[wl].get(ME) or not raw[wl].get(REF):
            continue
        r = per_rep(raw, wl, ME, REF, lambda x: x["cpu_us_per_req"])
        why = ""
        if "cpu_kernel_us_per_req" in raw[wl][ME][0]:
            floor = per_rep(raw, wl, ME, REF, lambda x: x["cpu_kernel_us_per_req"], lambda y: y["cpu_us_per_req"])
            user = per_rep(raw, wl, ME, REF, lambda x: x["cpu_user_us_per_req"], lambda y: y["cpu_us_per_req"])
            why = (f"ringlb {med(raw, wl, ME, 'cpu_user_us_per_req'):.1f} us user + "
                   f"{med(raw, wl, ME, 'cpu_kernel_us_per_req'):.1f} us kernel per request, nginx "
                   f"{med(raw, wl, REF, 'cpu_us_per_req'):.1f} us in all: ringlb's kernel time alone is {floor:.2f}x "
                   f"nginx's CPU, its user time {user:.2f}x")
            if r > limit:
                why += (": the target is below ringlb's kernel time alone (the same TCP segments as nginx, "
                        "plus io_uring's own work)" if floor >= limit else
                        f": meeting the target needs user time <= {limit - floor:.2f}x nginx's CPU, "
                        f"or less kernel work")
        rows.append((f"proxy CPU per request <= {limit}x nginx, {wl}", show(r), verdict(r <= limit), why))
    return rows


def core_note(raw, wl, t):
    c1, c0 = med(raw, wl, t, "cpu_busy"), med(raw, wl, t, "cpu0_busy")
    if c1 is None:
        return "", False
    bound0 = c0 is not None and c0 >= SATURATED and c1 < c0 and c1 < SATURATED + 0.05
    note = f"{t}: its core {c1 * 100:.0f} % busy" + (f", CPU 0 {c0 * 100:.0f} %" if c0 is not None else "")
    return note, bound0


def rps_why(raw, wl, other, missed):
    """Both cores' load for ringlb and the peer it is compared with; when the
    target was missed, whether CPU 0 bounded ringlb's cell."""
    note, bound0 = core_note(raw, wl, ME)
    other_note, _ = core_note(raw, wl, other)
    why = f"{note}; {other_note}"
    if missed:
        why += ("; ringlb's cell is bound by CPU 0 (origin + wrk), not by the proxy" if bound0 else
                "; not bound by CPU 0 in this run")
    return why


def rps_rows(raw, targets):
    rows = []
    peers = [t for t in targets if t in (REF, "haproxy")]
    for wl, limit in RPS_VS_NGINX.items():
        if wl in raw and raw[wl].get(ME) and raw[wl].get(REF):
            r = per_rep(raw, wl, ME, REF, lambda x: x["rps"])
            why = rps_why(raw, wl, REF, r < limit)
            rows.append((f"req/s >= {limit}x nginx, {wl}", show(r), verdict(r >= limit), why))
    for wl in raw if peers else []:
        if wl.startswith(("dead", "fixed")) or not raw[wl].get(ME) or not all(raw[wl].get(p) for p in peers):
            continue
        ratios = [m["rps"] / max(raw[wl][p][i]["rps"] for p in peers)
                  for i, m in enumerate(raw[wl][ME]) if all(i < len(raw[wl][p]) for p in peers)]
        if not ratios:
            continue
        r = statistics.median(ratios)
        best = max(peers, key=lambda p: med(raw, wl, p, "rps"))
        why = f"best peer {best}; " + rps_why(raw, wl, best, r < RPS_VS_BEST)
        rows.append((f"req/s >= {RPS_VS_BEST}x the best peer, {wl}", show(r), verdict(r >= RPS_VS_BEST), why))
    return rows


def latency_rows(raw):
    rows = []
    for wl, limit in P99_VS_NGINX.items():
        if wl not in raw or not raw[wl].get(ME) or not raw[wl].get(REF):
            continue
        r = per_rep(raw, wl, ME, REF, lambda x: x["p99"])
        ref = [x["p99"] / 1000 for x in raw[wl][REF]]
        why = f"nginx's own p99 across repetitions {min(ref):.2f}-{max(ref):.2f} ms"
        if raw[wl].get(FLOOR):
            floor = per_rep(raw, wl, FLOOR, REF, lambda x: x["p99"])
            floor_ms = med(raw, wl, FLOOR, "p99") / 1000
            hops = {t: med(raw, wl, t, "p99") / 1000 - floor_ms for t in raw[wl] if t != FLOOR}
            allowed = limit * med(raw, wl, REF, "p99") / 1000 - floor_ms
            why += (f"; no proxy at all: p99 {floor_ms:.2f} ms ({floor:.2f}x nginx). The proxy hop adds, at p99: "
                    + ", ".join(f"{t} {v:+.2f} ms" for t, v in hops.items())
                    + f"; the target leaves ringlb's hop {allowed:+.2f} ms")
            if r > limit:
                if floor >= limit:
                    why += ": the target is below the no-proxy floor (the load generator and origin share CPU 0)"
                elif all(v > allowed for t, v in hops.items() if t != ME):
                    why += ": a smaller hop than any proxy measured here achieves"
        rows.append((f"p99 at a fixed rate <= {limit}x nginx, {wl}", show(r), verdict(r <= limit), why))
    for wl, limit in DEAD_VS_NGINX.items():
        if wl in raw and raw[wl].get(ME) and raw[wl].get(REF):
            r = per_rep(raw, wl, ME, REF, lambda x: x["rps"])
            rows.append((f"502/503 rate >= {limit}x nginx, {wl}", show(r), verdict(r >= limit),
                         "dead upstream: ringlb answers 502, then a fast 503 once the server is ejected"))
    return rows


def idle_rows(idle):
    if ME not in idle:
        return []
    mine, ref = idle[ME], idle.get(REF)
    why = f"nginx {ref:,.0f} B" if ref is not None else ""
    rows = [(f"idle keep-alive connection <= {IDLE_MAX_BYTES} B of RSS", f"{mine:,.0f} B", verdict(mine <= IDLE_MAX_BYTES), why)]
    if ref is not None:
        rows.append(("idle keep-alive connection below nginx (aim)", f"{mine / ref:.2f}x", verdict(mine < ref), why))
    return rows


def verdicts(raw, idle, targets):
    rows = cpu_rows(raw) + rps_rows(raw, targets) + latency_rows(raw) + idle_rows(idle)
    rows.append(("zero heap allocations per proxied request", "0", "checked in CI",
                 "tests/alloc_free.rs counts allocations over 1000 requests per case; not measured by this script"))
    met = sum(1 for r in rows if r[2] == "**met**")
    missed = sum(1 for r in rows if r[2] == "**missed**")
    lines = ["## Targets, judged from this run", "",
             f"{met} met, {missed} missed. The last column is what this same run shows about the bound.", "",
             "| target | measured | verdict | what the run shows |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines + [""]


def main():
    with open(sys.argv[1]) as f:
        run = json.load(f)
    targets = run["args"]["targets"].split(",")
    print("\n".join(verdicts(run["raw"], run.get("idle", {}), targets)))


if __name__ == "__main__":
    main()
