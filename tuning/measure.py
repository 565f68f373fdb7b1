#!/usr/bin/env python3
"""Measures what the sysctls in 99-ringlb.conf change, each inside a network
namespace created for the case (net.* sysctls are per namespace, so the host
is untouched). Needs root, iproute2 and wrk; uses target/release/ringlb.

  sudo tuning/measure.py [--reps 3]

1. Accept storm: wrk opens 8,000 connections at once to a ringlb listener that
   answers itself; net.core.somaxconn (and tcp_max_syn_backlog) 128 vs 8192.
   Past a full accept queue the kernel drops SYNs and clients retry after a
   second: the slowest request shows it.
2. Upstream churn: ringlb proxies with max_idle = 0 (a new upstream connection
   per request, closed by ringlb, which then holds it in TIME_WAIT) to a
   listener of its own; ip_local_port_range 500 ports vs 64,000, tcp_tw_reuse
   0 vs 1. Out of ports, ringlb answers 503 (a local error).
"""

import argparse
import os
import re
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGLB = os.path.join(ROOT, "target/release/ringlb")
PORT = 18190


def sh(ns, cmd, timeout=60):
    return subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True,
                          text=True, timeout=timeout)


def namespace(name, sysctls):
    subprocess.run(["ip", "netns", "add", name], check=True)
    sh(name, "ip link set lo up")
    for k, v in sysctls.items():
        r = sh(name, f"sysctl -qw {k}='{v}'")
        if r.returncode != 0:
            raise SystemExit(f"sysctl {k}: {r.stderr.strip()}")


def run_case(name, sysctls, config, wrk_args, tmp):
    ns = f"ringlb-tune-{os.getpid()}"
    namespace(ns, sysctls)
    conf = os.path.join(tmp, "ringlb.toml")
    with open(conf, "w") as f:
        f.write(config)
    proxy = subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", "1", RINGLB, "--config", conf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while sh(ns, f"ss -ltn | grep -q :{PORT}").returncode != 0:
            if time.time() > deadline:
                raise SystemExit("ringlb did not start")
            time.sleep(0.05)
        out = sh(ns, f"taskset -c 0 wrk -t1 {wrk_args} --latency http://127.0.0.1:{PORT}/", timeout=120).stdout
    finally:
        proxy.terminate()
        proxy.wait(timeout=40)
        subprocess.run(["ip", "netns", "del", ns])
    return parse_wrk(out)


def parse_wrk(out):
    def ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    lat = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    reqs = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "max_ms": ms(*lat.groups()) if lat else None,
        "p99_ms": ms(*p99.groups()) if p99 else None,
        "requests": int(reqs.group(1)) if reqs else 0,
        "rps": float(rate.group(1)) if rate else 0.0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


STATIC = f"""workers = 1
[[listener]]
listen = "127.0.0.1:{PORT}"
status = 200
body = "ok\\n"
"""

CHURN = f"""workers = 1
[[listener]]
listen = "127.0.0.1:{PORT}"
upstream = "self"

[[listener]]
listen = "127.0.0.1:{PORT + 1}"
status = 200
body = "ok\\n"

[[upstream]]
name = "self"
servers = ["127.0.0.1:{PORT + 1}"]
max_idle = 0
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (ip netns)")
    if not os.path.exists(RINGLB):
        raise SystemExit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="ringlb-tune-")
    rows = []
    storm = [("somaxconn 128", {"net.core.somaxconn": 128, "net.ipv4.tcp_max_syn_backlog": 128}),
             ("somaxconn 8192", {"net.core.somaxconn": 8192, "net.ipv4.tcp_max_syn_backlog": 8192})]
    churn = [(f"ports {rng[0]}, tw_reuse {tw}",
              {"net.ipv4.ip_local_port_range": rng[1], "net.ipv4.tcp_tw_reuse": tw})
             for rng in [("500", "40000 40499"), ("63977", "1024 65000")] for tw in (0, 1)]
    for rep in range(args.reps):
        for name, ctl in storm:
            r = run_case(name, ctl, STATIC, "-c8000 -d3s", tmp)
            rows.append(("accept storm (wrk -c8000, 3 s)", name, rep, r))
            print(f"rep {rep + 1} {name:28} {r}", flush=True)
        for name, ctl in churn:
            r = run_case(name, ctl, CHURN, "-c50 -d5s", tmp)
            rows.append(("upstream churn (max_idle 0, wrk -c50, 5 s)", name, rep, r))
            print(f"rep {rep + 1} {name:28} {r}", flush=True)
    print()
    print("| experiment | setting | req/s | non-2xx | socket errors | p99 ms | slowest ms |")
    print("|---|---|---|---|---|---|---|")
    for exp, name in dict.fromkeys((e, n) for e, n, _, _ in rows):
        rs = [r for e, n, _, r in rows if (e, n) == (exp, name)]
        med = lambda k: sorted(r[k] or 0 for r in rs)[len(rs) // 2]
        print(f"| {exp} | {name} | {med('rps'):,.0f} | {med('non2xx')} | {med('errors')} | "
              f"{med('p99_ms'):.1f} | {med('max_ms'):.0f} |")
    print(f"\n(medians of {args.reps} repetitions)")


if __name__ == "__main__":
    main()
