#!/usr/bin/env bash
# boot-e2e.sh: boots a Debian bookworm root with systemd as PID 1 in a container on this
# host's dockerd, hands cloud-init a NoCloud seed that installs the built .deb and starts the
# agent exactly as the EC2 user-data does, and checks the host ends up serving the blog
# version named in S3 through the traffic switch (issue 7; what it proves and what it cannot:
# docs/boot-e2e.md). It boots in Ubuntu's order (issue 17): docker0 exists, with
# net.ipv4.conf.docker0.route_localnet = 0, before the package is installed.
#
#   bash scripts/boot-e2e.sh            # uses target/packages/blog-agent_*_amd64.deb
#                                       # (scripts/package.sh puts it there, whatever its CARGO_TARGET_DIR)
#   BOOT_E2E_DEB=path.deb bash scripts/boot-e2e.sh
#   BOOT_E2E_REBUILD=1 ...              # rebuild the cached root image
#   BOOT_E2E_KEEP=1 ...                 # leave the containers running (debugging)
#
# Prints one `ok ...` / `FAIL ...` line per assertion, then `N passed, M failed`; exits 1 on
# any failure. Everything it starts carries the label blog-agent-e2e=<run id> and is removed
# by that label on exit, whatever happens; so are the run's netfilter chains (named from the run
# id), and docker0's route_localnet and ARP setting get back the values they had.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# ---- fixed parameters --------------------------------------------------------------------------
LABEL="blog-agent-e2e"
ROOT_IMAGE_REPO="blog-agent-e2e-root"
ROOT_SUITE=bookworm
ROOT_VARIANT=minbase
# The issue's list, plus python3-cffi-backend: python3-cryptography (cloud-init -> oauthlib)
# depends on the virtual python3-cffi-backend-api-min/max, and debootstrap does not resolve
# virtual packages, so without it configuring the base fails. iptables: the package depends on
# it (the traffic switch runs iptables-restore).
ROOT_PACKAGES=systemd,systemd-sysv,dbus,cloud-init,ca-certificates,curl,locales,python3-cffi-backend,iptables
ROOT_CLOUD_CFG=tests/boot/90-blog-agent-e2e.cfg
# Bump when the way the root is built changes (the package list and the cloud.cfg file are
# hashed anyway).
ROOT_RECIPE=4
ENVIRONMENT=staging
RELEASE_KEY=staging/stagebuild.txt
HALT_PREFIX="${RELEASE_KEY%/*}/halted/"   # where a host writes a halt marker for a bad release
# docker0's keys of the package's sysctl.d file: host-wide (the box shares the host's network
# namespace). The test sets them to the kernel defaults before the boot and puts them back after.
DOCKER0_LOCALNET=/proc/sys/net/ipv4/conf/docker0/route_localnet
DOCKER0_ARP=/proc/sys/net/ipv4/neigh/docker0/retrans_time_ms
POLL_INTERVAL=2     # [reconcile] interval in the user-data, seconds
POLL_JITTER=1       # [reconcile] jitter (500ms), rounded up
DEB_IN_BOX=/opt/blog-agent-e2e/blog-agent.deb

t_start=$SECONDS
passed=0
failed=0
ok() { echo "ok $*"; passed=$((passed + 1)); }
fail() { # fail WHAT [DETAIL]
  echo "FAIL $1"
  # shellcheck disable=SC2001 # indent every detail line
  [ -n "${2:-}" ] && sed 's/^/    /' <<<"$2"
  failed=$((failed + 1))
}
note() { echo "boot-e2e: $*" >&2; }
die() { # a precondition failed: no point asserting anything else
  fail "$1" "${2:-}"
  exit 1
}

# poll SECONDS CMD...: runs CMD until it succeeds or SECONDS pass; fails at the deadline.
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.25
  done
}

# shellcheck source=scripts/stack-env.sh
source scripts/stack-env.sh
py="$BLOG_AGENT_STACK_DIR/venv/bin/python"

# ---- the run's identity and its cleanup ----------------------------------------------------------
# The run id carries this shell's pid so a later run can tell an abandoned run (pid gone)
# from one still in progress.
run_id="e2e-$$-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
box="blog-agent-e2e-$run_id"           # the systemd "host"
blog="blog-e2e-$run_id"                # [container] name inside it
bucket="blog-agent-$run_id"
repo="e2e/$run_id/blog"
chains="E2E-${run_id##*-}"             # [traffic] chains: this run's netfilter chains
work=$(mktemp -d "${TMPDIR:-/tmp}/blog-agent-e2e.XXXXXX")
rootfs=""
imds_pid=""
probe_pid=""
debootstrap_pid=""
localnet_was=""                        # docker0's settings before the test changed them
arp_was=""

# debootstrap mounts proc, sys and devpts inside the root while it configures packages; an
# interrupted run can leave them. Unmount first, and never cross into another file system.
remove_rootfs() {
  [ -n "$rootfs" ] && [ -d "$rootfs" ] || return 0
  awk -v r="$rootfs/" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$rootfs"
  rootfs=""
}

