#!/usr/bin/env bash
# bench/bake.sh: failed requests from a release's late failure to the end of its revert
# (`[health] bake`), switch mode, a loopback client every 10 ms. For each kind of late failure
# (`lateexit`: the process exits 6 s after it starts; `late500`: it answers 500 from 10 s on,
# see scripts/publish-image.sh) it deploys a good release, then the bad one under
# `blog-agent run`, and prints one line: the kind, requests sent, failed requests, and the
# seconds from the bake's trip to the traffic being switched back (the agent's journal).
#
#   BENCH_AGENT=target/release/blog-agent bash bench/bake.sh            # both kinds
#   BENCH_AGENT=... bash bench/bake.sh lateexit                        # one
#   BENCH_BAKE=0s BENCH_AGENT=... bash bench/bake.sh                    # no bake: the crash-loop
#                                                                      # rules alone, to compare
#   BENCH_PATH=veth BENCH_AGENT=... bash bench/bake.sh                  # the client in a network
#                                                                      # namespace of its own
#
# Each line also gives the seconds from the first failed request to the previous version
# serving again (the client's view), the kept container's memory and the agent's RSS during
# the bake, and the agent's RSS once the bake is over.
#
# Needs root and the local stack (scripts/stack-up.sh). Touches only: containers labelled
# blog-agent-bench=bake, images of 127.0.0.1:5000/blog-bench-bake, the S3 bucket
# blog-bench-bake, netfilter chains BENCH-BAKE-*, and with BENCH_PATH=veth the namespace
# bench-bake-ns and the veth bbk0h with a /30 in 10.214.0.0/16 no interface or route here uses
# (all removed by name at the end; the client sends only to the host end of that veth).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/stack-env.sh
agent=${BENCH_AGENT:-$root/target/release/blog-agent}
[ -x "$agent" ] || { echo "bench: no binary at $agent (cargo build --release, or set BENCH_AGENT)" >&2; exit 1; }
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(lateexit late500)
registry=$BLOG_AGENT_TEST_REGISTRY
repo=blog-bench-bake
bucket=blog-bench-bake
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-bake.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
py=$BLOG_AGENT_STACK_DIR/venv/bin/python
s3() { # put BUCKET KEY TEXT | mb BUCKET: through boto3 (moto's own dependency)
  "$py" - "$@" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
if sys.argv[1] == "mb":
    try: s3.create_bucket(Bucket=sys.argv[2])
    except s3.exceptions.BucketAlreadyOwnedByYou: pass
else:
    s3.put_object(Bucket=sys.argv[2], Key=sys.argv[3], Body=sys.argv[4].encode())
PY
}
remove_chains() { # the agent's chains BENCH-BAKE-*: the jumps into them, then the chains
  local t chain
  for t in nat filter; do
    iptables -w 5 -t $t -S | grep -- "-j BENCH-BAKE-" | grep '^-A' | sed 's/^-A/-D/' | while read -r rule; do
      eval "iptables -w 5 -t $t $rule" || true
    done
    for chain in $(iptables -w 5 -t $t -S | awk '$1 == "-N" && $2 ~ /^BENCH-BAKE-/ {print $2}'); do
      iptables -w 5 -t $t -F "$chain" && iptables -w 5 -t $t -X "$chain" || true
    done
  done
}
path=${BENCH_PATH:-loopback}
ns=bench-bake-ns veth=bbk0h
remove_ns() { ip link del "$veth" 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true; }
cleanup() {
  [ "$path" != veth ] || remove_ns
  [ -z "${agent_pid:-}" ] || kill "$agent_pid" 2>/dev/null || true
  [ -z "${lock_pid:-}" ] || kill "$lock_pid" 2>/dev/null || true
  docker ps -aq --filter label=blog-agent-bench=bake | xargs -r docker rm -f >/dev/null
  remove_chains
  rm -rf "$work"
}
trap cleanup EXIT
# Netfilter tests on this machine run one at a time behind this lock (tests/common
# netfilter_lock): hold it for the whole run, so no test sees the bench's chains.
python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
while True:
    try: s.bind("\0blog-agent-tests-netfilter"); break
    except OSError: time.sleep(0.2)
print("locked", flush=True)
while True: time.sleep(3600)
' >"$work/lock" &
lock_pid=$!
until grep -q locked "$work/lock" 2>/dev/null; do sleep 0.2; done
s3 mb "$bucket"
ports="\"127.0.0.1:$port:80\""
target=127.0.0.1
client_prefix=()
if [ "$path" = veth ]; then
  remove_ns
  used=$(ip -4 addr; ip -4 route)
  k=10; while grep -q "10\.214\.$k\." <<<"$used"; do k=$((k + 1)); done
  target=10.214.$k.1
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip addr add "$target/30" dev "$veth"; ip link set "$veth" up
  ip -n "$ns" addr add "10.214.$k.2/30" dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
  ports="$ports, \"$target:$port:80\""
  client_prefix=(ip netns exec "$ns")
