#!/usr/bin/env python3
"""Overload: a 50 ms origin behind each proxy limited to the same concurrency.

Topology as in run.py: the proxy alone on CPU 1 (one worker), the origin
(slow_origin.py, 50 ms per request) and the load generator on CPU 0. Every
proxy lets at most LIMIT requests reach the origin at once:

- ringlb: max_in_flight = LIMIT, queue_size = QUEUE, queue_timeout = 100ms
- HAProxy: server maxconn LIMIT maxqueue QUEUE, timeout queue 100ms
- nginx: server max_conns=LIMIT (nginx OSS has no queue: the excess gets 502)

The pool's capacity is LIMIT / 50 ms = 400 requests/s. Two loads per proxy and
repetition, proxies interleaved with the order rotated:

1. closed loop, wrk -c1000: goodput (2xx/s), answers/s, socket errors and
   timeouts, proxy CPU per answer (almost all of them sheds) and RSS;
2. open loop, oha at RATE requests/s (5x capacity), latency-corrected, every
   request's status and duration (CSV): admitted (2xx) p50/p99 and shed
   (503/502) p99, against the origin's own latency measured the same way
   without a proxy ("direct", below capacity).
"""
import argparse, csv, datetime, io, os, platform, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

ORIGIN = 18095
PROXY = {"ringlb": 18080, "nginx": 18082, "haproxy": 18083, "ringlb-q0": 18084}
LIMIT, QUEUE, DELAY_MS = 20, 50, 50


def proxy_cmd(tmp, name):
    s, port = bench.Setup(tmp, 0, 0), PROXY[name]
    if name.startswith("ringlb"):
        # ringlb-q0: the same limit without a queue (the excess is shed at once).
        queue = "" if name == "ringlb-q0" else f'queue_size = {QUEUE}\nqueue_timeout = "100ms"'
        limits = f"max_in_flight = {LIMIT}\n{queue}"
        return bench.ringlb_proxy(s, name, port, [f"127.0.0.1:{ORIGIN}"], upstream=limits)
    if name == "nginx":
        conf = s.write("nginx-overload.conf", f"""
daemon off; master_process off; worker_processes 1; pid {tmp}/nginx-overload.pid;
error_log {tmp}/nginx-overload-error.log crit; worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  upstream app {{ server 127.0.0.1:{ORIGIN} max_conns={LIMIT}; keepalive {LIMIT}; }}
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ proxy_pass http://app; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_next_upstream off; }} }} }}
""")
        return ["taskset", "-c", "1", "nginx", "-p", tmp, "-c", conf]
    conf = s.write("haproxy-overload.cfg", bench.haproxy_config(
        port, f"server s1 127.0.0.1:{ORIGIN} maxconn {LIMIT} maxqueue {QUEUE}", defaults="timeout queue 100ms"))
    return ["taskset", "-c", "1", "haproxy", "-db", "-f", conf]


def stop(p):
    p.send_signal(signal.SIGKILL)
    p.wait()


