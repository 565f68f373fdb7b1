#!/usr/bin/env python3
"""Binary upgrade under load: how many connections each way of replacing a
running ringlb loses. wrk opens a new connection per request (-c50, Connection:
close: the accept queues are never empty) against a ringlb listener that
answers itself, and the running ringlb is replaced every 2 seconds, 4 times
per run:

- handover: `ringlb --upgrade` takes the sockets over `upgrade_socket`
  (SCM_RIGHTS); the old process drains and exits.
- overlap: a new ringlb binds the same port beside the old one (SO_REUSEPORT,
  with RINGLB_BENCH_SHARE_PORT to skip the one-instance guard), then the old
  one gets SIGTERM: the connections queued on its sockets are reset.
- restart: SIGTERM, then a new ringlb (what a plain restart does).

  benches/load/upgrade.py [--reps 3]   (uses target/release/ringlb)
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RINGLB = os.path.join(ROOT, "target/release/ringlb")
PORT = 18290


def start(conf, extra=(), env=None):
    p = subprocess.Popen(["taskset", "-c", "1", RINGLB, "--config", conf, *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})})
    # Ready once every worker logged its driver.
    deadline = time.time() + 10
    up = 0
    while up < 2:
        line = p.stderr.readline()
        if not line or time.time() > deadline:
            raise SystemExit(f"ringlb did not start: {line}")
        up += " driver, pinned to" in line
    # Keep draining stderr so the process never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p


def swap(mode, old, conf):
    if mode == "handover":
        new = start(conf, ["--upgrade"])
        old.wait(timeout=30)
    elif mode == "overlap":
        new = start(conf, env={"RINGLB_BENCH_SHARE_PORT": "1"})
        old.send_signal(signal.SIGTERM)
        old.wait(timeout=30)
    else:
        old.send_signal(signal.SIGTERM)
        old.wait(timeout=30)
        new = start(conf)
    return new


def run(mode, tmp):
    conf = os.path.join(tmp, f"{mode}.toml")
    sock = os.path.join(tmp, "upgrade.sock")
    with open(conf, "w") as f:
        f.write(f'workers = 2\ndrain_timeout = "5s"\n'
                + (f'upgrade_socket = "{sock}"\n' if mode == "handover" else "")
                + f'[[listener]]\nlisten = "127.0.0.1:{PORT}"\nstatus = 200\nbody = "ok\\n"\n')
    proc = start(conf)
    wrk = subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c50", "-d10s", "-H", "Connection: close",
                            f"http://127.0.0.1:{PORT}/"], stdout=subprocess.PIPE, text=True)
    for _ in range(4):
        time.sleep(2)
        proc = swap(mode, proc, conf)
    out = wrk.communicate(timeout=60)[0]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    sock_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = [int(x) for x in sock_err.groups()] if sock_err else [0, 0, 0, 0]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    reqs = re.search(r"(\d+) requests in", out)
    return {"requests": int(reqs.group(1)) if reqs else 0, "connect": errors[0], "read": errors[1],
            "write": errors[2], "timeout": errors[3], "non2xx": int(non2xx.group(1)) if non2xx else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ringlb-upgrade-")
    rows = []
    for rep in range(args.reps):
        for mode in ("handover", "overlap", "restart"):
            r = run(mode, tmp)
            r["failed"] = r["connect"] + r["read"] + r["write"] + r["timeout"] + r["non2xx"]
            rows.append((mode, r))
            print(f"rep {rep + 1} {mode:9} {r}", flush=True)
    print("\n| mode | requests (median) | failed per run (each rep) | of which connect / read / write / timeout |")
    print("|---|---|---|---|")
    for mode in ("handover", "overlap", "restart"):
        rs = [r for m, r in rows if m == mode]
        med = sorted(r["requests"] for r in rs)[len(rs) // 2]
        fails = ", ".join(str(r["failed"]) for r in rs)
        parts = "; ".join(f'{r["connect"]}/{r["read"]}/{r["write"]}/{r["timeout"]}' for r in rs)
        print(f"| {mode} | {med:,} | {fails} | {parts} |")


if __name__ == "__main__":
    sys.exit(main())
