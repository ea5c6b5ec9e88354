#!/usr/bin/env bash
# bench/publish.sh: what one `blog-agent publish` costs, on the local stack: wall time per
# publish (median, min, max over BENCH_RUNS alternating publishes of two releases, each one a
# real write) and the S3 and ECR calls it makes, counted by bench/proxy.py in front of moto.
#
#   bash bench/publish.sh            # BENCH_RUNS (default 20), BENCH_AGENT (binary to measure)
#
# Needs root and the local stack (started here: scripts/stack-up.sh is idempotent). Touches
# only the bucket blog-bench-publish, the ECR repository and registry repository
# blog-bench-publish, and its own counting proxy; everything is on 127.0.0.1. Prints a Markdown
# table for docs/BENCHMARKS.md. Not part of `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/stack-up.sh >/dev/null
source bench/lib.sh
agent_binary bench/publish.sh
ensure_venv
runs=${BENCH_RUNS:-20}
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-publish.XXXXXX")
bucket=blog-bench-publish
repo=blog-bench-publish
trap 'kill "$proxy_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

# Two releases, pushed to the registry and (their exact manifests) to moto's ECR.
shas=()
for _ in 1 2; do
  sha=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
  bash scripts/publish-image.sh "$sha" good "$BLOG_AGENT_TEST_REGISTRY" "$repo" >/dev/null
  push_release "$sha" "$repo" "$bucket"
  shas+=("$sha")
done

cat >"$work/config.toml" <<EOF
[release]
bucket = "$bucket"
[image]
repository = "$BLOG_AGENT_TEST_REGISTRY/$repo"
[agent]
state_dir = "$work/state"
EOF

start_proxy "$work"
export AWS_ENDPOINT_URL="http://127.0.0.1:$proxy_port"
times=()
for i in $(seq "$runs"); do
  sha=${shas[$((i % 2))]}
  : >"$work/proxy.log"
  start=$(date +%s%N)
  "$agent" --config "$work/config.toml" --env staging publish "$sha" 2>>"$work/publish.err"
  end=$(date +%s%N)
  times+=($(((end - start) / 1000000)))
  cp "$work/proxy.log" "$work/calls.log"
done

median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
min=$(printf '%s\n' "${times[@]}" | sort -n | head -1)
max=$(printf '%s\n' "${times[@]}" | sort -n | tail -1)
calls=$(count_calls "$work/calls.log")
echo "| publish (each a real write, alternating two releases) | runs | median | min | max | calls per publish |"
echo "|---|---|---|---|---|---|"
echo "| \`blog-agent --env staging publish SHA\` against moto on 127.0.0.1 | $runs | ${median} ms | ${min} ms | ${max} ms | $calls |"
grep -c "published" "$work/publish.err" | xargs -I{} echo "($runs publishes, {} reported published)" >&2