fi
cat >"$work/config.toml" <<EOF
[environment]
allowed = ["staging"]
[release]
bucket = "$bucket"
[image]
repository = "$registry/$repo"
[container]
name = "bench-bake"
ports = [$ports]
labels = { "blog-agent-bench" = "bake" }
stop_timeout = "1s"
[health]
url = "http://127.0.0.1:$port/"
timeout = "10s"
bake = "${BENCH_BAKE:-30s}"
[agent]
state_dir = "$work/state"
[reconcile]
interval = "2s"
jitter = "0s"
[traffic]
mode = "switch"
chains = "BENCH-BAKE"
EOF
release() { # KIND: publishes an image and names it in S3; prints its SHA
  local sha
  sha=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
  bash scripts/publish-image.sh "$sha" "$1" "$registry" "$repo" >/dev/null
  s3 put "$bucket" staging/stagebuild.txt "$sha"
  echo "$sha"
}
apache_release() { # apachegood|apache5xx: the project's Apache test image as a release; prints its SHA
  local sha ctx base
  sha=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
  base=$(bash scripts/build-apache-image.sh)
  ctx=$(mktemp -d "$work/apache.XXXXXX")
  printf 'FROM %s\nENV BLOG_VERSION=%s\n' "$base" "$sha" >"$ctx/Dockerfile"
  if [ "$1" = apache5xx ]; then
    printf '#!/bin/sh\nprintf "Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nbroken\\n"\n' >"$ctx/fail"
    chmod 755 "$ctx/fail"
    printf 'COPY fail /usr/lib/cgi-bin/fail\n' >>"$ctx/Dockerfile"
  fi
  echo "$ECR_TOKEN_PASSWORD" | docker login -u "$ECR_TOKEN_USER" --password-stdin "$registry" >/dev/null 2>&1 || true
  docker build -q -t "$registry/$repo:$sha" "$ctx" >/dev/null 2>"$ctx/build.err" || { cat "$ctx/build.err" >&2; exit 1; }
  docker push -q "$registry/$repo:$sha" >/dev/null
  s3 put "$bucket" staging/stagebuild.txt "$sha"
  echo "$sha"
}
serves() { curl -s -m 1 "http://127.0.0.1:$port/" | grep -q "version $1"; }
wait_until() { local n=0; until "$@"; do n=$((n + 1)); [ $n -lt 1200 ] || { echo "bench: timed out: $*" >&2; exit 1; }; sleep 0.05; done; }
for kind in "${kinds[@]}"; do
  rm -rf "$work/state"
  docker ps -aq --filter label=blog-agent-bench=bake | xargs -r docker rm -f >/dev/null
  AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9 "$agent" --config "$work/config.toml" --env staging run 2>"$work/agent-$kind.log" &
  agent_pid=$!
  case $kind in
    apache*) v1=$(apache_release apachegood) ;;
    *) v1=$(release good) ;;
  esac
  wait_until serves "$v1"
  wait_until grep -q "recovered\|deployed" "$work/agent-$kind.log"
  case $kind in
    apache*) v2=$(apache_release "$kind") ;;
    *) v2=$(release "$kind") ;;
  esac
  wait_until serves "$v2"
  # During the bake: what the kept container and the agent hold.
  kept_mem=$(docker stats --no-stream --format '{{.MemUsage}}' bench-bake-previous 2>/dev/null | cut -d/ -f1 | tr -d ' ')
  rss_bake=$(awk '/VmRSS/ {print $2 " kB"}' "/proc/$agent_pid/status")
  # The client: a request every 10 ms from the cut-over until v1 serves again, plus 2 s (at
  # most 120 s: without a bake a late 500 is never reverted).
  "${client_prefix[@]}" python3 - "$port" "$v1" "$kind" "$target" >"$work/client-$kind.txt" <<'PY' &
import sys, time, urllib.error, urllib.request
port, v1, kind, target = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
# apache5xx: every other request asks for the page only the access log watches.
paths = ["/", "/cgi-bin/fail"] if kind == "apache5xx" else ["/"]
sent = failed = 0
back_at = first_fail = None
while back_at is None or time.time() - back_at < 2:
    path = paths[sent % len(paths)]
    sent += 1
    try:
        body = urllib.request.urlopen(f"http://{target}:{port}{path}", timeout=1).read().decode()
        if back_at is None and f"version {v1}" in body:
            back_at = time.time()
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            failed += 1
            first_fail = first_fail or time.time()
    except Exception:
        failed += 1
        first_fail = first_fail or time.time()
    time.sleep(0.01)
    if sent > 12000:
        break
back = "never" if back_at is None else (f"{back_at - first_fail:.2f}" if first_fail else "0")
print(sent, failed, back)
PY
  client=$!
  wait "$client"
  read -r sent failed back <"$work/client-$kind.txt"
  tripped=$(grep -m1 "tripped: " "$work/agent-$kind.log" | cut -c1-27 || true)
  switched=$(grep -m1 "traffic switched back" "$work/agent-$kind.log" | cut -c1-27 || true)
  secs=n/a
  if [ -n "$tripped" ] && [ -n "$switched" ]; then
    secs=$(python3 -c "import sys,datetime as d; f=lambda s: d.datetime.fromisoformat(s.rstrip('Z')); print(round((f(sys.argv[2])-f(sys.argv[1])).total_seconds(),3))" "$tripped" "$switched")
  fi
  sleep 2
  rss_after=$(awk '/VmRSS/ {print $2 " kB"}' "/proc/$agent_pid/status")
  kept_after=$(docker ps -aq --filter name=bench-bake-previous | wc -l)
  echo "$kind (bake ${BENCH_BAKE:-30s}, $path client): $sent requests, $failed failed from the cut-over to 2 s after v1 served again; first failure -> v1 back: $back s; trip -> traffic back: $secs s; during the bake: kept container ${kept_mem:-none}, agent RSS $rss_bake; after: agent RSS $rss_after, $kept_after kept container(s)"
  kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=
done
