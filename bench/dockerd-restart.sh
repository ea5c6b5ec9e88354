#!/usr/bin/env bash
# bench/dockerd-restart.sh: failed requests while dockerd restarts (a `dnf upgrade docker`,
# unattended-upgrades) under `blog-agent run` in switch mode, without and with dockerd's
# live-restore (bench/dockerd_restart.py). Prints a Markdown table for docs/BENCHMARKS.md;
# raw results in .stack/bench-dockerd-restart/.
#
#   bash bench/dockerd-restart.sh      # BENCH_RUNS restarts per mode (default 3), BENCH_AGENT
#
# Restarts the machine's dockerd (every container on it stops without live-restore): it refuses
# to start while tests run, and puts the plain dockerd the test suite expects back at the end,
# however it ends. About 3 minutes on 2 cores. Needs root and the local stack (started here:
# scripts/stack-up.sh is idempotent). Not part of `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/stack-env.sh
agent=${BENCH_AGENT:-$root/target/x86_64-unknown-linux-musl/release/blog-agent}
if [ ! -x "$agent" ]; then
  echo "bench: no binary at $agent; build it with scripts/package.sh (or set BENCH_AGENT)" >&2
  exit 1
fi
if pgrep -f 'cargo-nextest|cargo nextest' >/dev/null; then
  echo "bench: tests are running (cargo nextest): restarting dockerd would disturb them; try again later" >&2
  exit 1
fi
bash scripts/stack-up.sh
work=$BLOG_AGENT_STACK_DIR/bench-dockerd-restart
rm -rf "$work" && mkdir -p "$work"

plain_dockerd() {
  if [ "$(docker info -f '{{.LiveRestoreEnabled}}' 2>/dev/null)" = false ]; then return 0; fi
  if pid=$(cat /var/run/docker.pid 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 900); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  BLOG_AGENT_DOCKERD_FLAGS='' bash scripts/stack-up.sh
}
trap 'plain_dockerd || echo "bench: could not put the plain dockerd back: run scripts/stack-up.sh" >&2' EXIT

started=$SECONDS
BENCH_AGENT=$agent /usr/bin/python3 bench/dockerd_restart.py "$work"
echo "bench: done in $((SECONDS - started)) s (agent: $("$agent" --version); logs and results.json in $work)" >&2