# remove_chains PREFIX: deletes the jumps into PREFIX-{DNAT,POST,FWD,IN} (from PREROUTING,
# OUTPUT, POSTROUTING, INPUT, DOCKER-USER), then those chains, on the host's netfilter: the box
# shares the host's network namespace, so removing the box leaves them behind. Only that prefix.
remove_chains() {
  local prefix=$1 table rule chain
  for table in nat filter; do
    iptables -w 5 -t "$table" -S 2>/dev/null | grep -E -- "-j $prefix-(DNAT|POST|FWD|IN)\$" | sed 's/^-A /-D /' |
      while read -r rule; do eval "iptables -w 5 -t $table $rule" >/dev/null 2>&1; done
    for chain in DNAT POST FWD IN; do
      iptables -w 5 -t "$table" -F "$prefix-$chain" >/dev/null 2>&1 &&
        iptables -w 5 -t "$table" -X "$prefix-$chain" >/dev/null 2>&1
    done
  done
  return 0
}

diagnostics() {
  docker inspect "$box" >/dev/null 2>&1 || return 0
  echo "---- diagnostics ($box) ----" >&2
  docker exec "$box" systemctl --no-pager status blog-agent 2>&1 | tail -n 20 >&2
  docker exec "$box" journalctl --no-pager -u blog-agent -n 40 2>&1 >&2
  docker exec "$box" sh -c 'tail -n 30 /var/log/cloud-init-output.log; cloud-init status --long' 2>&1 >&2
  docker exec "$box" systemctl --no-pager --failed 2>&1 >&2
  echo "docker0: route_localnet $(cat "$DOCKER0_LOCALNET" 2>&1), retrans_time_ms $(cat "$DOCKER0_ARP" 2>&1)" >&2
  iptables -w 5 -t nat -S "$chains-DNAT" 2>&1 >&2
  echo "---- end of diagnostics ----" >&2
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ "$failed" -gt 0 ] && diagnostics
  [ -n "$probe_pid" ] && kill "$probe_pid" 2>/dev/null && wait "$probe_pid" 2>/dev/null
  [ -n "$imds_pid" ] && kill "$imds_pid" 2>/dev/null && wait "$imds_pid" 2>/dev/null
  # debootstrap runs in its own process group (setsid): stop it and its dpkg/chroot children.
  [ -n "$debootstrap_pid" ] && kill -TERM -- "-$debootstrap_pid" 2>/dev/null && wait "$debootstrap_pid" 2>/dev/null
  if [ "${BOOT_E2E_KEEP:-}" = 1 ]; then
    note "BOOT_E2E_KEEP=1: left running: docker ps --filter label=$LABEL=$run_id; work dir $work;" \
      "netfilter chains $chains-*; docker0 route_localnet was $localnet_was, retrans_time_ms $arp_was"
  else
    local ids
    ids=$(docker ps -aq --filter "label=$LABEL=$run_id")
    # shellcheck disable=SC2086 # one id per word
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
    # After the box (its agent would re-assert them): the rules it wrote, then docker0's settings.
    remove_chains "$chains"
    [ -z "$localnet_was" ] || echo "$localnet_was" >"$DOCKER0_LOCALNET"
    [ -z "$arp_was" ] || echo "$arp_was" >"$DOCKER0_ARP"
    ids=$(docker image ls -q "$BLOG_AGENT_TEST_REGISTRY/$repo" 2>/dev/null | sort -u)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rmi -f $ids >/dev/null 2>&1
    "$BLOG_AGENT_STACK_DIR/venv/bin/python" - "$bucket" >/dev/null 2>&1 <<'PY'
import sys, boto3
b = boto3.resource("s3").Bucket(sys.argv[1])
b.objects.all().delete()
b.delete()
PY
    rm -rf "$work"
  fi
  remove_rootfs
  echo "boot-e2e: wall time $((SECONDS - t_start))s" >&2
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ] || [ "$rc" != 0 ] || rc=1
  exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted (SIGINT)"; exit 130' INT
trap 'fail "interrupted (SIGTERM)"; exit 143' TERM

# ---- preconditions -------------------------------------------------------------------------------
out=$(bash scripts/stack-up.sh 2>&1) || die "local stack is up (bash scripts/stack-up.sh)" "$out"

# shellcheck disable=SC2012 # newest first; the names are ours
deb=${BOOT_E2E_DEB:-$(ls -t target/packages/blog-agent_*_amd64.deb 2>/dev/null | head -n 1)}
{ [ -n "$deb" ] && [ -f "$deb" ]; } || die "a built .deb exists (run: bash scripts/package.sh)"
# A private copy: a package build running meanwhile may replace the file under the mount.
cp "$deb" "$work/blog-agent.deb"
deb_version=$(dpkg-deb -f "$work/blog-agent.deb" Version)
note "run $run_id, package $(basename "$deb") ($deb_version)"

