#!/usr/bin/env python3
"""Load benchmark: ringlb vs nginx vs HAProxy, same topology, same run.

Topology (2-core machine): the proxy under test alone on CPU 1 with one worker;
the origin (nginx, 1 worker) and the load generator (wrk -t1 / oha) on CPU 0.
Targets are interleaved and their order rotated every repetition; the report
quotes medians of per-repetition ratios to nginx, and proxy CPU per request
(busy time of CPU 1 from /proc/stat divided by requests).
"""
import argparse, datetime, json, os, platform, re, shutil, signal, socket, statistics
import subprocess, sys, tempfile, time

import targets as targets_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORIGIN_PORT, DEAD_PORT = 18081, 18099
PORTS = {"ringlb": 18080, "nginx": 18082, "haproxy": 18083,
         "ringlb-epoll": 18084, "ringlb-plain": 18085, "ringlb-defer": 18086, "ringlb-b": 18087, "ringlb-c": 18088,
         "ringlb-log": 18089, "nginx-log": 18090,
         "direct": ORIGIN_PORT}
# "direct" is no proxy at all: the load generator talks to the origin. It runs in the
# fixed-rate workloads only, where its latency is the floor any proxy's hop adds to.
FLOOR = "direct"
# ringlb variants that can run as extra targets in the same run (driver comparison).
VARIANTS = {"ringlb": "", "ringlb-epoll": 'io = "epoll"', "ringlb-plain": 'uring_setup = "plain"',
            "ringlb-defer": 'uring_setup = "defer"', "ringlb-b": "", "ringlb-c": "",
            "ringlb-log": ""}
# Targets that write a JSON (ringlb) or buffered combined (nginx) access log to
# a file, for measuring what logging costs.
LOGGING = {"ringlb-log", "nginx-log"}
# Binaries of the "ringlb-b" and "ringlb-c" targets (other builds, for A/B/C
# comparisons): --ringlb-b PATH, --ringlb-c PATH.
RINGLB_B = None
RINGLB_C = None
# --proxy-quota PCT: each proxy runs in a cgroup capped at PCT % of a core
# (the proxy-bound topology of BENCHMARKING.md); None: uncapped.
PROXY_QUOTA = None
CGROUP = "/sys/fs/cgroup/cpu/ringlb-bench-proxy"


def confine(pid):
    """Moves every thread of `pid` into the capped cgroup (cgroup v1 cpu controller)."""
    os.makedirs(CGROUP, exist_ok=True)
    with open(os.path.join(CGROUP, "cpu.cfs_period_us"), "w") as f:
        f.write("10000")
    with open(os.path.join(CGROUP, "cpu.cfs_quota_us"), "w") as f:
        f.write(str(int(PROXY_QUOTA * 100)))
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(os.path.join(CGROUP, "tasks"), "w") as f:
            f.write(tid)
CLK_TCK = os.sysconf("SC_CLK_TCK")

WORKLOADS = {
    # name: (path, connections, kind)
    "13B-c50": ("/", 50, "wrk"),
    "13B-c100": ("/", 100, "wrk"),
    "13B-c200": ("/", 200, "wrk"),
    "4KiB-c50": ("/4k", 50, "wrk"),
    "64KiB-c50": ("/64k", 50, "wrk"),
    "fixed-10k": ("/", 50, "oha-rate"),
    "dead-c50": ("/", 50, "wrk-dead"),
    # Many concurrent clients: throughput, CPU, p99 and RSS.
    "13B-c3000": ("/", 3000, "wrk"),
    # A new connection for every request (`Connection: close`): the accept path.
    "close-c50": ("/", 50, "wrk-close"),
}

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50=%d p99=%d p999=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)


