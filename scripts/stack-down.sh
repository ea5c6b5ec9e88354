#!/usr/bin/env bash
# Stops the registries and moto_server started by stack-up.sh. dockerd is left running
# (it may be the host's own); the demo and test containers are removed by label.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/stack-env.sh"
for label in blog-agent-test blog-agent-demo; do
  ids=$(docker ps -aq --filter "label=$label" 2>/dev/null)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
done
# The demo's traffic-switch chains, by name: the jumps into them, then the chains.
if command -v iptables >/dev/null 2>&1; then
  for table in nat filter; do
    iptables -w 5 -t "$table" -S 2>/dev/null | grep -E -- '-j BLOG-AGENT-DEMO-(DNAT|POST|FWD|IN)$' | sed 's/^-A /-D /' |
      while read -r rule; do eval "iptables -w 5 -t $table $rule" >/dev/null 2>&1 || true; done
    for chain in DNAT POST FWD IN; do
      iptables -w 5 -t "$table" -F "BLOG-AGENT-DEMO-$chain" >/dev/null 2>&1 &&
        iptables -w 5 -t "$table" -X "BLOG-AGENT-DEMO-$chain" >/dev/null 2>&1 || true
    done
  done
fi
pkill -f "docker-registry serve $BLOG_AGENT_STACK_DIR/" || true
pkill -f "$BLOG_AGENT_STACK_DIR/venv/bin/moto_server" || true
echo "stack-down: registries and moto stopped" >&2
