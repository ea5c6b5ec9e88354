#!/usr/bin/env bash
# bench/swap.sh: the release swap under load, blog-agent `[traffic] mode = "switch"` against
# `mode = "publish"` and the user-data script (bench/baseline.sh); renders the section "Release
# swap under load: switch vs publish vs script" of docs/BENCHMARKS.md and
# docs/benchmarks-swap-switch.png (bench/swap_report.py).
#
#   BENCH_AGENT=target/release/blog-agent bash bench/swap.sh                  # every case, 20 runs
#   BENCH_AGENT=... bash bench/swap.sh --cases busybox-loopback --runs 20      # some cases
#   bash bench/swap.sh --report-only                                           # re-render
#
# Cases (bench/swap.py CASES): busybox-loopback, busybox-loopback-arp1000 (switch only, docker0
# ARP at the kernel default), busybox-loopback-stop10s (switch only, a 10 s stop grace),
# apache-loopback (new connections + a keep-alive connection + /cgi-bin/slow in flight),
# apache-loopback-noslow (the same without the slow requests), busybox-veth and apache-veth (the client in a network namespace of its own over a veth pair).
# Each case's results go to .stack/bench-swap/results/swap-CASE.json (a re-run of a case
# replaces its file; the report reads all of them).
#
# Needs root and the local stack (started here: scripts/stack-up.sh is idempotent), the Apache
# test image (scripts/build-apache-image.sh, run here; cached). Touches only: containers labelled
# blog-agent-bench=1, images and tags of 127.0.0.1:5000/blog-bench, the S3 bucket blog-bench,
# netfilter chains BENCH-SW*, namespaces bench-sw-* and veths bsw*h (all removed by name at
# the end, even on failure), docker0's ARP retransmit time and route_localnet (put back as found).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source bench/lib.sh
work=$BLOG_AGENT_STACK_DIR/bench-swap
results=$work/results
doc=docs/BENCHMARKS.md
plot=docs/benchmarks-swap-switch.png

if [ "${1:-}" = "--report-only" ]; then
  ensure_venv
  "$venv/bin/python" bench/swap_report.py "$results" "$doc" "$plot"
  exit 0
fi
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--cases busybox-loopback,apache-loopback,busybox-veth,apache-veth,apache-loopback-noslow,busybox-loopback-arp1000,busybox-loopback-stop10s)
agent=${BENCH_AGENT:-$root/target/release/blog-agent}
if [ ! -x "$agent" ]; then
  echo "bench: no binary at $agent; build it (cargo build --release) or set BENCH_AGENT" >&2
  exit 1
fi
started=$SECONDS
bash scripts/stack-up.sh
bash scripts/build-apache-image.sh >/dev/null
ensure_venv
mkdir -p "$work" "$results"
find "$work" -maxdepth 1 \( -name 'swap-*' -o -name 'proxy.*' \) -type f -delete

cleanup() {
  [ -z "${proxy_pid:-}" ] || kill "$proxy_pid" 2>/dev/null || true
  BENCH_AGENT=$agent BENCH_WORK=$work BENCH_PROXY_PORT=${proxy_port:-0} BENCH_PROXY_LOG=$work/proxy.log \
    "$venv/bin/python" bench/swap.py --cleanup || echo "bench: cleanup left something: see above" >&2
}
trap cleanup EXIT
start_proxy "$work"

PATH=$venv/bin:$PATH \
BENCH_AGENT=$agent BENCH_WORK=$work BENCH_PROXY_PORT=$proxy_port BENCH_PROXY_LOG=$work/proxy.log \
  "$venv/bin/python" bench/swap.py "$results" "${args[@]}"
"$venv/bin/python" bench/swap_report.py "$results" "$doc" "$plot"
echo "bench: done in $((SECONDS - started)) s: $doc, $plot (raw results and logs: $work)" >&2
