#!/usr/bin/env bash
# make demo: a daemon, an app of 3 replicas on 127.0.0.1:8080, the spread of requests, a scale
# to 5, `lbctl status`. Cleans up at the end unless DEMO_KEEP=1 (then `lbctl rm demo` and
# `kill $(cat /run/lbctl/demo-daemon.pid)` do it by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
LBCTL=.venv/bin/lbctl
PORT=${DEMO_PORT:-8080}
export LBCTL_SOCKET=/run/lbctl/lbctl.sock
LOG=/tmp/lbctl-demo-daemon.log

# One lbctl owns the host's LBCTL- chains: wait for a test run that holds them.
mkdir -p /run/lock && exec 9>/run/lock/lbctl-e2e.lock && flock 9

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
requests() {
  for _ in $(seq 1 "$1"); do curl -s --max-time 2 -H 'Connection: close' "http://127.0.0.1:$PORT/" || echo "(failed)"; done \
    | sort | uniq -c | sed 's/^/   /'
}

started_here=0
if ! $LBCTL status >/dev/null 2>&1; then
  say "starting lbctl daemon (log: $LOG)"
  mkdir -p /run/lbctl
  setsid nohup $LBCTL daemon >"$LOG" 2>&1 &
  echo $! > /run/lbctl/demo-daemon.pid
  started_here=1
  for _ in $(seq 1 100); do $LBCTL status >/dev/null 2>&1 && break; sleep 0.2; done
fi

cleanup() {
  if [ "${DEMO_KEEP:-0}" = 1 ]; then
    say "left running: lbctl status; lbctl rm demo; kill \$(cat /run/lbctl/demo-daemon.pid)"
    return
  fi
  say "cleaning up"
  $LBCTL rm demo 2>/dev/null || true
  if [ "$started_here" = 1 ]; then kill "$(cat /run/lbctl/demo-daemon.pid)" 2>/dev/null || true; fi
}
trap cleanup EXIT

$LBCTL doctor | sed 's/^/   /' || true

say "lbctl run demo --image lbctl/demo -p 127.0.0.1:$PORT:8080 --replicas 3"
$LBCTL run demo --image lbctl/demo:latest -p "127.0.0.1:$PORT:8080" --replicas 3
say "30 requests to 127.0.0.1:$PORT, one new connection each"
requests 30
say "lbctl scale demo=5"
$LBCTL scale demo=5
say "50 requests to 127.0.0.1:$PORT"
requests 50
say "lbctl status"
$LBCTL status
