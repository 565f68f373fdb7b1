#!/usr/bin/env python3
"""Kill one of three origins under load: client-visible errors per kill, and time to detect.

Same topology as run.py: the proxy alone on CPU 1, three nginx origins and wrk on
CPU 0. Each kill is one wrk -c50 run of DURATION seconds: origin 2 is SIGKILLed at
1/3 of it and restarted at 2/3. Every proxy gets KILLS such runs, interleaved (the
order rotates each round), each with its health checks / retries configured as in
the configs below. Per kill the report gives non-2xx answers and socket errors
(connections reset, refused or timed out as wrk saw them).

`--ringlb-b PATH` adds another ringlb build as target `ringlb-b` (an A/B run).
"""
import argparse, datetime, os, platform, re, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

ORIGINS = [18091, 18092, 18093]
PROXY = {"ringlb": 18080, "nginx": 18082, "haproxy": 18083, "ringlb-b": 18084}
# Binary of the "ringlb-b" target (--ringlb-b PATH).
RINGLB_B = None
CHECK_INTERVAL = "1s"


def origin_conf(tmp, port):
    return bench.Setup(tmp, 0, 0).write(f"origin-{port}.conf", f"""
daemon off; master_process off; worker_processes 1; pid {tmp}/origin-{port}.pid;
error_log {tmp}/origin-{port}-error.log error;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ default_type text/plain; return 200 "hello world!\\n"; }} }} }}
""")


def start_origin(tmp, port):
    p = subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", tmp, "-c", origin_conf(tmp, port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_port(port)
    return p


def proxy_cmd(tmp, name):
    servers = [f"127.0.0.1:{p}" for p in ORIGINS]
    port = PROXY[name]
    s = bench.Setup(tmp, 0, 0)
    if name.startswith("ringlb"):
        upstream = f"""balance = "weighted_round_robin"
retries = 2
slow_start = "3s"
[upstream.health_check]
path = "/"
interval = "{CHECK_INTERVAL}"
timeout = "250ms"
rise = 2
fall = 2"""
        binary = RINGLB_B if name == "ringlb-b" else None
        return bench.ringlb_proxy(s, name, port, servers, upstream=upstream, binary=binary)
    if name == "nginx":
        ups = "".join(f"server {x} max_fails=1 fail_timeout=10s; " for x in servers)
        conf = s.write("nginx-failover.conf", f"""
daemon off; master_process off; worker_processes 1; pid {tmp}/nginx-failover.pid;
error_log {tmp}/nginx-failover-error.log error; worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000;
  upstream app {{ {ups} keepalive 256; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_next_upstream error timeout; }} }} }}
""")
        return ["taskset", "-c", "1", "nginx", "-p", tmp, "-c", conf]
    lines = "\n".join(f"  server s{i} {x} check inter {CHECK_INTERVAL} fall 2 rise 2" for i, x in enumerate(servers))
    conf = s.write("haproxy-failover.cfg", f"""
global
  nbthread 1
defaults
  mode http
  retries 3
  option redispatch
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  option httpchk GET /
{lines}
""")
    return ["taskset", "-c", "1", "haproxy", "-db", "-f", conf]


def scenario(tmp, name, duration, lua):
    origins = {p: start_origin(tmp, p) for p in ORIGINS}
    log = open(os.path.join(tmp, f"{name}-failover.log"), "w+")
    proxy = subprocess.Popen(proxy_cmd(tmp, name), stdout=log, stderr=log)
    bench.wait_port(PROXY[name])
    time.sleep(1.5)
    wrk = subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{duration}s", "-s", lua,
                            f"http://127.0.0.1:{PROXY[name]}/"], stdout=subprocess.PIPE, text=True)
    t0 = time.time()
    time.sleep(duration / 3)
    kill_at = time.time()
    origins[ORIGINS[1]].send_signal(signal.SIGKILL)
    origins[ORIGINS[1]].wait()
    time.sleep(duration / 3)
    restart_at = time.time()
    origins[ORIGINS[1]] = start_origin(tmp, ORIGINS[1])
    out, _ = wrk.communicate(timeout=duration + 60)
    proxy.send_signal(signal.SIGKILL)
    proxy.wait()
    for p in origins.values():
        p.send_signal(signal.SIGKILL)
        p.wait()
    time.sleep(1)  # let killed io_uring rings release their ports
    r = {k: int(v) for k, v in (kv.split("=") for kv in re.search(r"RESULT (.*)", out).group(1).split())}
    log.seek(0)
    text = log.read()
    detect = back = None
    if name.startswith("ringlb"):
        def when(pattern):
            m = re.search(r"^(\S+)Z INFO health: upstream app server 127.0.0.1:%d: %s" % (ORIGINS[1], pattern), text, re.M)
            if not m:
                return None
            ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
            return ts
        d, b = when("up -> down"), when("down -> up")
        detect = None if d is None else d - kill_at
        back = None if b is None else b - restart_at
    return {"requests": r["requests"], "non2xx": r["non2xx"],
            "errors": r["connect"] + r["read"] + r["write"] + r["timeout"], "detect": detect, "back": back,
            "rps": r["requests"] / (r["duration_us"] / 1e6)}