def cpu_times(cpu):
    """Jiffies of one CPU from /proc/stat: busy (user + kernel + steal), its user
    and kernel (system, irq, softirq) parts, and the total."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = list(map(int, line.split()[1:]))
                total = sum(v[:8])
                return {"busy": total - v[3] - v[4], "user": v[0] + v[1],
                        "kernel": v[2] + v[5] + v[6], "total": total}
    raise RuntimeError("no cpu line")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def spawn(tmp, name, cmd, port):
    """Starts a process logging to TMP/NAME.log and waits until PORT accepts."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, name + ".log"), "w"))
    wait_port(port)
    time.sleep(0.2)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited at start: see {tmp}/{name}.log")
    return p


def ringlb_proxy(setup, name, port, servers, top="", upstream="", binary=None):
    """The command running ringlb (one worker, on CPU 1) as a proxy on `port`
    over `servers`; `top` and `upstream` are extra lines for the top level
    and the `[[upstream]]` table (tables of its own, such as a health check,
    go last in `upstream`). `binary`: another ringlb build (default: this tree's)."""
    listed = ", ".join(f'"{s}"' for s in servers)
    conf = setup.write(f"{name}-proxy.toml", f"""workers = 1
{top}
[[listener]]
listen = "127.0.0.1:{port}"
upstream = "app"
[[upstream]]
name = "app"
servers = [{listed}]
{upstream}
""")
    binary = binary or os.path.join(ROOT, "target/release/ringlb")
    return ["taskset", "-c", "1", binary, "--config", conf]


def haproxy_config(port, server, defaults="", frontend=""):
    """The benchmarks' HAProxy: one thread, keep-alive both ways, no retries;
    `server` is the backend's server line, `defaults` and `frontend` extra lines."""
    extra = lambda lines: "".join(f"\n  {l}" for l in lines.splitlines() if l)
    return f"""
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  retries 0
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s
  http-reuse always{extra(defaults)}
frontend fe
  bind 127.0.0.1:{port}
  default_backend be{extra(frontend)}
backend be
  {server}
"""


