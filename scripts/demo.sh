#!/usr/bin/env bash
# The main job on the local stack: publish two versions of the blog the way CI does (image in
# the registry, SHA in S3 with SSE-KMS), then let `blog-agent sync` bring the host to each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/stack-up.sh
source scripts/stack-env.sh
port=${DEMO_PORT:-8080}
dir=$BLOG_AGENT_STACK_DIR/demo
mkdir -p "$dir"

echo "== building blog-agent" >&2
cargo build --quiet
agent=$PWD/target/debug/blog-agent

cat >"$dir/config.toml" <<TOML
[environment]
name = "staging"
[release]
bucket = "blog-demo"
[image]
repository = "$BLOG_AGENT_TEST_REGISTRY/blog"
[container]
name = "blog-demo"
ports = ["127.0.0.1:$port:80"]
labels = { "blog-agent-demo" = "1" }
[health]
url = "http://127.0.0.1:$port/"
[agent]
state_dir = "$dir/state"
[traffic]
# The traffic switch (the default mode) with chains of the demo's own, so scripts/stack-down.sh
# can remove them by name.
chains = "BLOG-AGENT-DEMO"
TOML

v1=$(printf 'demo version 1' | sha1sum | cut -c1-40)
v2=$(printf 'demo version 2' | sha1sum | cut -c1-40)
echo "== CI publishes two versions: $v1 and $v2" >&2
bash scripts/publish-image.sh "$v1" >/dev/null
bash scripts/publish-image.sh "$v2" >/dev/null

for sha in "$v1" "$v2"; do
  echo "== CI writes $sha to s3://blog-demo/staging/stagebuild.txt" >&2
  "$BLOG_AGENT_STACK_DIR/venv/bin/python" scripts/put-release.py blog-demo staging/stagebuild.txt "$sha" >/dev/null
  echo "== blog-agent sync" >&2
  "$agent" --config "$dir/config.toml" sync
  echo "== http://127.0.0.1:$port/ serves:" >&2
  curl -fsS "http://127.0.0.1:$port/"
done
echo "== a second sync changes nothing" >&2
"$agent" --config "$dir/config.toml" sync
echo "== the host port is DNATed to the container (no published port):" >&2
iptables -w 5 -t nat -S BLOG-AGENT-DEMO-DNAT | grep DNAT >&2 || true
echo "The blog is served at http://127.0.0.1:$port/ (container blog-demo). Stop it with: scripts/stack-down.sh" >&2