# Containers of earlier runs that died without cleaning up (their shell is gone).
for id in $(docker ps -aq --filter "label=$LABEL"); do
  old=$(docker inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$id" 2>/dev/null)
  old_pid=$(cut -d- -f2 <<<"$old")
  if [[ "$old_pid" =~ ^[0-9]+$ ]] && ! kill -0 "$old_pid" 2>/dev/null; then
    docker rm -f "$id" >/dev/null 2>&1 && note "removed container $id left by run $old"
    [[ "$old" =~ ^e2e-[0-9]+-[0-9a-f]+$ ]] && remove_chains "E2E-${old##*-}"
  fi
done

# ---- 1. the root image (cached) ------------------------------------------------------------------
key=$(printf '%s\n' "recipe=$ROOT_RECIPE" "suite=$ROOT_SUITE" "variant=$ROOT_VARIANT" \
  "packages=$ROOT_PACKAGES" "$(cat "$ROOT_CLOUD_CFG")" | sha256sum | cut -c1-16)
root_image="$ROOT_IMAGE_REPO:$key"
if [ "${BOOT_E2E_REBUILD:-}" != 1 ] && docker image inspect "$root_image" >/dev/null 2>&1; then
  ok "root image $root_image (cached)"
else
  if ! command -v debootstrap >/dev/null 2>&1; then
    note "apt-get install debootstrap"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }; } ||
      die "debootstrap is installed (apt-get install debootstrap failed)"
  fi
  rootfs=$(mktemp -d /var/tmp/blog-agent-e2e-root.XXXXXX)
  note "debootstrap $ROOT_SUITE ($ROOT_VARIANT + $ROOT_PACKAGES) into $rootfs; log $work/debootstrap.log"
  t0=$SECONDS
  # In the background and waited for, so an interrupt is handled at once (bash runs traps only
  # between foreground commands); setsid gives cleanup one process group to stop.
  setsid debootstrap --variant="$ROOT_VARIANT" --include="$ROOT_PACKAGES" "$ROOT_SUITE" "$rootfs" \
    >"$work/debootstrap.log" 2>&1 </dev/null &
  debootstrap_pid=$!
  wait "$debootstrap_pid"
  debootstrap_rc=$?
  debootstrap_pid=""
  if [ "$debootstrap_rc" != 0 ]; then
    die "debootstrap $ROOT_SUITE" "$(tail -n 5 "$work/debootstrap.log"
      grep -B2 -A4 -m3 'dependency problems\|error processing' "$rootfs/debootstrap/debootstrap.log" 2>/dev/null)"
  fi
  install -m 0644 "$ROOT_CLOUD_CFG" "$rootfs/etc/cloud/cloud.cfg.d/$(basename "$ROOT_CLOUD_CFG")"
  # cloud-init's locale module runs `locale-gen en_US.UTF-8` then `update-locale`. Ubuntu's
  # locale-gen generates the locale it is given; Debian's ignores its arguments and builds
  # only what /etc/locale.gen enables (nothing, after debootstrap), so update-locale exits
  # 255 and cloud-init reports `error`. Enable the locale cloud-init asks for, as a Debian
  # cloud image does.
  sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$rootfs/etc/locale.gen"
  grep -q '^en_US.UTF-8 UTF-8' "$rootfs/etc/locale.gen" || die "en_US.UTF-8 enabled in the root's /etc/locale.gen"
  # With /proc/sys writable (see the boot below) and the host's network namespace, the root's
  # boot-time systemd-sysctl.service would apply all of Debian's sysctl.d (kernel.pid_max,
  # fs.protected_*) to the test host's kernel. Masked: the only keys applied are the package's
  # docker0 ones, by its install script and its unit's ExecStartPre, which is what is tested.
  ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-sysctl.service"
  # Smaller image; nothing in the test installs from the archive.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  if ! tar -C "$rootfs" --numeric-owner -c . | docker import \
    -c 'ENV container=docker' -c 'CMD ["/lib/systemd/systemd"]' \
    -c "LABEL $ROOT_IMAGE_REPO=$key" - "$root_image" >/dev/null; then
    die "docker import of the root"
  fi
  remove_rootfs
  # Older roots (another package list) are dead weight.
  for img in $(docker image ls --format '{{.Repository}}:{{.Tag}}' "$ROOT_IMAGE_REPO"); do
    [ "$img" = "$root_image" ] || docker rmi "$img" >/dev/null 2>&1 || true
  done
  ok "root image $root_image built ($((SECONDS - t0))s: debootstrap + import)"
fi

# ---- 2. the world outside the host: IMDS, S3, ECR ------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
python3 tests/boot/imds.py "$work/imds.port" "$work/imds.log" "Environment=$ENVIRONMENT" \
  >"$work/imds.out" 2>&1 &
imds_pid=$!
poll 10 test -s "$work/imds.port" || die "IMDS stand-in listening" "$(cat "$work/imds.out")"
imds="http://127.0.0.1:$(cat "$work/imds.port")"

new_sha() { od -An -N20 -tx1 /dev/urandom | tr -d ' \n'; }
sha1=$(new_sha)
sha2=$(new_sha)
bash scripts/publish-image.sh "$sha1" good "$BLOG_AGENT_TEST_REGISTRY" "$repo" >/dev/null ||
  die "publish image $sha1"
"$py" scripts/put-release.py "$bucket" "$RELEASE_KEY" "$sha1" >/dev/null ||
  die "write s3://$bucket/$RELEASE_KEY"