class Setup:
    def __init__(self, tmp, upstream_port, nginx_keepalive, ringlb_extra=""):
        self.tmp, self.procs = tmp, {}
        self.ringlb_extra = ringlb_extra
        self.upstream_port = upstream_port
        self.nginx_keepalive = nginx_keepalive

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, name, cmd, port):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.tmp, name + ".log"), "w"))
        self.procs[name] = p
        wait_port(port)
        time.sleep(0.1)
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited at start: see {self.tmp}/{name}.log")
        if PROXY_QUOTA and name != "origin":
            confine(p.pid)
        return p

    def start_origin(self):
        www = os.path.join(self.tmp, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "4k"), "wb") as f:
            f.write(b"a" * 4096)
        with open(os.path.join(www, "64k"), "wb") as f:
            f.write(b"b" * 65536)
        conf = self.write("origin.conf", f"""
daemon off; master_process off; worker_processes 1; pid {self.tmp}/origin.pid;
error_log {self.tmp}/origin-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{ORIGIN_PORT} backlog=4096 reuseport;
    root {www};
    location = / {{ default_type text/plain; return 200 "hello world!\\n"; }}
  }}
}}
""")
        self.start("origin", ["taskset", "-c", "0", "nginx", "-p", self.tmp, "-c", conf], ORIGIN_PORT)

    def start_proxy(self, name):
        port, up = PORTS[name], self.upstream_port
        if name == FLOOR:
            return None
        if name in VARIANTS:
            log = (f'access_log = {{ path = "{self.tmp}/{name}-access.json", format = "json" }}'
                   if name in LOGGING else "")
            conf = self.write(f"{name}.toml", f"""workers = 1
{self.ringlb_extra}
{VARIANTS[name]}
[[listener]]
listen = "127.0.0.1:{port}"
upstream = "origin"
{log}

[[upstream]]
name = "origin"
servers = ["127.0.0.1:{up}"]
max_idle = 1024
""")
            binary = {"ringlb-b": RINGLB_B, "ringlb-c": RINGLB_C}.get(name) or os.path.join(ROOT, "target/release/ringlb")
            cmd = ["taskset", "-c", "1", binary, "--config", conf]
        elif name in ("nginx", "nginx-log"):
            log = (f"access_log {self.tmp}/{name}-access.log combined buffer=64k;"
                   if name in LOGGING else "access_log off;")
            conf = self.write(f"{name}-proxy.conf", f"""
daemon off; master_process off; worker_processes 1; pid {self.tmp}/{name}-proxy.pid;
error_log {self.tmp}/proxy-error.log error; worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
  {log} keepalive_requests 10000000; keepalive_timeout 300s;
  upstream origin {{ server 127.0.0.1:{up}; keepalive {self.nginx_keepalive}; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
            cmd = ["taskset", "-c", "1", "nginx", "-p", self.tmp, "-c", conf]
        else:
            conf = self.write("haproxy.cfg", haproxy_config(port, f"server s1 127.0.0.1:{up}"))
            cmd = ["taskset", "-c", "1", "haproxy", "-db", "-f", conf]
        return self.start(name, cmd, port)

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p:
            p.send_signal(signal.SIGKILL)
            p.wait()
            # A killed io_uring process releases its sockets only when the kernel
            # has torn its rings down: wait until the port can be bound again.
            port = PORTS.get(name, ORIGIN_PORT)
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    with socket.socket() as s:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        s.bind(("127.0.0.1", port))
                    break
                except OSError:
                    time.sleep(0.05)

    def stop_all(self):
        for n in list(self.procs):
            self.stop(n)


def run_wrk(port, path, conns, duration, lua, close=False):
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-s", lua,
           f"http://127.0.0.1:{port}{path}"]
    if close:
        cmd[5:5] = ["-H", "Connection: close"]
    out = sh(cmd, timeout=duration + 60).stdout
    m = re.search(r"RESULT (.*)", out)
    if not m:
        raise RuntimeError("wrk failed: " + out)
    r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["timeout"]
    return r


def run_oha_rate(port, path, conns, duration, rate=10000):
    cmd = ["taskset", "-c", "0", "oha", "--no-tui", "--output-format", "json", "--latency-correction",
           "-c", str(conns), "-q", str(rate), "-z", f"{duration}s", f"http://127.0.0.1:{port}{path}"]
    out = sh(cmd, timeout=duration + 60).stdout
    j = json.loads(out)
    codes = j.get("statusCodeDistribution", {})
    total = sum(int(v) for v in codes.values())
    ok = sum(int(v) for k, v in codes.items() if k.startswith("2"))
    pct = j["latencyPercentiles"]
    return {"requests": total, "rps": j["summary"]["requestsPerSec"], "non2xx": total - ok,
            "errors": sum(int(v) for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k),
            "p50": pct["p50"] * 1e6, "p99": pct["p99"] * 1e6, "p999": pct.get("p99.9", pct["p99"]) * 1e6}


def measure(setup, target, workload, duration, lua):
    path, conns, kind = WORKLOADS[workload]
    port = PORTS[target]
    proc = setup.procs.get(target)
    p0, g0 = cpu_times(1), cpu_times(0)
    if kind == "oha-rate":
        r = run_oha_rate(port, path, conns, duration)
    else:
        r = run_wrk(port, path, conns, duration, lua, close=kind == "wrk-close")
    p1, g1 = cpu_times(1), cpu_times(0)
    per_req = lambda key: (p1[key] - p0[key]) / CLK_TCK * 1e6 / max(1, r["requests"])
    busy_share = lambda a, b: (b["busy"] - a["busy"]) / max(1, b["total"] - a["total"])
    r["cpu_busy"] = busy_share(p0, p1)
    r["cpu_us_per_req"] = per_req("busy")
    # Where the proxy's CPU went, and how busy the origin + load generator core was:
    # the evidence behind each target verdict (targets.py).
    r["cpu_user_us_per_req"] = per_req("user")
    r["cpu_kernel_us_per_req"] = per_req("kernel")
    r["cpu0_busy"] = busy_share(g0, g1)
    r["rss_kb"] = rss_kb(proc.pid) if proc else 0
    return r


def idle_rss_per_conn(setup, target, n=5000):
    """RSS growth per idle keep-alive connection after one request each."""
    port, pid = PORTS[target], setup.procs[target].pid
    socks = []
    before = rss_kb(pid)
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        socks.append(s)
    for s in socks:
        s.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
    time.sleep(0.5)
    after = rss_kb(pid)
    for s in socks:
        s.close()
    return (after - before) * 1024 / n


def svg_chart(results, targets, workloads, path):
    """Two grouped bar charts: req/s and proxy CPU us/req per workload."""
    colors = {"ringlb": "#d9480f", "nginx": "#2b8a3e", "haproxy": "#1971c2", "ringlb-epoll": "#f59f00",
              "ringlb-plain": "#ae3ec9", "ringlb-defer": "#868e96", "ringlb-b": "#f08c00", "ringlb-c": "#2f9e44",
              "ringlb-log": "#e8590c", "nginx-log": "#69db7c"}
    w, h, pad = 900, 300, 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{2 * h + 40}" font-family="sans-serif" font-size="11">']
    for row, (metric, label) in enumerate([("rps", "requests/s (median)"), ("cpu_us_per_req", "proxy CPU us per request (median)")]):
        y0 = row * (h + 20) + 20
        vals = [results[wl][t][metric] for wl in workloads for t in targets if results[wl].get(t)]
        top = max(vals) * 1.15 if vals else 1
        parts.append(f'<text x="{pad}" y="{y0 + 12}" font-size="13">{label}</text>')
        gw = (w - 2 * pad) / max(1, len(workloads))
        bw = gw / (len(targets) + 1)
        for i, wl in enumerate(workloads):
            for j, t in enumerate(targets):
                r = results[wl].get(t)
                if not r:
                    continue
                v = r[metric]
                bh = (h - 60) * v / top
                x = pad + i * gw + j * bw
                y = y0 + h - 30 - bh
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" fill="{colors[t]}"/>')
                parts.append(f'<text x="{x + bw / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="9">{v:,.0f}</text>' if metric == "rps" else
                             f'<text x="{x + bw / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="9">{v:.1f}</text>')
            parts.append(f'<text x="{pad + i * gw + gw / 2 - bw / 2:.1f}" y="{y0 + h - 14}" text-anchor="middle">{wl}</text>')
        for j, t in enumerate(targets):
            parts.append(f'<rect x="{w - 220 + j * 70}" y="{y0 + 2}" width="10" height="10" fill="{colors[t]}"/>'
                         f'<text x="{w - 206 + j * 70}" y="{y0 + 11}">{t}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, order rotated each time (default 3)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of: " + ", ".join(WORKLOADS))
    ap.add_argument("--targets", default="ringlb,nginx,haproxy",
                    help="comma list of: " + ", ".join(PORTS))
    ap.add_argument("--nginx-keepalive", type=int, default=256, help="nginx upstream keepalive (default 256)")
    ap.add_argument("--idle-conns", type=int, default=5000, help="idle keep-alive connections for RSS (0: skip)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    ap.add_argument("--label", default="load")
    ap.add_argument("--ringlb-b", help="another ringlb binary, run as target ringlb-b (A/B comparison)")
    ap.add_argument("--ringlb-c", help="a third ringlb binary, run as target ringlb-c")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the no-proxy (direct) cell of the fixed-rate workloads")
    ap.add_argument("--proxy-quota", type=float,
                    help="run each proxy in a cgroup capped at this %% of a core (e.g. 40): the proxy-bound topology")
    ap.add_argument("--ringlb-extra", default="", help="top-level TOML lines added to ringlb's config, e.g. 'io = \"epoll\"'")
    args = ap.parse_args()
    global RINGLB_B, RINGLB_C, PROXY_QUOTA
    PROXY_QUOTA = args.proxy_quota
    RINGLB_B = args.ringlb_b
    RINGLB_C = args.ringlb_c
    workloads = [w for w in args.workloads.split(",") if w]
    targets = [t for t in args.targets.split(",") if t]
    if shutil.which("oha") is None:
        workloads = [w for w in workloads if WORKLOADS[w][2] != "oha-rate"]
        print("oha not found: skipping fixed-rate workloads", flush=True)

    tmp = tempfile.mkdtemp(prefix="ringlb-bench-")
    lua = os.path.join(tmp, "report.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    def cell_targets(wl):
        floor = WORKLOADS[wl][2] == "oha-rate" and not args.no_floor
        return targets + ([FLOOR] if floor else [])

    results = {wl: {t: None for t in cell_targets(wl)} for wl in workloads}
    raw = {wl: {t: [] for t in cell_targets(wl)} for wl in workloads}
    started = time.time()
    extra = args.ringlb_extra.replace("\\n", "\n")
    live = Setup(tmp, ORIGIN_PORT, args.nginx_keepalive, extra)
    dead = Setup(tmp, DEAD_PORT, args.nginx_keepalive, extra)
    idle = {}
    try:
        live.start_origin()
        for wl in workloads:
            s = dead if WORKLOADS[wl][2] == "wrk-dead" else live
            for rep in range(args.reps):
                cell = cell_targets(wl)
                order = cell[rep % len(cell):] + cell[:rep % len(cell)]
                for t in order:
                    s.start_proxy(t)
                    # warm-up: fill pools, fault in buffers
                    run_wrk(PORTS[t], WORKLOADS[wl][0], WORKLOADS[wl][1], 1, lua)
                    try:
                        r = measure(s, t, wl, args.duration, lua)
                    except Exception as e:  # keep the rest of the matrix
                        print(f"[{time.time() - started:5.0f}s] {wl} {t}: measurement failed: {e}", flush=True)
                        s.stop(t)
                        continue
                    # The repetition this run belongs to: a failed measurement above is
                    # skipped, so a list position is not a repetition (targets.reps()).
                    r["rep"] = rep
                    raw[wl][t].append(r)
                    s.stop(t)
                    print(f"[{time.time() - started:5.0f}s] {wl:10} rep {rep + 1}/{args.reps} {t:8} "
                          f"{r['rps']:9.0f} req/s  {r['cpu_us_per_req']:5.1f} us/req  p99 {r['p99'] / 1000:6.2f} ms  "
                          f"non2xx {r['non2xx']}  errors {r['errors']}", flush=True)
        if args.idle_conns:
            for t in targets:
                live.start_proxy(t)
                run_wrk(PORTS[t], "/", 10, 1, lua)
                idle[t] = idle_rss_per_conn(live, t, args.idle_conns)
                live.stop(t)
                print(f"[{time.time() - started:5.0f}s] idle RSS {t:8} {idle[t]:7.0f} bytes per connection", flush=True)
    finally:
        live.stop_all()
        dead.stop_all()
        if PROXY_QUOTA:
            try:
                os.rmdir(CGROUP)
            except OSError:
                pass

    workloads = [wl for wl in workloads if all(raw[wl][t] for t in cell_targets(wl))]
    for wl in workloads:
        for t in cell_targets(wl):
            runs = raw[wl][t]
            results[wl][t] = {k: statistics.median(r[k] for r in runs) for k in
                              ("rps", "cpu_us_per_req", "cpu_user_us_per_req", "cpu_kernel_us_per_req",
                               "cpu_busy", "cpu0_busy", "p50", "p99", "p999", "rss_kb")}
            results[wl][t]["non2xx"] = sum(r["non2xx"] for r in runs)
            results[wl][t]["errors"] = sum(r["errors"] for r in runs)
            results[wl][t]["requests"] = sum(r["requests"] for r in runs)

    def ratio(wl, t, key):
        if "nginx" not in targets:
            return None
        return targets_report.per_rep(raw, wl, t, "nginx", lambda x: x[key])

    commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = " (dirty)" if sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).stdout.strip() else ""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    versions = {
        "nginx": sh("nginx -v 2>&1").stdout.strip() or sh("nginx -v").stderr.strip(),
        "haproxy": sh("haproxy -v").stdout.splitlines()[0] if shutil.which("haproxy") else "",
        "wrk": sh("wrk -v 2>&1 | head -1").stdout.strip(),
    }
    lines = [f"# Load benchmark {stamp}", "",
             f"- commit: `{commit}`{dirty}", f"- machine: {platform.node()}, {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}",
             f"- command: `benches/load/run.sh {' '.join(sys.argv[1:])}`",
             f"- ringlb extra config: `{args.ringlb_extra or '(none)'}`",
             f"- topology: proxy alone on CPU 1 (1 worker); origin nginx (1 worker) and load generator on CPU 0; loopback",
             f"- peers: {versions['nginx']} (upstream keepalive {args.nginx_keepalive}), {versions['haproxy']} (nbthread 1, retries 0, http-reuse always); {versions['wrk']}",
             f"- {args.reps} repetitions x {args.duration} s per cell, order rotated; medians; ratios are medians of per-repetition ratios to nginx",
             f"- total time {time.time() - started:.0f} s", "",
             "| workload | target | req/s | x nginx | proxy CPU us/req | x nginx | user / kernel us/req | CPU 1 / CPU 0 busy | p50 ms | p99 ms | p99.9 ms | x nginx p99 | RSS MiB | non-2xx | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for wl in workloads:
        for t in cell_targets(wl):
            r = results[wl][t]
            fmt = lambda v: "" if v is None else f"{v:.2f}"
            if t == FLOOR:
                cpu = "(no proxy) | | | "
            else:
                cpu = (f"{r['cpu_us_per_req']:.1f} | {fmt(ratio(wl, t, 'cpu_us_per_req'))} | "
                       f"{r['cpu_user_us_per_req']:.1f} / {r['cpu_kernel_us_per_req']:.1f} | ")
            lines.append(f"| {wl} | {t} | {r['rps']:,.0f} | {fmt(ratio(wl, t, 'rps'))} | {cpu}"
                         f"{r['cpu_busy'] * 100:.0f} % / {r['cpu0_busy'] * 100:.0f} % | "
                         f"{r['p50'] / 1000:.3f} | {r['p99'] / 1000:.3f} | {r['p999'] / 1000:.3f} | "
                         f"{fmt(ratio(wl, t, 'p99'))} | {r['rss_kb'] / 1024:.1f} | {r['non2xx']} | {r['errors']} |")
    if idle:
        lines += ["", f"Idle keep-alive connections ({args.idle_conns}, one request each): RSS growth per connection", "",
                  "| target | bytes/conn |", "|---|---|"] + [f"| {t} | {v:,.0f} |" for t, v in idle.items()]
    lines += ["", "dead-* workloads: the upstream port has no listener; every answer is a 502/503 (counted as non-2xx by design).",
              "User / kernel: the proxy core's time per request split from /proc/stat (kernel = system + irq + softirq; on",
              "loopback the receiving socket's TCP work runs on the sender's core). CPU 0 runs the origin and the load generator.",
              f"`{FLOOR}`: no proxy, the load generator talks to the origin (the latency floor of the fixed-rate cell).", ""]
    lines += targets_report.verdicts(raw, idle, targets)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"{stamp}-{args.label}-{commit}")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines))
    with open(base + ".json", "w") as f:
        json.dump({"raw": raw, "idle": idle, "args": vars(args)}, f, indent=1)
    svg_chart(results, [t for t in targets if t != FLOOR], workloads, base + ".svg")
    print("\n".join(lines))
    print(f"\nwrote {base}.md, .json, .svg")


if __name__ == "__main__":
    main()
