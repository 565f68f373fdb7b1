#!/usr/bin/env python3
"""ringlb's performance targets, judged from one load-benchmark run.

run.py appends this section to every report; `python3 benches/load/targets.py RUN.json`
prints it again for a stored run, and `--self-test` checks the rules below on synthetic
data. Each target gets the measured ratio, a verdict, and what the same run shows about
the bound: the proxy core's user/kernel split (a ratio below what the kernel alone costs
cannot be reached by user-space work), how busy the origin + load-generator core was (a
cell bound by CPU 0 cannot be won by the proxy), and the no-proxy latency of the
fixed-rate cell (a proxy's hop cannot be faster than none).

Rules:

- Pairing. A ratio is taken per repetition, pairing the runs of the same repetition by
  their `rep` index (run.py records it; a failed measurement is skipped, so a list
  position is not a repetition). Runs stored before `rep` existed fall back to list
  positions only when the list holds every repetition; see `reps()`.
- Verdict. A ratio target is met when a strict majority of the paired repetitions meet
  it. The measured column gives the median of the per-repetition ratios, their min-max
  and how many repetitions met the limit. (With an odd number of repetitions a strict
  majority meeting the limit is the same as the median meeting it; the rule differs
  with an even count or after a skipped repetition, where the median can fall on the
  right side of the limit with only half of the repetitions there.)
- Validity. A throughput, CPU or latency verdict needs every repetition of every
  compared cell (ringlb and the peer(s) it is compared with) to have 0 non-2xx answers
  (wrk: status >= 400; oha: any non-2xx) and 0 socket errors (wrk: connect + read +
  write + timeout; oha: its error distribution without the end-of-run deadline
  cancellations). Otherwise the verdict is "invalid (N non-2xx / M errors)", summed over
  the compared cells.
- Dead upstream (dead-*). run.py points the proxies at a port with no listener and
  drives them with wrk as in the other wrk cells, so `requests`, `non2xx` and `errors`
  mean the same. Every answer is meant to be a 502/503: non-2xx answers are the
  measurement, and `rps` counts them (the 502/503 rate). The cell is valid when socket
  errors are 0 and every answer was non-2xx (`non2xx == requests`); a 2xx answer means
  something other than a dead upstream answered. Otherwise the verdict is
  "invalid (N 2xx / M errors)".
- Unjudged. A target whose workload, target or peer is missing from the run, whose
  repetitions cannot be paired, or that lacks a recorded field it needs, gets the
  verdict "unjudged" with the reason, and is listed in the summary line.
- Digits. Ratios print with two decimals, more while the printed value would read as
  the limit or on the other side of it (0.6504 against 0.65 prints 0.6504x).
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
PEERS = (REF, "haproxy")
MET, MISSED, UNJUDGED = "**met**", "**missed**", "**unjudged**"


def reps(raw, wl, t, n_reps=None):
    """{repetition index: run} of target t in workload wl, or None when the runs cannot
    be tied to their repetitions.

    run.py records each run's `rep`. Runs stored before it did carry none: there a
    failed measurement left no trace but a shorter list, so a list position is the
    repetition only when the list is complete, i.e. as long as the run's repetitions
    (`n_reps`, from the stored args; when unknown, the longest list of the workload).
    A shorter list is not paired with anything (None): which repetition is missing
    was not recorded, and pairing by position is what paired the wrong repetitions."""
    runs = (raw.get(wl) or {}).get(t) or []
    if not runs:
        return {}
    if all("rep" in r for r in runs):
        return {r["rep"]: r for r in runs}
    expected = n_reps or max(len(v or []) for v in raw[wl].values())
    return dict(enumerate(runs)) if len(runs) == expected else None


def rep_ratios(raw, wl, a, b, fa, fb=None, n_reps=None):
    """fa(run of a) / fb(run of b) for every repetition both measured, paired by index."""
    fb = fb or fa
    ra, rb = reps(raw, wl, a, n_reps), reps(raw, wl, b, n_reps)
    if not ra or not rb:
        return []
    return [fa(ra[i]) / fb(rb[i]) for i in sorted(ra.keys() & rb.keys()) if fb(rb[i])]


def per_rep(raw, wl, a, b, fa, fb=None, n_reps=None):
    """Median over repetitions of fa(run of a) / fb(run of b), pairing the same repetition."""
    vals = rep_ratios(raw, wl, a, b, fa, fb, n_reps)
    return statistics.median(vals) if vals else None


def med(raw, wl, t, key):
    runs = raw[wl].get(t) or []
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else None


def verdict(ok):
    return MET if ok else MISSED


def show(v, limit=None, places=2, unit="x"):
    """v with `places` decimals, and more while the printed value would read as the limit
    (or fall on its other side) when v is not the limit."""
    side = lambda x: (x > limit) - (x < limit)
    for d in range(places, places + 10):
        s = f"{v:,.{d}f}"
        if limit is None or side(float(s.replace(",", ""))) == side(v):
            return s + unit
    return repr(v) + unit


def spread(vals, limit=None, places=2):
    """The median and min-max of per-repetition ratios, for the notes."""
    return (f"{show(statistics.median(vals), limit, places)} "
            f"(reps {show(min(vals), limit, places)}-{show(max(vals), limit, places)})")


def judge(name, vals, limit, higher, why):
    """One row for a ratio target from its per-repetition ratios: met when a strict
    majority of the repetitions meet the limit."""
    ok = sum(1 for v in vals if (v >= limit if higher else v <= limit))
    measured = (f"{show(statistics.median(vals), limit)} (reps {show(min(vals), limit)}-"
                f"{show(max(vals), limit)}, {ok}/{len(vals)} meet)")
    return (name, measured, verdict(2 * ok > len(vals)), why)


def unjudged(name, why):
    return (name, "-", UNJUDGED, why)


def missing(raw, wl, ts, n_reps=None, keys=()):
    """Why targets ts in workload wl cannot be compared repetition by repetition, or None."""
    if wl not in raw:
        return f"workload {wl} not in this run"
    for t in ts:
        if t not in raw[wl]:
            return f"{t} not in this run's {wl}"
        if not raw[wl][t]:
            return f"no measurement of {t} in {wl} (every repetition failed)"
        if reps(raw, wl, t, n_reps) is None:
            have = f"{len(raw[wl][t])} of {n_reps}" if n_reps else "fewer than the longest list's"
            return (f"{t} has {have} repetitions of {wl} and the run recorded no repetition index, "
                    f"so they cannot be paired")
        for k in keys + ("non2xx", "errors"):
            if any(k not in r for r in raw[wl][t]):
                return f"{t}'s runs of {wl} do not record {k}"
    common = set.intersection(*(set(reps(raw, wl, t, n_reps)) for t in ts))
    if not common:
        return f"no repetition of {wl} measured all of {', '.join(ts)}"
    return None


def faults(raw, wl, ts):
    """The verdict 'invalid (...)' and a note when a compared cell had a non-2xx answer
    or a socket error (on a dead upstream: a 2xx answer or a socket error), else None."""
    dead = wl.startswith("dead")
    bad, total_answers, total_errors = [], 0, 0
    for t in ts:
        runs = raw[wl][t]
        answers = sum((r["requests"] - r["non2xx"]) if dead else r["non2xx"] for r in runs)
        errors = sum(r["errors"] for r in runs)
        if answers or errors:
            bad.append(f"{t} {answers} {'2xx' if dead else 'non-2xx'} / {errors} errors over {len(runs)} repetitions")
        total_answers, total_errors = total_answers + answers, total_errors + errors
    if not bad:
        return None
    kind = "2xx" if dead else "non-2xx"
    return f"**invalid ({total_answers} {kind} / {total_errors} errors)**", "; ".join(bad)


def ratio_row(raw, name, wl, ts, limit, higher, ratios, why, n_reps, keys=()):
    """The row of one ratio target: unjudged, invalid, or met/missed by majority.
    `ratios` and `why` are called only once the cells are known to be complete."""
    reason = missing(raw, wl, ts, n_reps, keys)
    if reason:
        return unjudged(name, reason)
    bad = faults(raw, wl, ts)
    if bad:
        return (name, "-", bad[0], bad[1])
    vals = ratios()
    if not vals:
        return unjudged(name, f"no repetition of {wl} gave a ratio (a zero denominator)")
    return judge(name, vals, limit, higher, why(statistics.median(vals)))


def cpu_rows(raw, n_reps=None):
    rows = []
    for wl, limit in CPU_RATIO.items():
        name = f"proxy CPU per request <= {limit}x nginx, {wl}"

        def why(r, wl=wl, limit=limit):
            if not all("cpu_kernel_us_per_req" in x for x in raw[wl][ME]):
                return ""
            floors = rep_ratios(raw, wl, ME, REF, lambda x: x["cpu_kernel_us_per_req"],
                                lambda y: y["cpu_us_per_req"], n_reps)
            users = rep_ratios(raw, wl, ME, REF, lambda x: x["cpu_user_us_per_req"],
                               lambda y: y["cpu_us_per_req"], n_reps)
            floor = statistics.median(floors)
            text = (f"ringlb {med(raw, wl, ME, 'cpu_user_us_per_req'):.1f} us user + "
                    f"{med(raw, wl, ME, 'cpu_kernel_us_per_req'):.1f} us kernel per request, nginx "
                    f"{med(raw, wl, REF, 'cpu_us_per_req'):.1f} us in all: ringlb's kernel time alone is "
                    f"{spread(floors, limit)} nginx's CPU, its user time {spread(users)}")
            if r > limit:
                text += (": the target is below ringlb's kernel time alone (the same TCP segments as nginx, "
                         "plus io_uring's own work)" if floor >= limit else
                         f": meeting the target needs user time <= {limit - floor:.2f}x nginx's CPU, "
                         f"or less kernel work")
            return text

        rows.append(ratio_row(raw, name, wl, [ME, REF], limit, False,
                              lambda wl=wl: rep_ratios(raw, wl, ME, REF, lambda x: x["cpu_us_per_req"], None, n_reps),
                              why, n_reps, ("cpu_us_per_req",)))
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


def best_peer_ratios(raw, wl, peers, n_reps=None):
    """ringlb's req/s over the best peer's in the same repetition, for every repetition
    that measured ringlb and every peer."""
    maps = {t: reps(raw, wl, t, n_reps) for t in [ME] + peers}
    common = sorted(set.intersection(*(set(m) for m in maps.values())))
    best = {i: max(maps[p][i]["rps"] for p in peers) for i in common}
    return [maps[ME][i]["rps"] / best[i] for i in common if best[i]]


def rps_rows(raw, targets, n_reps=None):
    rows = []
    for wl, limit in RPS_VS_NGINX.items():
        rows.append(ratio_row(raw, f"req/s >= {limit}x nginx, {wl}", wl, [ME, REF], limit, True,
                              lambda wl=wl: rep_ratios(raw, wl, ME, REF, lambda x: x["rps"], None, n_reps),
                              lambda r, wl=wl, limit=limit: rps_why(raw, wl, REF, r < limit), n_reps, ("rps",)))
    peers = [t for t in targets if t in PEERS]
    name = f"req/s >= {RPS_VS_BEST}x the best peer"
    if not peers:
        return rows + [unjudged(name, "neither nginx nor haproxy in this run")]
    for wl in raw:
        if wl.startswith(("dead", "fixed")):
            continue

        def why(r, wl=wl):
            best = max(peers, key=lambda p: med(raw, wl, p, "rps"))
            return f"best peer {best}; " + rps_why(raw, wl, best, r < RPS_VS_BEST)

        rows.append(ratio_row(raw, f"{name}, {wl}", wl, [ME] + peers, RPS_VS_BEST, True,
                              lambda wl=wl: best_peer_ratios(raw, wl, peers, n_reps), why, n_reps, ("rps",)))
    return rows


def latency_rows(raw, n_reps=None):
    rows = []
    for wl, limit in P99_VS_NGINX.items():
        def why(r, wl=wl, limit=limit):
            ref = [x["p99"] / 1000 for x in raw[wl][REF]]
            text = f"nginx's own p99 across repetitions {min(ref):.2f}-{max(ref):.2f} ms"
            if not raw[wl].get(FLOOR):
                return text
            reason = missing(raw, wl, [FLOOR, REF], n_reps, ("p99",))
            bad = None if reason else faults(raw, wl, [FLOOR])
            if reason or bad:
                return text + f"; no-proxy floor not used: {reason or bad[1]}"
            floors = rep_ratios(raw, wl, FLOOR, REF, lambda x: x["p99"], None, n_reps)
            floor = statistics.median(floors)
            floor_ms = med(raw, wl, FLOOR, "p99") / 1000
            hops = {t: med(raw, wl, t, "p99") / 1000 - floor_ms for t in raw[wl] if t != FLOOR and raw[wl][t]}
            allowed = limit * med(raw, wl, REF, "p99") / 1000 - floor_ms
            text += (f"; no proxy at all: p99 {floor_ms:.2f} ms ({spread(floors, limit)} nginx). The proxy hop "
                     "adds, at p99: " + ", ".join(f"{t} {v:+.2f} ms" for t, v in hops.items())
                     + f"; the target leaves ringlb's hop {allowed:+.2f} ms")
            if r > limit:
                if floor >= limit:
                    text += ": the target is below the no-proxy floor (the load generator and origin share CPU 0)"
                elif all(v > allowed for t, v in hops.items() if t != ME):
                    text += ": a smaller hop than any proxy measured here achieves"
            return text

        rows.append(ratio_row(raw, f"p99 at a fixed rate <= {limit}x nginx, {wl}", wl, [ME, REF], limit, False,
                              lambda wl=wl: rep_ratios(raw, wl, ME, REF, lambda x: x["p99"], None, n_reps),
                              why, n_reps, ("p99",)))
    for wl, limit in DEAD_VS_NGINX.items():
        rows.append(ratio_row(raw, f"502/503 rate >= {limit}x nginx, {wl}", wl, [ME, REF], limit, True,
                              lambda wl=wl: rep_ratios(raw, wl, ME, REF, lambda x: x["rps"], None, n_reps),
                              lambda r: "dead upstream: ringlb answers 502, then a fast 503 once the server is "
                                        "ejected; every answer non-2xx and no socket errors, as required",
                              n_reps, ("rps", "requests")))
    return rows


def idle_rows(idle):
    name, aim = f"idle keep-alive connection <= {IDLE_MAX_BYTES} B of RSS", "idle keep-alive connection below nginx (aim)"
    if ME not in idle:
        return [unjudged(name, "no idle-connection measurement of ringlb in this run"),
                unjudged(aim, "no idle-connection measurement of ringlb in this run")]
    mine, ref = idle[ME], idle.get(REF)
    why = f"nginx {ref:,.0f} B" if ref is not None else ""
    rows = [(name, show(mine, IDLE_MAX_BYTES, 0, " B"), verdict(mine <= IDLE_MAX_BYTES), why)]
    if ref is None:
        return rows + [unjudged(aim, "no idle-connection measurement of nginx in this run")]
    return rows + [(aim, show(mine / ref, 1.0), verdict(mine < ref), why)]


def verdicts(raw, idle, targets, n_reps=None):
    """The markdown section. n_reps: the repetitions the run asked for (its args.reps),
    needed only for runs stored before run.py recorded each run's repetition index."""
    rows = cpu_rows(raw, n_reps) + rps_rows(raw, targets, n_reps) + latency_rows(raw, n_reps) + idle_rows(idle)
    rows.append(("zero heap allocations per proxied request", "0", "checked in CI",
                 "tests/alloc_free.rs counts allocations over 1000 requests per case; not measured by this script"))
    met = sum(1 for r in rows if r[2] == MET)
    missed = sum(1 for r in rows if r[2] == MISSED)
    invalid = [f"{r[0]}: {r[2].strip('*')}" for r in rows if r[2].startswith("**invalid")]
    skipped = [f"{r[0]} ({r[3]})" for r in rows if r[2] == UNJUDGED]
    summary = f"{met} met, {missed} missed"
    summary += f", {len(invalid)} invalid ({'; '.join(invalid)})" if invalid else ", 0 invalid"
    summary += f", {len(skipped)} unjudged ({'; '.join(skipped)})" if skipped else ", 0 unjudged"
    lines = ["## Targets, judged from this run", "",
             f"{summary}. Ratios are medians of per-repetition ratios, with their range and how many "
             "repetitions met the limit; a target is met when most repetitions meet it. "
             "The last column is what this same run shows about the bound.", "",
             "| target | measured | verdict | what the run shows |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines + [""]


def self_test():
    """Synthetic runs, one check per rule in the module docstring."""
    def run(rep, **kw):
        r = dict(rep=rep, rps=100000.0, cpu_us_per_req=10.0, p99=1000.0, non2xx=0, errors=0,
                 requests=500000, cpu_busy=0.9, cpu0_busy=0.99)
        r.update(kw)
        return r

    def cell(values, key, **kw):
        return [run(i, **{key: v}, **kw) for i, v in enumerate(values)]

    def row(lines, prefix):
        hits = [l for l in lines if l.startswith(f"| {prefix}")]
        assert len(hits) == 1, (prefix, hits)
        return [c.strip() for c in hits[0].strip("|").split("|")]

    def section(raw, idle=None, targets=(ME, REF), n_reps=None):
        return verdicts(raw, idle if idle is not None else {ME: 700.0, REF: 800.0}, list(targets), n_reps)

    cpu = "proxy CPU per request <= 0.65x nginx, 13B-c50"
    p99 = "p99 at a fixed rate <= 0.7x nginx, fixed-10k"
    dead = "502/503 rate >= 2.0x nginx, dead-c50"

    # 1. non-2xx answers or socket errors make a cell invalid, never met; a dead
    #    upstream's cell needs every answer non-2xx and no socket errors.
    mine = cell([5.0] * 3, "cpu_us_per_req")
    mine[1]["non2xx"] = 12
    lines = section({"13B-c50": {ME: mine, REF: cell([10.0] * 3, "cpu_us_per_req")}})
    v = row(lines, cpu)[2]
    assert v == "**invalid (12 non-2xx / 0 errors)**", v
    assert f"2 invalid ({cpu}: invalid (12 non-2xx / 0 errors); req/s" in lines[2], lines[2]
    mine = cell([5.0] * 3, "cpu_us_per_req")
    ref = cell([10.0] * 3, "cpu_us_per_req")
    ref[2]["errors"] = 4
    v = row(section({"13B-c50": {ME: mine, REF: ref}}), cpu)[2]
    assert v == "**invalid (0 non-2xx / 4 errors)**", v
    ok = lambda n: cell([500000.0 * n] * 3, "rps", non2xx=500000)
    v = row(section({"dead-c50": {ME: ok(5), REF: ok(1)}}), dead)[2]
    assert v == MET, v
    bad = ok(5)
    bad[0]["errors"] = 7
    v = row(section({"dead-c50": {ME: bad, REF: ok(1)}}), dead)[2]
    assert v == "**invalid (0 2xx / 7 errors)**", v
    bad = ok(5)
    bad[2]["non2xx"] = 499990
    v = row(section({"dead-c50": {ME: bad, REF: ok(1)}}), dead)[2]
    assert v == "**invalid (10 2xx / 0 errors)**", v

    # 2. Most repetitions must meet a target; the range is shown.
    p = section({"fixed-10k": {ME: cell([220.0, 300.0, 1060.0, 1100.0, 1200.0], "p99"),
                               REF: cell([1000.0] * 5, "p99")}})
    measured, v = row(p, p99)[1:3]
    assert v == MISSED, v
    assert measured == "1.06x (reps 0.22x-1.20x, 2/5 meet)", measured
    # An even count, where the median (0.70x) meets the limit but only 2 of 4 repetitions do.
    p = section({"fixed-10k": {ME: cell([220.0, 500.0, 900.0, 1060.0], "p99"), REF: cell([1000.0] * 4, "p99")}})
    measured, v = row(p, p99)[1:3]
    assert v == MISSED and measured.startswith("0.70x (reps 0.22x-1.06x, 2/4"), (measured, v)
    p = section({"fixed-10k": {ME: cell([120.0, 550.0, 370.0, 1010.0, 13030.0], "p99"),
                               REF: cell([1000.0] * 5, "p99")}})
    measured, v = row(p, p99)[1:3]
    assert v == MET and measured == "0.55x (reps 0.12x-13.03x, 3/5 meet)", (measured, v)

    # 3. A missing peer, workload or repetition index is listed as unjudged, with why.
    lines = section({"fixed-10k": {ME: cell([500.0] * 3, "p99")}})
    r = row(lines, p99)
    assert r[2] == UNJUDGED and "nginx" in r[3], r
    assert f"{p99} (nginx not in this run's fixed-10k)" in lines[2], lines[2]
    assert "unjudged (" in lines[2] and f"{cpu} (workload 13B-c50 not in this run)" in lines[2], lines[2]
    lines = section({"13B-c50": {ME: cell([1.2e5] * 3, "rps"), REF: cell([1e5] * 3, "rps"), "haproxy": []}},
                    targets=(ME, REF, "haproxy"))
    r = row(lines, "req/s >= 1.1x the best peer, 13B-c50")
    assert r[2] == UNJUDGED and "haproxy" in r[3], r
    lines = section({"13B-c50": {ME: cell([1.2e5] * 3, "rps"), REF: cell([1e5] * 3, "rps")}}, targets=("ringlb",))
    assert row(lines, "req/s >= 1.1x the best peer")[2] == UNJUDGED

    # 4. Repetitions pair by index: nginx's repetition 1 failed, so ringlb's repetition 1
    #    (an outlier at 50 us) has no partner. By list position it would meet nginx's
    #    repetition 2 and read 5.0x.
    ref = [run(0, cpu_us_per_req=10.0), run(2, cpu_us_per_req=10.0)]
    raw = {"13B-c50": {ME: cell([5.0, 50.0, 5.0], "cpu_us_per_req"), REF: ref}}
    assert rep_ratios(raw, "13B-c50", ME, REF, lambda x: x["cpu_us_per_req"]) == [0.5, 0.5]
    measured, v = row(section(raw), cpu)[1:3]
    assert v == MET and measured == "0.50x (reps 0.50x-0.50x, 2/2 meet)", (measured, v)
    # A stored run without repetition indices: complete lists pair by position, a short
    # list cannot be paired at all.
    strip = lambda runs: [{k: x for k, x in r.items() if k != "rep"} for r in runs]
    old = {"13B-c50": {ME: strip(cell([5.0, 6.0, 7.0], "cpu_us_per_req")), REF: strip(cell([10.0] * 3, "cpu_us_per_req"))}}
    assert rep_ratios(old, "13B-c50", ME, REF, lambda x: x["cpu_us_per_req"], n_reps=3) == [0.5, 0.6, 0.7]
    old["13B-c50"][REF] = strip(ref)
    assert rep_ratios(old, "13B-c50", ME, REF, lambda x: x["cpu_us_per_req"], n_reps=3) == []
    r = row(section(old, n_reps=3), cpu)
    assert r[2] == UNJUDGED and "cannot be paired" in r[3], r

    # 5. Enough digits that a miss never reads as its limit, nor a met ratio as a miss.
    assert show(0.6504, 0.65) == "0.6504x", show(0.6504, 0.65)
    assert show(0.6496, 0.65) == "0.6496x" and show(0.65, 0.65) == "0.65x"
    assert show(1.099, 1.1) == "1.099x" and show(0.753, 0.65) == "0.75x" and show(1.2996, 1.3) == "1.2996x"
    assert show(1024.4, 1024, 0, " B") == "1,024.4 B" and show(1023.6, 1024, 0, " B") == "1,023.6 B"
    raw = {"13B-c50": {ME: cell([6.504] * 3, "cpu_us_per_req"), REF: cell([10.0] * 3, "cpu_us_per_req")}}
    measured, v = row(section(raw), cpu)[1:3]
    assert v == MISSED and measured.startswith("0.650") and measured.split("x")[0] != "0.650", measured
    print("self-test passed")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    if len(sys.argv) != 2:
        sys.exit("usage: targets.py RUN.json | targets.py --self-test")
    with open(sys.argv[1]) as f:
        run = json.load(f)
    args = run.get("args", {})
    # Old runs all store args.targets; without it, every target measured anywhere.
    targets = ([t for t in args["targets"].split(",") if t] if args.get("targets")
               else sorted({t for cells in run["raw"].values() for t in cells}))
    print("\n".join(verdicts(run["raw"], run.get("idle", {}), targets, args.get("reps"))))


if __name__ == "__main__":
    main()
