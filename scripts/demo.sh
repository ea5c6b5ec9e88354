#!/usr/bin/env bash
# `make demo`: the real flow on the local stack, as CI and a host run it.
#   1. a minisign key pair, as made once per environment (the hosts' [release] public_key);
#   2. CI pushes two versions of the blog and signs and publishes the first (`blog-agent
#      publish`); the agent runs as the service (`blog-agent run`, in the background);
#   3. CI publishes version 2 while a client sends a request every 10 ms: the swap is measured
#      (failed requests of all sent);
#   4. an unsigned publish is refused; a signed release whose image answers 500 is refused by
#      the host (the old version keeps serving, the host halts it for the fleet);
#   5. `status`, then `rollback`, then `status` again.
# Then it cleans up: the agent and the client stopped, the demo's containers (label
# blog-agent-demo), netfilter chains (BLOG-AGENT-DEMO-*), images, bucket and repository removed.
# DEMO_KEEP=1 leaves the agent and the blog running (stop them with scripts/stack-down.sh).
# DEMO_PORT (default 8080): the blog's port on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$SECONDS
bash scripts/stack-up.sh
source scripts/stack-env.sh
port=${DEMO_PORT:-8080}
dir=$BLOG_AGENT_STACK_DIR/demo
py=${BLOG_AGENT_VENV:-$BLOG_AGENT_STACK_DIR/venv}/bin/python
bucket=blog-demo
repo=blog-demo
env=staging
label=blog-agent-demo
chains=BLOG-AGENT-DEMO

say() { printf '\n== %s\n' "$*" >&2; }
die() { echo "demo: $*" >&2; exit 1; }
# wait_for WHAT SECONDS CMD...: polls CMD every 0.2 s until it succeeds, or fails naming WHAT.
wait_for() {
  local what=$1 secs=$2 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not happen within $secs s (agent log: $dir/agent.log)"
    sleep 0.2
  done
}
# The agent's log lines since the last call, indented.
shown=0
agent_log() {
  local total
  total=$(wc -l <"$dir/agent.log")
  [ "$total" -le "$shown" ] || sed -n "$((shown + 1)),${total}p" "$dir/agent.log" | cut -c1-250 | sed 's/^/   agent| /' >&2
  shown=$total
}
serves() { curl -fsS --max-time 2 "http://127.0.0.1:$port/" 2>/dev/null | grep -q "version $1"; }

