#!/usr/bin/env bash
# Starts the local stack the demo and the integration tests run against: dockerd (if no daemon
# answers), two registries (right and wrong password), moto_server (S3 + ECR).
# Idempotent: whatever already answers is left alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/stack-env.sh"
bash "$here/install-deps.sh"
dir=$BLOG_AGENT_STACK_DIR
mkdir -p "$dir"

wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "stack-up: $what did not come up in ${secs}s" >&2; return 1; fi
    sleep 0.2
  done
}

# Docker Engine. BLOG_AGENT_DOCKERD_FLAGS: extra dockerd flags, word-split (empty for the suite;
# tests/dockerd_restart.rs and bench/dockerd-restart.sh start it with --live-restore for a
# while, then put the plain one back).
if ! docker info >/dev/null 2>&1; then
  # A daemon still shutting down holds its pid file: a new one would exit at once.
  wait_for "the previous dockerd to exit" 60 bash -c '! pgrep -x dockerd'
  echo "stack-up: starting dockerd ${BLOG_AGENT_DOCKERD_FLAGS:+$BLOG_AGENT_DOCKERD_FLAGS }(log: $dir/dockerd.log)" >&2
  # shellcheck disable=SC2086 # the flags are words on purpose
  setsid nohup dockerd ${BLOG_AGENT_DOCKERD_FLAGS:-} >>"$dir/dockerd.log" 2>&1 </dev/null &
  wait_for dockerd 60 docker info
fi

# Registries: distribution re-reads htpasswd on change, so credentials can be flipped live.
start_registry() { # start_registry NAME PORT PASSWORD
  local name=$1 port=$2 password=$3 rdir="$dir/$1"
  if curl -fsS -o /dev/null -w '' "http://127.0.0.1:$port/" 2>/dev/null; then return 0; fi
  mkdir -p "$rdir/data"
  htpasswd -Bbn "$ECR_TOKEN_USER" "$password" >"$rdir/htpasswd"
  cat >"$rdir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $rdir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
auth:
  htpasswd:
    realm: blog-agent-test
    path: $rdir/htpasswd
YML
  echo "stack-up: starting registry $name on 127.0.0.1:$port" >&2
  setsid nohup docker-registry serve "$rdir/config.yml" >"$rdir/registry.log" 2>&1 </dev/null &
  wait_for "registry $name" 30 curl -sS -o /dev/null "http://127.0.0.1:$port/v2/"
}
start_registry registry "$REGISTRY_PORT" "$ECR_TOKEN_PASSWORD"
start_registry registry-badauth "$BADAUTH_REGISTRY_PORT" "not-the-ecr-token"

# moto_server: S3 and ECR
if ! curl -fsS -o /dev/null "$AWS_ENDPOINT_URL/moto-api/" 2>/dev/null; then
  echo "stack-up: starting moto_server on 127.0.0.1:$MOTO_PORT" >&2
  setsid nohup "$dir/venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$dir/moto.log" 2>&1 </dev/null &
  wait_for moto_server 60 curl -fsS -o /dev/null "$AWS_ENDPOINT_URL/moto-api/"
fi

# The docker CLI logs in once so scripts can push test images.
echo "$ECR_TOKEN_PASSWORD" | docker login -u "$ECR_TOKEN_USER" --password-stdin "$BLOG_AGENT_TEST_REGISTRY" >/dev/null 2>&1
echo "stack-up: ready (registry $BLOG_AGENT_TEST_REGISTRY, moto $AWS_ENDPOINT_URL)" >&2