def oha_csv(port, rate, conns, duration):
    """Open-loop load at `rate`; returns [(status, seconds)] per request (status 0: error)."""
    cmd = ["taskset", "-c", "0", "oha", "--no-tui", "--output-format", "csv", "--latency-correction",
           "-c", str(conns), "-q", str(rate), "-z", f"{duration}s", f"http://127.0.0.1:{port}/"]
    out = bench.sh(cmd, timeout=duration + 120).stdout
    rows = []
    for row in csv.DictReader(io.StringIO(out)):
        try:
            rows.append((int(row["status"]), float(row["request-duration"])))
        except (KeyError, ValueError):
            rows.append((0, 0.0))
    return rows


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def one(tmp, name, duration, lua, rate, conns):
    p = None if name == "direct" else bench.spawn(tmp, name, proxy_cmd(tmp, name), PROXY[name])
    port = ORIGIN if name == "direct" else PROXY[name]
    r = {}
    if p:
        c0 = bench.cpu_times(1)
        w = bench.run_wrk(port, "/", conns, duration, lua)
        c1 = bench.cpu_times(1)
        secs = w["duration_us"] / 1e6
        r.update(answers=w["requests"] / secs, goodput=(w["requests"] - w["non2xx"]) / secs,
                 shed_share=w["non2xx"] / max(1, w["requests"]), errors=w["errors"], timeouts=w["timeout"],
                 cpu_us=(c1["busy"] - c0["busy"]) / bench.CLK_TCK * 1e6 / max(1, w["requests"]),
                 rss_kb=bench.rss_kb(p.pid))
    rows = oha_csv(port, rate if p else rate // 10, 200, duration)
    ok = [d for s, d in rows if 200 <= s < 300]
    shed = [d for s, d in rows if s in (502, 503)]
    r.update(sent=len(rows), ok=len(ok), shed=len(shed), failed=sum(1 for s, _ in rows if s == 0),
             ok_p50=pct(ok, 50), ok_p99=pct(ok, 99), shed_p99=pct(shed, 99))
    if p:
        stop(p)
        time.sleep(0.5)
    return r


def med(runs, key):
    v = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(v) if v else None


def ms(v):
    return "-" if v is None else f"{v * 1000:.2f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per load (default 8)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--conns", type=int, default=1000, help="wrk connections (default 1000)")
    ap.add_argument("--overload", type=int, default=5, help="oha rate as a multiple of capacity (default 5)")
    ap.add_argument("--label", default="overload")
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "bench-results"))
    args = ap.parse_args()
    rate = args.overload * LIMIT * 1000 // DELAY_MS
    tmp = tempfile.mkdtemp(prefix="ringlb-overload-")
    lua = os.path.join(tmp, "report.lua")
    with open(lua, "w") as f:
        f.write(bench.WRK_LUA)
    origin = bench.spawn(tmp, "origin", ["taskset", "-c", "0", sys.executable,
                                   os.path.join(os.path.dirname(os.path.abspath(__file__)), "slow_origin.py"),
                                   str(ORIGIN), str(DELAY_MS)], ORIGIN)
    names = ["ringlb", "nginx", "haproxy", "ringlb-q0"]
    results = {n: [] for n in names + ["direct"]}
    try:
        for k in range(args.reps):
            results["direct"].append(one(tmp, "direct", args.duration, lua, rate, args.conns))
            for name in names[k % len(names):] + names[:k % len(names)]:
                r = one(tmp, name, args.duration, lua, rate, args.conns)
                results[name].append(r)
                print(f"rep {k + 1} {name:8} goodput {r['goodput']:.0f}/s, answers {r['answers']:.0f}/s, "
                      f"errors {r['errors']}, cpu {r['cpu_us']:.1f} us/answer, rss {r['rss_kb']} kB; "
                      f"oha {r['ok']} ok p99 {ms(r['ok_p99'])}, {r['shed']} shed p99 {ms(r['shed_p99'])}, "
                      f"{r['failed']} failed", flush=True)
    finally:
        stop(origin)
    floor = med(results["direct"], "ok_p99")
    commit = bench.sh(["git", "-C", bench.ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    cmd = (f"python3 benches/load/overload.py --duration {args.duration} --reps {args.reps} "
           f"--conns {args.conns} --overload {args.overload}")
    lines = [f"# Overload: a {DELAY_MS} ms origin, {LIMIT} requests in flight at most ({stamp})", "",
             f"- commit `{commit}`, machine {platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs",
             f"- command: `{cmd}`",
             f"- proxy alone on CPU 1 (one worker); slow_origin.py ({DELAY_MS} ms) and the load generator on CPU 0; "
             f"{args.reps} repetitions, proxies interleaved, order rotated; medians shown",
             f"- limits: ringlb max_in_flight {LIMIT}, queue_size {QUEUE}, queue_timeout 100ms; HAProxy maxconn {LIMIT} "
             f"maxqueue {QUEUE}, timeout queue 100ms; nginx max_conns={LIMIT} (no queue: 502); "
             f"ringlb-q0: max_in_flight {LIMIT} without a queue",
             f"- closed loop: wrk -t1 -c{args.conns} -d{args.duration}s; open loop: oha -c200 -q{rate} "
             f"(capacity x{args.overload}) --latency-correction, per-request CSV",
             f"- the origin's own latency (oha at {rate // 10}/s straight to it): p50 "
             f"{ms(med(results['direct'], 'ok_p50'))}, p99 {ms(floor)}", "",
             "| proxy | goodput 2xx/s (wrk) | answers/s | socket errors | timeouts | CPU us per answer | RSS MB "
             "| admitted p50 | admitted p99 | p99 / origin p99 | shed p99 | oha failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        runs = results[name]
        ok99 = med(runs, "ok_p99")
        ratio = f"{ok99 / floor:.2f}x" if ok99 and floor else "-"
        lines.append(
            f"| {name} | {med(runs, 'goodput'):.0f} | {med(runs, 'answers'):,.0f} | {med(runs, 'errors'):.0f} | "
            f"{med(runs, 'timeouts'):.0f} | {med(runs, 'cpu_us'):.1f} | {med(runs, 'rss_kb') / 1024:.1f} | "
            f"{ms(med(runs, 'ok_p50'))} | {ms(ok99)} | {ratio} | {ms(med(runs, 'shed_p99'))} | "
            f"{med(runs, 'failed'):.0f} |")
    cpu = {n: med(results[n], "cpu_us") for n in names}
    lines += ["", "Ratios to the peers (medians): "
              f"goodput ringlb/HAProxy {med(results['ringlb'], 'goodput') / med(results['haproxy'], 'goodput'):.2f}, "
              f"CPU per answer ringlb/nginx {cpu['ringlb'] / cpu['nginx']:.2f}, ringlb/HAProxy {cpu['ringlb'] / cpu['haproxy']:.2f}."]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{stamp}-{args.label}-{commit}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
