#!/usr/bin/env bash
# One command for the load benchmark: installs what it needs (Debian: wrk, nginx,
# haproxy; crates.io: oha), builds ringlb in release mode, then runs the matrix
# with ringlb, nginx and HAProxy in the same run and topology (run.py --help).
# `run.sh overload` and `run.sh failover` run those scenarios (overload.py, failover.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts the packaged daemons where systemd runs; they must not share the CPUs.
(systemctl stop nginx haproxy 2>/dev/null || true)
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet
# `run.sh overload|failover|conn_cap ...` run those scenarios instead
# of the matrix (each script's --help says what it measures).
case "${1:-}" in
  overload|failover|conn_cap) script="$1"; shift; exec python3 "benches/load/$script.py" "$@" ;;
esac
exec python3 benches/load/run.py "$@"
