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
pkill -f "docker-registry serve $BLOG_AGENT_STACK_DIR/" || true
pkill -f "$BLOG_AGENT_STACK_DIR/venv/bin/moto_server" || true
echo "stack-down: registries and moto stopped" >&2
