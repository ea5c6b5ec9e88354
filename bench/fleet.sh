#!/usr/bin/env bash
# bench/fleet.sh: a fleet of real blog-agents on this machine, checked against the 1,000-host
# model in docs/fleet.md; writes .stack/bench/fleet-results.json and the "Simulation at scale"
# section of docs/fleet.md.
#
#   bash bench/fleet.sh                 # the full run (about 4 minutes)
#   bash bench/fleet.sh --report-only   # re-render the section from the last results
#
# Environment: FLEET_N (hosts, default 120: what a 2-core machine holds with room to spare; see
# the section), FLEET_INTERVAL (`[reconcile] interval`, default 5s), FLEET_SPREAD (`[rollout]
# spread`, default 60s), FLEET_IDLE (idle window, default 60s), BENCH_AGENT (binary, default the
# static release binary scripts/package.sh builds).
#
# Needs root and the local stack (started here: scripts/stack-up.sh is idempotent). Uses the
# bench venv (.stack/bench-venv, bench/lib.sh). Touches only containers labelled
# blog-agent-bench=fleet, images of the repository blog-fleet-bench, the S3 bucket
# blog-fleet-bench and .stack/bench/fleet/; all removed (the agents stopped) at the start and the
# end, failures included. Everything is on 127.0.0.1. Not part of `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source bench/lib.sh
work=$BLOG_AGENT_STACK_DIR/bench/fleet
results=$BLOG_AGENT_STACK_DIR/bench/fleet-results.json
trials=$BLOG_AGENT_STACK_DIR/bench/fleet-sizes.json  # the last run of each FLEET_N, for the sizing table
doc=docs/fleet.md
repo=$BLOG_AGENT_TEST_REGISTRY/blog-fleet-bench

if [ "${1:-}" = "--report-only" ]; then
  ensure_venv
  "$venv/bin/python" bench/fleet.py --report "$results" "$doc" "$trials"
  exit 0
fi

started=$SECONDS
agent_binary fleet
bash scripts/stack-up.sh
ensure_venv

cleanup() {
  # The agents first (by the pids the run wrote), or they would put their containers back.
  if [ -s "$work/agents.pid" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$work/agents.pid"
    for _ in $(seq 100); do
      alive=0
      while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$work/agents.pid"
      [ "$alive" = 0 ] && break
      sleep 0.2
    done
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$work/agents.pid"
    rm -f "$work/agents.pid"
  fi
  ids=$(docker ps -aq --filter label=blog-agent-bench=fleet)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  imgs=$(docker images -q --filter "reference=$repo" | sort -u)
  [ -z "$imgs" ] || docker rmi -f $imgs >/dev/null 2>&1 || true
  rm -rf "$work"/host-*/state  # the agent logs and configs stay for reading
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work"

FLEET_WORK=$work FLEET_AGENT=$agent FLEET_TRIALS=$trials FLEET_N=${FLEET_N:-120} FLEET_INTERVAL=${FLEET_INTERVAL:-5s} \
FLEET_SPREAD=${FLEET_SPREAD:-60s} FLEET_IDLE=${FLEET_IDLE:-60s} \
  "$venv/bin/python" bench/fleet.py "$results"
"$venv/bin/python" bench/fleet.py --report "$results" "$doc" "$trials"
echo "fleet: done in $((SECONDS - started)) s: $doc (raw results: $results, logs: $work)" >&2