# ---- 3. the NoCloud seed ---------------------------------------------------------------------------
mkdir -p "$work/seed"
printf 'instance-id: %s\n' "$run_id" >"$work/seed/meta-data"
sed -e "s|@RUN_ID@|$run_id|g" -e "s|@BUCKET@|$bucket|g" \
  -e "s|@REPOSITORY@|$BLOG_AGENT_TEST_REGISTRY/$repo|g" -e "s|@CONTAINER@|$blog|g" \
  -e "s|@PORT@|$port|g" -e "s|@LABEL@|$LABEL|g" -e "s|@DEB@|$DEB_IN_BOX|g" -e "s|@CHAINS@|$chains|g" \
  -e "s|@AWS_ENDPOINT_URL@|$AWS_ENDPOINT_URL|g" -e "s|@AWS_REGION@|$AWS_REGION|g" \
  -e "s|@AWS_ACCESS_KEY_ID@|$AWS_ACCESS_KEY_ID|g" -e "s|@AWS_SECRET_ACCESS_KEY@|$AWS_SECRET_ACCESS_KEY|g" \
  -e "s|@IMDS_ENDPOINT@|$imds|g" tests/boot/user-data.yaml.in >"$work/seed/user-data"
if grep -q '@[A-Z_]*@' "$work/seed/user-data"; then
  fail "user-data rendered" "$(grep -n '@[A-Z_]*@' "$work/seed/user-data")"
elif command -v cloud-init >/dev/null 2>&1; then
  if out=$(cloud-init schema -c "$work/seed/user-data" 2>&1); then
    ok "user-data passes cloud-init schema ($(wc -c <"$work/seed/user-data") bytes)"
  else
    fail "user-data passes cloud-init schema" "$out"
  fi
fi

# ---- 4. boot ----------------------------------------------------------------------------------------
# Ubuntu's order (issue 17): the user-data installs docker.io first, so docker0 exists, with the
# kernel's defaults, before the package. The host's dockerd made docker0; put its settings back
# to those defaults (route_localnet 0, ARP retransmit 1000 ms), saving what they were.
{ [ -w "$DOCKER0_LOCALNET" ] && [ -w "$DOCKER0_ARP" ]; } ||
  die "docker0 exists and its sysctls are writable here ($DOCKER0_LOCALNET)"
localnet_was=$(cat "$DOCKER0_LOCALNET")
arp_was=$(cat "$DOCKER0_ARP")
echo 0 >"$DOCKER0_LOCALNET" && echo 1000 >"$DOCKER0_ARP" || die "docker0 set to the kernel defaults"
note "docker0: route_localnet $localnet_was -> 0, retrans_time_ms $arp_was -> 1000 (put back at the end)"

# What boots systemd here without --privileged (refused on these machines): see
# /work/shared/MACHINE-NOTES.md and docs/boot-e2e.md. NET_ADMIN and systempaths=unconfined (a
# writable /proc/sys): the package and the unit set docker0's sysctls, and the agent writes
# netfilter rules, as on a host. SIGRTMIN+3 is systemd's "halt": `docker stop` then shuts the
# host down cleanly, like a reboot does.
if ! out=$(docker run -d --name "$box" --label "$LABEL=$run_id" \
  --cap-add SYS_ADMIN --cap-add NET_ADMIN --security-opt seccomp=unconfined \
  --security-opt systempaths=unconfined --cgroupns=host \
  --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
  --network host --stop-signal SIGRTMIN+3 --stop-timeout 60 \
  -v /var/run/docker.sock:/run/docker.sock \
  -v "$work/blog-agent.deb:$DEB_IN_BOX:ro" \
  -v "$work/seed:/var/lib/cloud/seed/nocloud:ro" \
  "$root_image" /lib/systemd/systemd 2>&1); then
  die "systemd container starts" "$out"
fi
t_boot=$SECONDS
in_box() { docker exec "$box" "$@"; }
# $(show PROP): one property of the unit, e.g. show ActiveState.
show() { in_box systemctl show -p "$1" --value blog-agent 2>/dev/null; }
is_active() { [ "$(show ActiveState)" = active ]; }

