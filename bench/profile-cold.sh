#!/usr/bin/env bash
# bench/profile-cold.sh: times every step of blog-agent's cold `sync` (empty Docker -> first
# HTTP 200): each Docker Engine API call (through bench/dockertrace.py), each S3/ECR request
# (through bench/proxy.py) and the agent's --debug log, then a per-phase median over
# PROFILE_RUNS runs (default 5). Same isolation as bench/run.sh: label blog-agent-bench=1,
# repository 127.0.0.1:5000/blog-bench, loopback only.
#   bash bench/profile-cold.sh
# (bench/profile-swap.sh runs bench/profile_swap.py the same way: the cut-over of a release swap.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source bench/lib.sh
work=$BLOG_AGENT_STACK_DIR/bench-profile
agent_binary profile
bash scripts/stack-up.sh
ensure_venv
rm -rf "$work"; mkdir -p "$work"
trap '[ -z "${proxy_pid:-}" ] || kill "$proxy_pid" 2>/dev/null || true' EXIT
start_proxy "$work"
PATH=$venv/bin:$PATH BENCH_AGENT=$agent BENCH_WORK=$work BENCH_PROXY_PORT=$proxy_port \
BENCH_PROXY_LOG=$work/proxy.log "$venv/bin/python" "bench/${PROFILE_SCRIPT:-profile_cold.py}" "$@"
