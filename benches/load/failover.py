#!/usr/bin/env python3
"""Kill one of three origins under load: client-visible errors and time to detect.

Same topology as run.py: the proxy alone on CPU 1, three nginx origins and wrk on
CPU 0. Under `wrk -c50` for DURATION seconds, origin 2 is SIGKILLed at 1/3 of the
run and restarted at 2/3. Run for ringlb, nginx and HAProxy in turn, each with
its health checks / retries configured (see the configs below).
"""
import argparse, datetime, os, platform, re, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

ORIGINS = [18091, 18092, 18093]
PROXY = {"ringlb": 18080, "nginx": 18082, "haproxy": 18083}


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
    if name == "ringlb":
        conf = s.write("ringlb-failover.toml", f"""workers = 1
[[listener]]
listen = "127.0.0.1:{port}"
upstream = "app"
[[upstream]]
name = "app"
servers = [{", ".join(f'"{x}"' for x in servers)}]
balance = "weighted_round_robin"
retries = 2
slow_start = "3s"
[upstream.health_check]
path = "/"
interval = "500ms"
timeout = "250ms"
rise = 2
fall = 2
""")
        return ["taskset", "-c", "1", os.path.join(bench.ROOT, "target/release/ringlb"), "--config", conf]
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
    lines = "\n".join(f"  server s{i} {x} check inter 500ms fall 2 rise 2" for i, x in enumerate(servers))
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
    if name == "ringlb":
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "bench-results"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ringlb-failover-")
    lua = os.path.join(tmp, "report.lua")
    with open(lua, "w") as f:
        f.write(bench.WRK_LUA)
    results = {}
    for name in ["ringlb", "nginx", "haproxy"]:
        results[name] = scenario(tmp, name, args.duration, lua)
        r = results[name]
        print(f"{name:8} {r['requests']} requests, {r['non2xx']} non-2xx, {r['errors']} socket errors, "
              f"detect {r['detect']}, back {r['back']}", flush=True)
    commit = bench.sh(["git", "-C", bench.ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    fmt = lambda v: "n/a" if v is None else f"{v * 1000:.0f} ms"
    lines = [f"# Kill one of three origins under load ({stamp})", "",
             f"- commit `{commit}`, machine {platform.node()}, Linux {platform.release()}",
             f"- command: `python3 benches/load/failover.py --duration {args.duration}`",
             f"- wrk -t1 -c50 -d{args.duration}s on CPU 0 with three nginx origins; proxy alone on CPU 1; "
             f"origin 2 SIGKILLed at {args.duration / 3:.0f} s, restarted at {2 * args.duration / 3:.0f} s",
             "- ringlb: weighted_round_robin, retries 2 (budget 20 %), HTTP checks every 500 ms, fall 2, rise 2, slow start 3 s",
             "- nginx: max_fails=1 fail_timeout=10s, proxy_next_upstream error timeout (defaults otherwise), keepalive 256",
             "- HAProxy: check inter 500ms fall 2 rise 2, retries 3, option redispatch", "",
             "| proxy | requests | req/s | client-visible non-2xx | socket errors | marked down after kill | marked up after restart |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['requests']:,} | {r['rps']:,.0f} | {r['non2xx']} | {r['errors']} | "
                     f"{fmt(r['detect'])} | {fmt(r['back'])} |")
    lines += ["", "Detection times are read from ringlb's health log lines (nginx and HAProxy are not instrumented here)."]
    path = os.path.join(args.out, f"{stamp}-failover-{commit}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