def fmt_ms(v):
    return "n/a" if v is None else f"{v * 1000:.0f} ms"


def main():
    global RINGLB_B
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=9, help="seconds of load per kill")
    ap.add_argument("--kills", type=int, default=5, help="kills per proxy")
    ap.add_argument("--ringlb-b", help="another ringlb binary, run as target ringlb-b")
    ap.add_argument("--label", default="failover")
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "bench-results"))
    args = ap.parse_args()
    RINGLB_B = args.ringlb_b
    names = ["ringlb", "nginx", "haproxy"] + (["ringlb-b"] if RINGLB_B else [])
    tmp = tempfile.mkdtemp(prefix="ringlb-failover-")
    lua = os.path.join(tmp, "report.lua")
    with open(lua, "w") as f:
        f.write(bench.WRK_LUA)
    results = {n: [] for n in names}
    for k in range(args.kills):
        for name in names[k % len(names):] + names[:k % len(names)]:
            r = scenario(tmp, name, args.duration, lua)
            results[name].append(r)
            print(f"kill {k + 1}/{args.kills} {name:8} {r['requests']} requests, {r['non2xx']} non-2xx, "
                  f"{r['errors']} socket errors, detect {fmt_ms(r['detect'])}, back {fmt_ms(r['back'])}",
                  flush=True)
    commit = bench.sh(["git", "-C", bench.ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    d = args.duration
    cmd = f"python3 benches/load/failover.py --duration {d} --kills {args.kills}" + \
        (f" --ringlb-b {RINGLB_B}" if RINGLB_B else "")
    lines = [f"# Kill one of three origins under load, {args.kills} kills per proxy ({stamp})", "",
             f"- commit `{commit}`, machine {platform.node()}, Linux {platform.release()}",
             f"- command: `{cmd}`",
             f"- each kill: wrk -t1 -c50 -d{d}s on CPU 0 with three nginx origins; proxy alone on CPU 1; "
             f"origin 2 SIGKILLed at {d / 3:.0f} s, restarted at {2 * d / 3:.0f} s; proxies interleaved, order rotated per round",
             f"- ringlb: weighted_round_robin, retries 2 (default budget), HTTP checks every {CHECK_INTERVAL}, fall 2, rise 2, slow start 3 s",
             "- nginx: max_fails=1 fail_timeout=10s, proxy_next_upstream error timeout (defaults otherwise), keepalive 256",
             f"- HAProxy: check inter {CHECK_INTERVAL} fall 2 rise 2, retries 3, option redispatch, http-reuse always",
             ] + ([f"- ringlb-b: `{RINGLB_B}` with ringlb's config"] if RINGLB_B else []) + ["",
             "| proxy | kills | requests | req/s | non-2xx per kill | socket errors per kill | kills with any error | marked down after kill (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        reqs = sum(r["requests"] for r in runs)
        rps = sum(r["rps"] for r in runs) / len(runs)
        bad = sum(1 for r in runs if r["non2xx"] or r["errors"])
        detects = sorted(r["detect"] for r in runs if r["detect"] is not None)
        detect = detects[len(detects) // 2] if detects else None
        lines.append(f"| {name} | {len(runs)} | {reqs:,} | {rps:,.0f} | "
                     f"{' / '.join(str(r['non2xx']) for r in runs)} | {' / '.join(str(r['errors']) for r in runs)} | "
                     f"{bad} of {len(runs)} | {fmt_ms(detect)} |")
    lines += ["", "Detection times are read from ringlb's health log lines (nginx and HAProxy are not instrumented here)."]
    path = os.path.join(args.out, f"{stamp}-{args.label}-{commit}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
