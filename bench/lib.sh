# shellcheck shell=bash disable=SC2034 # proxy_pid, proxy_port and venv are for the scripts that source this
# bench/lib.sh: sourced (from the repository root) by bench/run.sh, bench/profile-cold.sh and bench/fleet.sh,
# which set up the same way: the local stack's environment, a Python venv with awscli, boto3 and
# matplotlib from PyPI, and the counting proxy in front of moto that both tools reach S3 and ECR
# through.
source scripts/stack-env.sh
export AWS_EC2_METADATA_DISABLED=true  # loopback only: no SDK ever falls back to IMDS
venv=$BLOG_AGENT_STACK_DIR/bench-venv

# agent_binary WHO: sets agent to the binary to measure, BENCH_AGENT or the static release binary
# scripts/package.sh builds; exits naming WHO when there is none.
agent_binary() {
  agent=${BENCH_AGENT:-$PWD/target/x86_64-unknown-linux-musl/release/blog-agent}
  if [ ! -x "$agent" ]; then
    echo "$1: no binary at $agent; build it with scripts/package.sh (or set BENCH_AGENT)" >&2
    exit 1
  fi
}

ensure_venv() {
  if ! "$venv/bin/python" -c 'import awscli, boto3, matplotlib' 2>/dev/null; then
    echo "bench: installing awscli, boto3, matplotlib into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q awscli boto3 matplotlib
  fi
}

# start_proxy DIR: starts bench/proxy.py with its log in DIR/proxy.log and sets proxy_pid and
# proxy_port. The caller's EXIT trap stops it (kill "$proxy_pid").
start_proxy() {
  local dir=$1
  : >"$dir/proxy.log"
  setsid "$venv/bin/python" bench/proxy.py "$MOTO_PORT" "$dir/proxy.log" "$dir/proxy.port" \
    >"$dir/proxy.err" 2>&1 </dev/null &
  proxy_pid=$!
  for _ in $(seq 100); do [ -s "$dir/proxy.port" ] && break; sleep 0.1; done
  if [ ! -s "$dir/proxy.port" ]; then
    echo "bench: the counting proxy did not start" >&2
    cat "$dir/proxy.err" >&2
    return 1
  fi
  proxy_port=$(cat "$dir/proxy.port")
}
