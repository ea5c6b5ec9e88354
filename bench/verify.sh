#!/usr/bin/env bash
# bench/verify.sh: what verifying a release costs a host, on the local stack. The release object
# of a versioned bucket holds BENCH_HISTORY signed releases; `blog-agent status --json` (which
# reads and verifies the release object exactly as `run` does when it changes, then reads its
# halt) runs BENCH_RUNS times without `[release] public_key` and BENCH_RUNS times with it.
# Prints, for each, the wall time per run (median, min, max) and the S3 calls one run makes,
# counted by bench/proxy.py in front of moto.
#
#   bash bench/verify.sh            # BENCH_RUNS (default 20), BENCH_HISTORY (default 5), BENCH_AGENT
#
# Needs root and the local stack (started here). Touches only its bucket blog-bench-verify-PID, the
# ECR and registry repository blog-bench-verify and its own proxy, all on 127.0.0.1. Prints a
# Markdown table for docs/BENCHMARKS.md. Not part of `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/stack-up.sh >/dev/null
source bench/lib.sh
agent_binary bench/verify.sh
ensure_venv
runs=${BENCH_RUNS:-20}
history=${BENCH_HISTORY:-5}
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-verify.XXXXXX")
bucket=blog-bench-verify-$$ # a fresh bucket: versions of earlier runs would count
repo=blog-bench-verify
trap 'kill "$proxy_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

minisign -G -W -f -p "$work/ci.pub" -s "$work/ci.key" >/dev/null
public=$(sed -n 2p "$work/ci.pub")
shas=()
for _ in $(seq "$history"); do
  sha=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
  bash scripts/publish-image.sh "$sha" good "$BLOG_AGENT_TEST_REGISTRY" "$repo" >/dev/null
  push_release "$sha" "$repo" "$bucket"
  shas+=("$sha")
done
"$venv/bin/aws" --endpoint-url "$AWS_ENDPOINT_URL" s3api put-bucket-versioning --bucket "$bucket" \
  --versioning-configuration Status=Enabled

config() { # config FILE [PUBLIC_KEY]
  cat >"$1" <<EOF
[release]
bucket = "$bucket"
${2:+public_key = \"$2\"}
[image]
repository = "$BLOG_AGENT_TEST_REGISTRY/$repo"
[container]
name = "blog-bench-verify"
[agent]
state_dir = "$work/state"
EOF
}
config "$work/open.toml"
config "$work/signed.toml" "$public"
for sha in "${shas[@]}"; do
  BLOG_AGENT_SIGNING_KEY=$work/ci.key "$agent" --config "$work/signed.toml" --env staging publish "$sha" 2>/dev/null
  sleep 1 # one signed second apart: each a newer publication
done

start_proxy "$work"
export AWS_ENDPOINT_URL="http://127.0.0.1:$proxy_port"
measure() { # measure CONFIG LABEL
  local times=() start end
  for _ in $(seq "$runs"); do
    : >"$work/proxy.log"
    start=$(date +%s%N)
    "$agent" --config "$1" --env staging status --json >/dev/null 2>&1 || true
    end=$(date +%s%N)
    times+=($(((end - start) / 1000000)))
  done
  local sorted median
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  median=$(echo "$sorted" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  echo "| $2 | $runs | ${median} ms | $(echo "$sorted" | head -1) ms | $(echo "$sorted" | tail -1) ms | $(count_calls "$work/proxy.log") |"
}
echo "| \`status --json\`, $history signed versions in the history | runs | median | min | max | S3 calls per run |"
echo "|---|---|---|---|---|---|"
measure "$work/open.toml" "no \`[release] public_key\`"
measure "$work/signed.toml" "\`[release] public_key\` set: signature, replay rule (history), halt"