agent_pid='' client_pid=''
remove_chains() {
  for table in nat filter; do
    { iptables -w 5 -t "$table" -S 2>/dev/null || true; } | { grep -E -- "-j $chains-(DNAT|POST|FWD|IN)\$" || true; } |
      sed 's/^-A /-D /' | while read -r rule; do eval "iptables -w 5 -t $table $rule" >/dev/null 2>&1 || true; done
    for chain in DNAT POST FWD IN; do
      iptables -w 5 -t "$table" -F "$chains-$chain" >/dev/null 2>&1 &&
        iptables -w 5 -t "$table" -X "$chains-$chain" >/dev/null 2>&1 || true
    done
  done
}
cleanup() {
  local rc=$?
  [ -z "$client_pid" ] || kill "$client_pid" 2>/dev/null || true
  if [ "${DEMO_KEEP:-0}" = 1 ] && [ $rc -eq 0 ]; then
    echo "demo: DEMO_KEEP=1: the agent (pid $agent_pid) and the blog stay; stop them with: kill $agent_pid; bash scripts/stack-down.sh" >&2
    return
  fi
  if [ -n "$agent_pid" ]; then
    # SIGTERM stops it within seconds and never stops the blog (removed below); SIGKILL after 30 s.
    kill -TERM "$agent_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$agent_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  local ids
  ids=$(docker ps -aq --filter "label=$label" 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  remove_chains
  ids=$(docker images -q "$BLOG_AGENT_TEST_REGISTRY/$repo" 2>/dev/null | sort -u)
  [ -z "$ids" ] || docker rmi -f $ids >/dev/null 2>&1 || true
  "$py" scripts/demo_aws.py clean "$bucket" "$repo" >/dev/null 2>&1 || true
  [ $rc -eq 0 ] || echo "demo: failed; cleaned up (the agent's log stays in $dir/agent.log)" >&2
}
trap cleanup EXIT

if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
  die "something already answers on 127.0.0.1:$port (a previous demo with DEMO_KEEP=1? scripts/stack-down.sh); or set DEMO_PORT"
fi
# A run interrupted before its cleanup leaves these: gone before the agent starts.
stale=$(docker ps -aq --filter "label=$label")
[ -z "$stale" ] || docker rm -f $stale >/dev/null
remove_chains
rm -rf "$dir" && mkdir -p "$dir"

say "building blog-agent (debug build: the quickest from a cold start)"
build_started=$SECONDS
cargo build --quiet --locked --bin blog-agent
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
agent=$target_dir/debug/blog-agent
build_seconds=$((SECONDS - build_started))
"$agent" --version >&2

say "a signing key pair for staging (minisign -G): CI keeps the secret key, hosts get the public one"
minisign -G -W -f -p "$dir/staging.pub" -s "$dir/staging.key" >/dev/null
public_key=$(tail -n 1 "$dir/staging.pub")
echo "public_key = \"$public_key\"" >&2

cat >"$dir/config.toml" <<TOML
# The demo host's config: the same keys as /etc/blog-agent/config.toml on an EC2 host.
[environment]
name = "$env"
allowed = ["$env"]
[release]
bucket = "$bucket"
public_key = "$public_key"
[image]
repository = "$BLOG_AGENT_TEST_REGISTRY/$repo"
[container]
name = "blog-demo"
ports = ["127.0.0.1:$port:80"]
labels = { "$label" = "1" }
stop_timeout = "1s"
[health]
url = "http://127.0.0.1:$port/"
timeout = "5s"
[agent]
state_dir = "$dir/state"
[reconcile]
interval = "2s"
jitter = "200ms"
[traffic]
# The traffic switch (the default mode), in chains of the demo's own, removed by name at the end.
chains = "$chains"
[rollout]
# One host in this fleet: its own failed deploy halts a release for everyone.
halt_after = 1
[metrics]
textfile = "$dir/blog_agent.prom"
TOML
# The CLI commands at warn level: what they print on stdout is the demo; the service logs at info.
ba() { RUST_LOG=${RUST_LOG:-warn} "$agent" --config "$dir/config.toml" "$@"; }

v1=$(printf 'demo version 1' | sha1sum | cut -c1-40)
v2=$(printf 'demo version 2' | sha1sum | cut -c1-40)
v3=$(printf 'demo version 3, broken' | sha1sum | cut -c1-40)
say "CI builds and pushes three images: ${v1:0:7} and ${v2:0:7} serve the blog, ${v3:0:7} answers 500 on every page"
"$py" scripts/demo_aws.py setup "$bucket" "$repo"
for pair in "$v1 good" "$v2 good" "$v3 http500"; do
  read -r sha kind <<<"$pair"
  bash scripts/publish-image.sh "$sha" "$kind" "$BLOG_AGENT_TEST_REGISTRY" "$repo" >/dev/null
  echo "$repo:${sha:0:7} $("$py" scripts/demo_aws.py register "$repo" "$sha")" >&2
done

say "CI: blog-agent --env $env publish ${v1:0:7} (signed with the secret key)"
BLOG_AGENT_SIGNING_KEY=$dir/staging.key ba --env "$env" publish "$v1"

say "the host: blog-agent run (the service, in the background; log $dir/agent.log)"
"$agent" --config "$dir/config.toml" run >"$dir/agent.log" 2>&1 &
agent_pid=$!
wait_for "the first deploy (${v1:0:7} serving on 127.0.0.1:$port)" 60 serves "$v1"
agent_log
echo "http://127.0.0.1:$port/ serves: $(curl -fsS "http://127.0.0.1:$port/")" >&2

say "CI publishes ${v2:0:7} while a client sends GET / every 10 ms, each on a new connection"
python3 bench/swap_client.py --newconn "127.0.0.1:$port" --every 0.01 --timeout 1 --max-seconds 90 \
  --out "$dir/swap.json" >"$dir/client.out" 2>"$dir/client.err" &
client_pid=$!
wait_for "the client to start" 10 grep -q ready "$dir/client.out"
sleep 1 # requests answered by version 1 before the publish
BLOG_AGENT_SIGNING_KEY=$dir/staging.key ba --env "$env" publish "$v2"
wait_for "the swap to ${v2:0:7}" 60 serves "$v2"
sleep 1 # and by version 2 after it
kill -TERM "$client_pid"
wait "$client_pid" || die "the client failed: $(cat "$dir/client.err")"
client_pid=''
agent_log
swap_line=$("$py" scripts/demo_aws.py swap "$dir/swap.json" "$v1" "$v2")
echo "$swap_line"

say "a publish without the signing key is refused (hosts require signed releases)"
if ba --env "$env" publish "$v3"; then die "an unsigned publish went through"; fi

say "CI publishes ${v3:0:7} signed, but its image answers 500: the host probes it beside ${v2:0:7} and refuses it"
BLOG_AGENT_SIGNING_KEY=$dir/staging.key ba --env "$env" publish "$v3"
wait_for "the host to refuse ${v3:0:7} and halt it" 90 grep -q "^blog_agent_halted{sha=\"$v3\"} 1" "$dir/blog_agent.prom"
agent_log
serves "$v2" || die "${v2:0:7} should still serve"
echo "http://127.0.0.1:$port/ still serves: $(curl -fsS "http://127.0.0.1:$port/")" >&2

say "blog-agent status: S3 names ${v3:0:7}, halted, so this host's target is ${v2:0:7}, which it serves"
ba status || true

say "blog-agent --env $env rollback: the release before ${v3:0:7} is published again, signed"
BLOG_AGENT_SIGNING_KEY=$dir/staging.key ba --env "$env" rollback
wait_for "the host's next pass on ${v2:0:7}" 60 \
  grep -q "^blog_agent_release_info{environment=\"$env\",sha=\"$v2\",state=\"converged\"} 1" "$dir/blog_agent.prom"
agent_log

say "blog-agent status: S3 names ${v2:0:7} again, and this host serves it (exit 0: converged)"
ba status
say "blog-agent --env $env releases"
ba --env "$env" releases
say "the agent's metrics ($dir/blog_agent.prom), for node_exporter's textfile collector"
grep -E '^blog_agent_(build_info|release_info|converged|deploys_total|halted)' "$dir/blog_agent.prom" >&2

echo
echo "$swap_line"
echo "demo: done in $((SECONDS - started)) s (of which the agent's build $build_seconds s)"
