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
source scripts/stack-env.sh
export AWS_EC2_METADATA_DISABLED=true  # loopback only: no SDK ever falls back to IMDS
venv=$BLOG_AGENT_STACK_DIR/bench-venv
work=$BLOG_AGENT_STACK_DIR/bench-profile
agent=${BENCH_AGENT:-$root/target/x86_64-unknown-linux-musl/release/blog-agent}
[ -x "$agent" ] || { echo "profile: no binary at $agent" >&2; exit 1; }
bash scripts/stack-up.sh
"$venv/bin/python" -c 'import awscli, boto3' 2>/dev/null || { python3 -m venv "$venv"; "$venv/bin/pip" install -q awscli boto3 matplotlib; }
rm -rf "$work"; mkdir -p "$work"
: >"$work/proxy.log"
setsid "$venv/bin/python" bench/proxy.py "$MOTO_PORT" "$work/proxy.log" "$work/proxy.port" >"$work/proxy.err" 2>&1 </dev/null &
proxy_pid=$!
trap 'kill $proxy_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$work/proxy.port" ] && break; sleep 0.1; done
PATH=$venv/bin:$PATH BENCH_AGENT=$agent BENCH_WORK=$work BENCH_PROXY_PORT=$(cat "$work/proxy.port") \
BENCH_PROXY_LOG=$work/proxy.log "$venv/bin/python" "bench/${PROFILE_SCRIPT:-profile_cold.py}" "$@"
