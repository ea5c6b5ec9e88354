#!/usr/bin/env bash
# bench/run.sh: benchmarks blog-agent against the user-data script hosts use today
# (bench/baseline.sh) on the local stack, and writes docs/BENCHMARKS.md and
# docs/benchmarks-swap-gap.png.
#
#   bash bench/run.sh                 # the full run (about 12 minutes, 5 minutes of it idle)
#   bash bench/run.sh --report-only   # re-render the docs from the last results
#
# Environment: BENCH_RUNS (runs per figure, default 5, at least 5 for the docs),
# BENCH_IDLE_SECONDS (idle footprint window, default 300), BENCH_AGENT (binary to measure,
# default the static release binary scripts/package.sh builds).
#
# Sets docker0's ARP retransmit time (net.ipv4.neigh.docker0.retrans_time_ms) to what the
# package installs, and to the kernel default for part of the swap stage; puts the value it found
# back at the end. blog-agent runs in its default `[traffic] mode = "switch"` with the chain
# prefix BENCH-RUN (removed by name at the end, with docker0's route_localnet put back as found),
# except the swap stage's publish-mode rows. The switch-vs-publish-vs-script swap under load is
# bench/swap.sh's.
#
# Needs root and the local stack (started here: scripts/stack-up.sh is idempotent). Installs
# awscli, boto3 and matplotlib from PyPI into .stack/bench-venv. Touches only containers
# labelled blog-agent-bench=1 and images of 127.0.0.1:5000/blog-bench (removed at the start and
# the end), the S3 bucket blog-bench, and its own counting proxy. Everything is on 127.0.0.1.
# Not part of `make test`: there are no timing assertions in the test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source bench/lib.sh
work=$BLOG_AGENT_STACK_DIR/bench
results=$work/results.json
doc=docs/BENCHMARKS.md
plot=docs/benchmarks-swap-gap.png

if [ "${1:-}" = "--report-only" ]; then
  ensure_venv
  "$venv/bin/python" bench/report.py "$results" "$doc" "$plot"
  exit 0
fi

started=$SECONDS
agent_binary bench
if [ "${BENCH_RUNS:-5}" -lt 5 ]; then
  echo "bench: note: BENCH_RUNS=${BENCH_RUNS} (< 5): fine for a try, not for docs/BENCHMARKS.md" >&2
fi
bash scripts/stack-up.sh
if [ ! -w /proc/sys/net/ipv4/neigh/docker0/retrans_time_ms ]; then
  echo "bench: cannot set docker0's ARP retransmit time (needs root, docker0, writable /proc/sys)" >&2
  exit 1
fi
ensure_venv
rm -rf "$work"
mkdir -p "$work"

cleanup() {
  [ -z "${proxy_pid:-}" ] || kill "$proxy_pid" 2>/dev/null || true
  ids=$(docker ps -aq --filter label=blog-agent-bench=1)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  # The agent's chains (switch mode, prefix BENCH-RUN), by name, if a killed run left them.
  BENCH_AGENT=$agent BENCH_WORK=$work BENCH_PROXY_PORT=${proxy_port:-0} BENCH_PROXY_LOG=$work/proxy.log \
    "$venv/bin/python" bench/bench.py --cleanup || echo "bench: cleanup failed: see above" >&2
}
trap cleanup EXIT
start_proxy "$work"

PATH=$venv/bin:$PATH \
BENCH_AGENT=$agent BENCH_WORK=$work BENCH_PROXY_PORT=$proxy_port BENCH_PROXY_LOG=$work/proxy.log \
  "$venv/bin/python" bench/bench.py "$results"
"$venv/bin/python" bench/report.py "$results" "$doc" "$plot"
echo "bench: done in $((SECONDS - started)) s: $doc, $plot (raw results and logs: $work)" >&2