booted() { # the boot job queue is empty: running, or degraded (some unit failed)
  state=$(in_box systemctl is-system-running 2>/dev/null)
  [ "$state" = running ] || [ "$state" = degraded ]
}
state=""
if poll 180 booted && booted; then
  pid1=$(in_box readlink /proc/1/exe)
  failed_units=$(in_box systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
  ok "systemd booted as PID 1 ($pid1) in $((SECONDS - t_boot))s: $state${failed_units:+ (failed: ${failed_units% })}"
else
  fail "systemd booted as PID 1 (state: ${state:-unknown})" "$(docker logs "$box" 2>&1 | tail -n 20)"
fi

# cloud-init 22.4 exits 0 when done (1 on error); newer releases exit 2 for recoverable errors.
# Backgrounded and waited for, so an interrupt does not wait for it.
in_box timeout 300 cloud-init status --wait --long >"$work/cloud-init-status" 2>&1 &
wait $!
ci_rc=$?
ci_out=$(cat "$work/cloud-init-status")
ci_status=$(awk '/^status:/ {print $2}' <<<"$ci_out")
if [ $ci_rc = 0 ] || [ $ci_rc = 2 ]; then
  ok "cloud-init finished (status: $ci_status, exit $ci_rc) in $((SECONDS - t_boot))s since boot"
else
  fail "cloud-init finished (exit $ci_rc)" "$ci_out"
fi

# shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
if v=$(in_box dpkg-query -W -f '${Version}' blog-agent 2>/dev/null) && [ "$v" = "$deb_version" ]; then
  ok "user-data installed the built package (blog-agent $v: $(in_box blog-agent --version 2>&1))"
else
  fail "user-data installed the built package" "dpkg-query: ${v:-not installed}"
fi

# What runcmd recorded just before and just after `dpkg -i` (tests/boot/user-data.yaml.in).
localnet_before=$(in_box cat /var/lib/blog-agent-e2e/route_localnet.before-install 2>&1)
localnet_after=$(in_box cat /var/lib/blog-agent-e2e/route_localnet.after-install 2>&1)
if [ "$localnet_before" = 0 ]; then
  ok "Ubuntu order: docker0 existed with net.ipv4.conf.docker0.route_localnet = 0 when the package was installed"
else
  fail "Ubuntu order: docker0 existed with route_localnet = 0 when the package was installed" "before dpkg -i: $localnet_before"
fi
if [ "$localnet_after" = 1 ]; then
  ok "the package's install script set net.ipv4.conf.docker0.route_localnet to 1 (0 before dpkg -i, 1 after)"
else
  fail "the package's install script sets net.ipv4.conf.docker0.route_localnet to 1" "after dpkg -i: $localnet_after"
fi

if poll 120 is_active; then
  ok "blog-agent is active (READY=1 arrived) $((SECONDS - t_boot))s after boot"
else
  fail "blog-agent is active" "ActiveState=$(show ActiveState) SubState=$(show SubState) Result=$(show Result)"
fi

status_names() { # status_names SHA: StatusText names the environment and the SHA (12 chars)
  local s
  s=$(show StatusText)
  [[ "$s" == *"$ENVIRONMENT"* && "$s" == *"${1:0:12}"* ]]
}
if poll 60 status_names "$sha1"; then
  ok "StatusText names the environment and the SHA: \"$(show StatusText)\""
else
  fail "StatusText names $ENVIRONMENT and ${sha1:0:12}" "StatusText=$(show StatusText)"
fi

serves() { # serves SHA: the host port answers 2xx with a page naming SHA
  local body
  body=$(curl -fsS --max-time 2 "http://127.0.0.1:$port/" 2>/dev/null) && [[ "$body" == *"$1"* ]]
}
if poll 60 serves "$sha1"; then
  ok "the blog serves $sha1 (from S3) on 127.0.0.1:$port"
else
  fail "the blog serves $sha1 on 127.0.0.1:$port" "$(curl -sS --max-time 2 "http://127.0.0.1:$port/" 2>&1)"
fi

switched() { # the run's DNAT chain sends 127.0.0.1:PORT to the blog container, which publishes nothing
  local ip rules bindings
  ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' "$blog" 2>/dev/null) && [ -n "$ip" ] || return 1
  rules=$(iptables -w 5 -t nat -S "$chains-DNAT" 2>/dev/null) || return 1
  bindings=$(docker inspect -f '{{json .HostConfig.PortBindings}}' "$blog" 2>/dev/null)
  # The rule carries its owner's mark (`-m comment --comment "blog-agent:<container>"`).
  grep -E -- "-d 127\.0\.0\.1/32 -p tcp -m tcp --dport $port -m comment --comment \"blog-agent:$blog\" -j DNAT --to-destination ${ip//./\\.}:80\$" <<<"$rules" >/dev/null &&
    [[ "$bindings" =~ ^(null|\{\}|)$ ]] && echo "$ip"
}
if ip=$(switched); then
  ok "through the traffic switch: $chains-DNAT sends 127.0.0.1:$port to $blog at $ip:80, which publishes no port"
else
  fail "served through the traffic switch ($chains-DNAT -> $blog, no published port)" \
    "$(iptables -w 5 -t nat -S "$chains-DNAT" 2>&1; docker inspect -f '{{json .HostConfig.PortBindings}}' "$blog" 2>&1)"
fi

halt_objects() { # the keys under the release key's halted/ prefix in this run's bucket that judge a
  # release bad: markers, votes and reverted bake records (a host's "baked" record is good news)
  "$py" - "$bucket" "$HALT_PREFIX" <<'PY'
import sys, boto3
prefix = sys.argv[2]
page = boto3.client("s3").list_objects_v2(Bucket=sys.argv[1], Prefix=prefix)
keys = [o["Key"] for o in page.get("Contents", [])]
print(" ".join(k for k in keys if not (k.startswith(prefix + "bake/") and "/baked/" in k)))
PY
}
if halts=$(halt_objects 2>&1) && [ -z "$halts" ]; then
  ok "no halt marker: nothing under s3://$bucket/$HALT_PREFIX (the release was not judged bad)"
else
  fail "no halt marker under s3://$bucket/$HALT_PREFIX" "$halts"
fi

running=$(docker ps --filter "label=$LABEL=$run_id" --filter "name=^$blog\$" \
  --format '{{.Names}} {{.Label "io.blog-agent.sha"}}')
if [ "$running" = "$blog $sha1" ]; then
  ok "the host's dockerd runs $blog with $LABEL=$run_id and io.blog-agent.sha=$sha1"
else
  fail "the host's dockerd runs $blog with the run label and the SHA" "docker ps: ${running:-nothing}"
fi

# tracing-journald upper-cases field names and may prefix them (F_ by default); accept both.
journal_fields() { # journal_fields SHA: one entry carries env, sha and container
  in_box journalctl -u blog-agent -o json --no-pager 2>/dev/null | python3 -c '
import json, sys
env, sha, name = sys.argv[1:4]
def field(e, f):
    for k in (f, "F_" + f):
        if k in e:
            return k, e[k]
    return None, None
for line in sys.stdin:
    e = json.loads(line)
    got = [field(e, f) for f in ("ENV", "SHA", "CONTAINER")]
    if [v for _, v in got] == [env, sha, name]:
        print(" ".join("%s=%s" % kv for kv in got), "MESSAGE=%s" % e.get("MESSAGE"))
        sys.exit(0)
sys.exit(1)' "$ENVIRONMENT" "$1" "$blog"
}
if poll 30 journal_fields "$sha1"; then
  ok "journal has the agent's structured fields: $(journal_fields "$sha1")"
else
  fail "journal has structured fields env/sha/container for $sha1" \
    "$(in_box journalctl -u blog-agent -o json --no-pager 2>&1 | tail -n 3)"
fi

# The hardening is in force in this container (and the agent reached docker.sock anyway: it
# deployed above): only CAP_NET_ADMIN (bit 12) in the bounding set, no_new_privs, seccomp
# filter, / read-only.
sandboxed() {
  local pid st mounts
  pid=$(show MainPID)
  st=$(in_box cat "/proc/$pid/status") && mounts=$(in_box cat "/proc/$pid/mountinfo") || return 1
  grep -q '^CapBnd:[[:space:]]*0000000000001000$' <<<"$st" && grep -q '^NoNewPrivs:[[:space:]]*1$' <<<"$st" &&
    grep -q '^Seccomp:[[:space:]]*2$' <<<"$st" &&
    awk '$5 == "/" && $6 ~ /^ro,/ {r++} $5 == "/etc/blog-agent" && $6 ~ /^ro,/ {c++}
         $5 == "/var/lib/blog-agent" && $6 ~ /^rw,/ {w++} END {exit !(r && c && w)}' <<<"$mounts"
}
if sandboxed; then
  ok "the agent runs sandboxed: CapBnd=CAP_NET_ADMIN only, NoNewPrivs, seccomp, / and /etc/blog-agent read-only, state dir writable"
else
  fail "the agent runs sandboxed (ProtectSystem=strict and friends)" \
    "$(in_box sh -c "grep -E 'CapBnd|NoNewPrivs|Seccomp:' /proc/$(show MainPID)/status" 2>&1)"
fi
# Why the unit, not the agent, sets route_localnet: in the agent's mount namespace /proc has
# process directories only (ProcSubset=pid).
if in_box test -e /proc/sys/net/ipv4/conf && in_box nsenter -t "$(show MainPID)" -m test ! -e /proc/sys/net/ipv4/conf; then
  ok "the agent cannot see /proc/sys (ProcSubset=pid): route_localnet is the package's and the unit's to set"
else
  fail "the agent's /proc hides /proc/sys (ProcSubset=pid)" "$(in_box nsenter -t "$(show MainPID)" -m ls /proc/sys 2>&1 | head -n 3)"
fi

tag_reads=$(grep -c "GET /latest/meta-data/tags/instance/Environment HTTP/1.1\" 200 - token" "$work/imds.log")
if [ "$tag_reads" -ge 1 ] && grep -q '"PUT /latest/api/token' "$work/imds.log"; then
  ok "environment came from the instance tag over IMDSv2 (token PUT, $tag_reads tag read(s))"
else
  fail "environment came from the instance tag over IMDSv2" "$(cat "$work/imds.log")"
fi

# ---- 5. a new SHA in S3 ----------------------------------------------------------------------------
bash scripts/publish-image.sh "$sha2" good "$BLOG_AGENT_TEST_REGISTRY" "$repo" >/dev/null ||
  die "publish image $sha2"
"$py" scripts/put-release.py "$bucket" "$RELEASE_KEY" "$sha2" >/dev/null || die "write $sha2 to S3"
t0=$SECONDS
# The poll interval plus jitter, then pull + candidate probe + cut-over (about a second here).
budget=$((POLL_INTERVAL + POLL_JITTER + 15))
if poll "$budget" serves "$sha2"; then
  ok "a new SHA in S3 is served within $((SECONDS - t0))s (budget ${budget}s: ${POLL_INTERVAL}s poll + jitter + pull)"
else
  fail "a new SHA in S3 is served within ${budget}s" "$(curl -sS --max-time 2 "http://127.0.0.1:$port/" 2>&1)"
fi
poll 30 status_names "$sha2" || fail "StatusText follows the new SHA" "StatusText=$(show StatusText)"

# ---- 6. stop, restart ------------------------------------------------------------------------------
blog_id=$(docker ps -q --no-trunc --filter "name=^$blog\$")
serves_steadily() { # serves_steadily SHA SECONDS: every probe over SECONDS answers SHA
  local end=$((SECONDS + $2)) n=0
  while [ $SECONDS -lt $end ]; do
    serves "$1" || return 1
    n=$((n + 1))
    sleep 0.2
  done
  [ $n -gt 0 ]
}
if out=$(in_box systemctl stop blog-agent 2>&1) && [ "$(show ActiveState)" = inactive ] &&
  serves_steadily "$sha2" 3 &&
  [ "$(docker ps -q --no-trunc --filter "name=^$blog\$")" = "$blog_id" ]; then
  ok "systemctl stop blog-agent: agent inactive, the same blog container keeps serving $sha2"
else
  fail "systemctl stop blog-agent leaves the blog serving" \
    "$out ActiveState=$(show ActiveState) $(docker ps --filter "label=$LABEL=$run_id" --format '{{.Names}} {{.Status}}')"
fi

if out=$(in_box timeout 120 systemctl start blog-agent 2>&1) && [ "$(show ActiveState)" = active ]; then
  ok "systemctl start blog-agent: active again"
else
  fail "systemctl start blog-agent comes back active" "$out ActiveState=$(show ActiveState)"
fi
pid_before=$(show MainPID)
if out=$(in_box timeout 120 systemctl restart blog-agent 2>&1) && [ "$(show ActiveState)" = active ] &&
  [ "$(show MainPID)" != "$pid_before" ] && [ "$(show NRestarts)" = 0 ] && poll 30 status_names "$sha2"; then
  ok "systemctl restart blog-agent: active with a new main PID ($pid_before -> $(show MainPID)), NRestarts=0"
else
  fail "systemctl restart blog-agent comes back active" \
    "$out ActiveState=$(show ActiveState) MainPID=$pid_before->$(show MainPID) NRestarts=$(show NRestarts)"
fi

# ---- 6a. the unit's ExecStartPre= puts route_localnet back before the agent starts -----------------
# As if something reset it after the install (or docker0 came back without udev): the agent
# cannot fix it itself, the unit must. The old value is back on the next line either way.
echo 0 >"$DOCKER0_LOCALNET"
pid_before=$(show MainPID)
if out=$(in_box timeout 120 systemctl restart blog-agent 2>&1) && is_active &&
  [ "$(show MainPID)" != "$pid_before" ] && [ "$(cat "$DOCKER0_LOCALNET")" = 1 ] &&
  [[ "$(show ExecStartPre)" == *"status=0"* ]] && poll 30 serves "$sha2"; then
  ok "route_localnet reset to 0, then systemctl restart: ExecStartPre=+ set it to 1 before the agent started, $sha2 serves on 127.0.0.1:$port"
else
  fail "the unit's ExecStartPre sets route_localnet before the agent starts" \
    "$out route_localnet=$(cat "$DOCKER0_LOCALNET") ActiveState=$(show ActiveState) ExecStartPre=$(show ExecStartPre)"
  echo 1 >"$DOCKER0_LOCALNET"   # let the rest of the test run
fi

# ---- 6b. the watchdog: a drop-in shortens WatchdogSec (60s in the unit) so the test sees pings ----
dropin=/etc/systemd/system/blog-agent.service.d/90-boot-e2e-watchdog.conf
in_box sh -c "mkdir -p ${dropin%/*} && printf '[Service]\nWatchdogSec=4s\n' >$dropin && systemctl daemon-reload"
if in_box timeout 120 systemctl restart blog-agent >/dev/null 2>&1 && is_active; then
  wd_pid=$(show MainPID)
  pings=""
  steady=yes
  end=$((SECONDS + 10))   # 2.5 x WatchdogSec: a missed ping would get the agent killed
  while [ $SECONDS -lt $end ]; do
    [ "$(show ActiveState)/$(show MainPID)/$(show NRestarts)" = "active/$wd_pid/0" ] || { steady=no; break; }
    ts=$(show WatchdogTimestampMonotonic)
    [[ " $pings " == *" $ts "* ]] || pings="$pings $ts"
    sleep 0.5
  done
  n_pings=$(wc -w <<<"$pings")
  if [ "$steady" = yes ] && [ "$n_pings" -ge 3 ]; then
    ok "watchdog: with WatchdogSec=4s the agent pinged $n_pings times in 10s and was never killed"
  else
    fail "watchdog pings keep the agent alive" \
      "steady=$steady pings=$n_pings ActiveState=$(show ActiveState) MainPID=$wd_pid->$(show MainPID) NRestarts=$(show NRestarts)"
  fi
else
  fail "restart with WatchdogSec=4s" "ActiveState=$(show ActiveState)"
fi
in_box sh -c "rm -f $dropin && systemctl daemon-reload"
if in_box timeout 120 systemctl restart blog-agent >/dev/null 2>&1 && is_active &&
  [ "$(show WatchdogUSec)" = 1min ]; then
  :
else
  fail "back to the shipped unit (WatchdogSec=60s)" "WatchdogUSec=$(show WatchdogUSec) ActiveState=$(show ActiveState)"
fi

# ---- 7. a configuration error: exit 78, no restart loop ---------------------------------------------
in_box cp -p /etc/blog-agent/config.toml /etc/blog-agent/config.toml.e2e-good
in_box sed -i '/^\[container\]/a bogus_key = "boot-e2e"' /etc/blog-agent/config.toml
since=$(in_box date '+%Y-%m-%d %H:%M:%S')
in_box timeout 120 systemctl restart blog-agent >/dev/null 2>&1   # fails, as it should
failed_78() { [ "$(show ActiveState)" = failed ] && [ "$(show ExecMainStatus)" = 78 ]; }
if poll 30 failed_78; then
  # RestartSec=5s: a restart loop would show within 5 s. Watch for 8.
  end=$((SECONDS + 8))
  steady=yes
  while [ $SECONDS -lt $end ]; do
    st="$(show ActiveState)/$(show NRestarts)"
    [ "$st" = failed/0 ] || { steady="became $st"; break; }
    sleep 0.5
  done
  if [ "$steady" = yes ]; then
    ok "config error: unit failed with status 78 (Result=$(show Result)) and stayed failed, NRestarts=0, for 8s"
  else
    fail "config error does not restart-loop" "ActiveState/NRestarts $steady"
  fi
else
  fail "config error makes the unit fail with status 78" \
    "ActiveState=$(show ActiveState) ExecMainStatus=$(show ExecMainStatus) Result=$(show Result)"
fi
if in_box journalctl -u blog-agent --since "$since" --no-pager 2>/dev/null | grep bogus_key >/dev/null; then
  ok "the journal names the bad key: $(in_box journalctl -u blog-agent --since "$since" --no-pager -o cat 2>/dev/null | grep -m1 bogus_key | cut -c1-160)"
else
  fail "the journal names the bad key" "$(in_box journalctl -u blog-agent --since "$since" --no-pager 2>&1 | tail -n 5)"
fi
if serves "$sha2"; then
  ok "the blog kept serving $sha2 while the agent was failed"
else
  fail "the blog kept serving while the agent was failed"
fi
in_box mv /etc/blog-agent/config.toml.e2e-good /etc/blog-agent/config.toml
if out=$(in_box timeout 120 systemctl restart blog-agent 2>&1) && [ "$(show ActiveState)" = active ]; then
  ok "config fixed: systemctl restart brings the agent back active"
else
  fail "config fixed: systemctl restart brings the agent back active" "$out ActiveState=$(show ActiveState)"
fi

# ---- 8. reboot: stop and start the host container while probing the site ---------------------------
(
  while :; do
    if serves "$sha2"; then echo "ok $(date +%T.%N)"; else echo "FAIL $(date +%T.%N)"; fi
    sleep 0.2
  done
) >"$work/probe.log" 2>&1 &
probe_pid=$!
poll 10 grep -q . "$work/probe.log"
halt_since=$(in_box date '+%Y-%m-%d %H:%M:%S')
t0=$SECONDS
if out=$(docker stop "$box" 2>&1) && [ "$(docker inspect -f '{{.State.Running}}' "$box")" = false ]; then
  down=$((SECONDS - t0))
  # The host is down: the blog (a child of the host's dockerd) is still there.
  if serves "$sha2"; then
    ok "host halted in ${down}s (docker stop, SIGRTMIN+3); the blog still serves"
  else
    fail "the blog serves while the host is down"
  fi
else
  fail "host halts on docker stop" "$out"
fi
docker start "$box" >/dev/null 2>&1 || fail "host starts again (docker start)"
t0=$SECONDS
if poll 120 is_active && poll 30 status_names "$sha2"; then
  ok "after reboot blog-agent is active again in $((SECONDS - t0))s: \"$(show StatusText)\""
else
  fail "after reboot blog-agent is active again" "ActiveState=$(show ActiveState) Result=$(show Result)"
fi
# The halt went through systemd: the agent got SIGTERM and exited cleanly (the journal is
# persistent; the kernel's boot id is the host's, so select by time, not by -b).
halt_log=$(in_box journalctl -u blog-agent --since "$halt_since" --no-pager -o cat 2>/dev/null)
if grep -q 'SIGTERM' <<<"$halt_log" && grep -q 'blog container keeps running' <<<"$halt_log" &&
  ! grep -qi 'failed\|status=' <<<"$halt_log"; then
  ok "the halt stopped the agent cleanly: $(grep -m1 'blog container keeps running' <<<"$halt_log")"
else
  fail "the halt stopped the agent cleanly" "$halt_log"
fi
serves_steadily "$sha2" 2 >/dev/null
kill "$probe_pid" 2>/dev/null
wait "$probe_pid" 2>/dev/null
probe_pid=""
probes=$(grep -c . "$work/probe.log")
misses=$(grep -c '^FAIL' "$work/probe.log")
if [ "$misses" = 0 ] && [ "$probes" -gt 0 ]; then
  ok "the site served $sha2 throughout the reboot ($probes probes, 0 failed)"
else
  fail "the site served throughout the reboot ($misses of $probes probes failed)" "$(grep '^FAIL' "$work/probe.log" | head -n 5)"
fi
if [ "$(docker ps -q --no-trunc --filter "name=^$blog\$")" = "$blog_id" ]; then
  ok "the agent kept the running container across the reboot (nothing redeployed)"
else
  fail "the agent kept the running container across the reboot" \
    "$(docker ps -a --filter "label=$LABEL=$run_id" --format '{{.ID}} {{.Names}} {{.Status}}')"
fi

# ---- 9. the whole run: nothing judged bad ----------------------------------------------------------
if halts=$(halt_objects 2>&1) && [ -z "$halts" ]; then
  ok "no halt marker written during the whole run: nothing under s3://$bucket/$HALT_PREFIX"
else
  fail "no halt marker written during the whole run (s3://$bucket/$HALT_PREFIX)" "$halts"
fi

[ "$failed" = 0 ]   # the summary line is printed by cleanup, on every path
