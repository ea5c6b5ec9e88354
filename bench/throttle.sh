#!/usr/bin/env bash
# bench/throttle.sh: many real agents through a throttling proxy in front of moto (ECR
# ThrottlingException, S3 SlowDown), counting each host's calls: the per-host figures of the
# throttling section of docs/fleet.md. Writes .stack/bench/throttle-results.json and prints it.
#
#   bash bench/throttle.sh
#
# Environment: THROTTLE_N (agents per group, default 20), THROTTLE_INTERVAL (`[reconcile]
# interval`, default 2s), THROTTLE_WINDOW (seconds of throttling, default 180), BENCH_AGENT
# (binary, default target/debug/blog-agent: the retry policy, not the build, sets the counts).
#
# Needs the local stack (scripts/stack-up.sh) and the bench venv (bench/lib.sh). Starts no
# container (no agent gets an image while the throttle lasts); touches the S3 buckets
# blog-throttle-ecr and blog-throttle-s3 in moto and .stack/bench/throttle/. Everything is on
# 127.0.0.1. Takes THROTTLE_WINDOW plus a few seconds. Not part of `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source bench/lib.sh
export BENCH_AGENT=${BENCH_AGENT:-$root/target/debug/blog-agent}
agent_binary throttle
ensure_venv
work=$BLOG_AGENT_STACK_DIR/bench/throttle
rm -rf "$work"
mkdir -p "$work"
"$venv/bin/python" bench/throttle.py "$agent" "$work" "$BLOG_AGENT_STACK_DIR/bench/throttle-results.json"
