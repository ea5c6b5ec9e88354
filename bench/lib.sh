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

# push_release SHA REPO BUCKET: registers the registry's exact manifest of REPO:SHA in moto's
# ECR (so `publish` reads the digest hosts pull) and creates BUCKET if it is missing.
push_release() {
  "$venv/bin/python" - "$1" "$2" "$3" <<'EOF'
import base64, hashlib, os, sys, urllib.request, boto3
sha, repo, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
media = "application/vnd.docker.distribution.manifest.v2+json"
req = urllib.request.Request(f"http://{os.environ['BLOG_AGENT_TEST_REGISTRY']}/v2/{repo}/manifests/{sha}",
                             headers={"Accept": media})
auth = base64.b64encode(f"{os.environ['ECR_TOKEN_USER']}:{os.environ['ECR_TOKEN_PASSWORD']}".encode()).decode()
req.add_header("Authorization", f"Basic {auth}")
manifest = urllib.request.urlopen(req).read()
ecr = boto3.client("ecr", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
try:
    ecr.create_repository(repositoryName=repo)
except ecr.exceptions.RepositoryAlreadyExistsException:
    pass
ecr.put_image(repositoryName=repo, imageManifest=manifest.decode(), imageManifestMediaType=media,
              imageTag=sha, imageDigest="sha256:" + hashlib.sha256(manifest).hexdigest())
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
EOF
}

# count_calls LOG: one line naming the S3 and ECR calls bench/proxy.py logged in LOG.
count_calls() {
  "$venv/bin/python" - "$1" <<'EOF'
import collections, json, sys
counts = collections.Counter()
for line in open(sys.argv[1]):
    r = json.loads(line)
    target = r.get("amz_target") or ""
    if target:
        counts["ECR " + target.split(".")[-1]] += 1
    elif "list-type=2" in r["path"]:
        counts["S3 ListObjectsV2"] += 1
    elif "versions" in r["path"]:
        counts["S3 ListObjectVersions"] += 1
    else:
        counts["S3 " + r["method"]] += 1
print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
EOF
}
