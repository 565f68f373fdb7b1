#!/usr/bin/env python3
"""At the connection cap: answer 503 + close (ringlb's default) or pause accept
(`at_connection_cap = "pause"`, and HAProxy's frontend `maxconn`)?

Topology as in run.py: the proxy alone on CPU 1 (one worker), the nginx origin
and wrk on CPU 0. Each proxy allows CAP client connections; wrk opens CONNS
keep-alive connections (5x the cap). Reported per proxy (medians over the
repetitions, order rotated): answers/s, 2xx/s, 503s/s, socket errors (connect,
read, timeout as wrk counts them: a connection left in the backlog times out),
p99 latency and proxy CPU per answer.
"""
import argparse, datetime, os, platform, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

PROXY = {"ringlb-refuse": 18080, "ringlb-pause": 18084, "haproxy-maxconn": 18083}


def proxy_cmd(tmp, name, cap):
    s, port = bench.Setup(tmp, 0, 0), PROXY[name]
    if name.startswith("ringlb"):
        mode = name.split("-")[1]
        top = f'[limits]\nmax_connections = {cap}\nat_connection_cap = "{mode}"'
        return bench.ringlb_proxy(s, name, port, [f"127.0.0.1:{bench.ORIGIN_PORT}"], top=top)
    conf = s.write("haproxy-cap.cfg", bench.haproxy_config(
        port, f"server s1 127.0.0.1:{bench.ORIGIN_PORT}", frontend=f"maxconn {cap}"))
    return ["taskset", "-c", "1", "haproxy", "-db", "-f", conf]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cap", type=int, default=100)
    ap.add_argument("--conns", type=int, default=500)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--label", default="conn-cap")
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "bench-results"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ringlb-conncap-")
    lua = os.path.join(tmp, "report.lua")
    with open(lua, "w") as f:
        f.write(bench.WRK_LUA)
    setup = bench.Setup(tmp, bench.ORIGIN_PORT, 256)
    setup.start_origin()
    names = list(PROXY)
    results = {n: [] for n in names}
    try:
        for k in range(args.reps):
            for name in names[k % len(names):] + names[:k % len(names)]:
                p = bench.spawn(tmp, name, proxy_cmd(tmp, name, args.cap), PROXY[name])
                c0 = bench.cpu_times(1)
                w = bench.run_wrk(PROXY[name], "/", args.conns, args.duration, lua)
                c1 = bench.cpu_times(1)
                p.send_signal(signal.SIGKILL)
                p.wait()
                time.sleep(1)
                secs = w["duration_us"] / 1e6
                r = {"answers": w["requests"] / secs, "ok": (w["requests"] - w["non2xx"]) / secs,
                     "refused": w["non2xx"] / secs, "connect": w["connect"], "read": w["read"],
                     "timeout": w["timeout"], "p99": w["p99"] / 1000,
                     "cpu": (c1["busy"] - c0["busy"]) / bench.CLK_TCK * 1e6 / max(1, w["requests"])}
                results[name].append(r)
                print(f"rep {k + 1} {name:16} {r['answers']:8.0f} answers/s, {r['ok']:8.0f} 2xx/s, "
                      f"{r['refused']:7.0f} 503/s, errors connect {r['connect']} read {r['read']} "
                      f"timeout {r['timeout']}, p99 {r['p99']:.1f} ms, {r['cpu']:.1f} us/answer", flush=True)
    finally:
        setup.stop_all()
    med = lambda n, key: statistics.median(r[key] for r in results[n])
    commit = bench.sh(["git", "-C", bench.ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    lines = [f"# At the connection cap: refuse or pause ({stamp})", "",
             f"- commit `{commit}`, machine {platform.node()}, Linux {platform.release()}",
             f"- command: `python3 benches/load/conn_cap.py --cap {args.cap} --conns {args.conns} "
             f"--duration {args.duration} --reps {args.reps}`",
             f"- cap {args.cap} client connections, wrk -t1 -c{args.conns} -d{args.duration}s (2 s timeout) on CPU 0 "
             "with the nginx origin; proxy alone on CPU 1; medians of the repetitions, order rotated",
             "- ringlb-refuse: 503 + close past the cap (default); ringlb-pause: `at_connection_cap = \"pause\"`; "
             "haproxy-maxconn: frontend `maxconn` (HAProxy stops accepting at it)", "",
             "| proxy | answers/s | 2xx/s | 503/s | connect errors | read errors | timeouts | p99 ms | CPU us per answer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {med(n, 'answers'):,.0f} | {med(n, 'ok'):,.0f} | {med(n, 'refused'):,.0f} | "
                     f"{med(n, 'connect'):.0f} | {med(n, 'read'):.0f} | {med(n, 'timeout'):.0f} | "
                     f"{med(n, 'p99'):.1f} | {med(n, 'cpu'):.1f} |")
    lines += ["", "## Per repetition", "", "```"] + [
        f"{n} rep {i + 1}: {r}" for n in names for i, r in enumerate(results[n])] + ["```"]
    path = os.path.join(args.out, f"{stamp}-{args.label}-{commit}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:14]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
