#!/usr/bin/env bash
# Checks the deployment files that are not Rust: the systemd unit (verify + security exposure
# threshold), the cloud-init user-data (schema, size, config keys), the JSON policies and the
# CloudFormation template.
# Prints one line per check, `ok ...` or `FAIL ...` (details indented below), and exits 1 if
# any check failed. Installs systemd-analyze and cloud-init from Debian when missing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

unit=systemd/blog-agent.service
cloud_inits=(cloud-init/ubuntu.yaml cloud-init/al2023.yaml)
jsons=(packaging/iam-policy.json packaging/iam-policy-staging.json
  packaging/iam-policy-production.json packaging/iam-policy-operator.json
  packaging/launch-template.json)
# `systemd-analyze security --offline=yes` scores the unit 1.8 (systemd 252, Debian 12): 1.6
# before the traffic switch, plus CAP_NET_ADMIN (0.2... rounded) and AF_NETLINK (0.1) for
# iptables. Removing any other hardening line (CapabilityBoundingSet=, RestrictNamespaces=,
# SystemCallFilter=, PrivateDevices=, ProtectSystem=, ProtectKernel*=, ...) raises it above
# 1.8, so the measured value is the bound. Re-measured after adding the ExecStartPre=+ line that
# applies docker0's sysctl keys: still 1.8 (the score rates the main process's sandbox; a "+"
# command runs outside it). Re-measure if CI moves to another systemd.
max_exposure=1.8
# EC2 rejects user-data over 16 KiB.
max_user_data=16384

# shellcheck source=scripts/lib/checks.sh
source scripts/lib/checks.sh

# ---- tools ---------------------------------------------------------------------------------
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
/usr/bin/python3 -c 'import yaml, tomllib' >/dev/null 2>&1 || need+=(python3 python3-yaml)
command -v rsyslogd >/dev/null 2>&1 || need+=(rsyslog)
command -v logrotate >/dev/null 2>&1 || need+=(logrotate)
[ ${#need[@]} -eq 0 ] || apt_install check-deploy-files "${need[@]}"

# ---- systemd unit ----------------------------------------------------------------------------
# `verify` checks that ExecStart's binary exists. Rather than touch /usr/bin on this machine,
# verify inside a throwaway root: the distribution's units, stubs for the unit's three
# commands (/usr/bin/blog-agent, /bin/kill, /usr/lib/systemd/systemd-sysctl) and our unit. verify
# exits 0 on parse warnings ("..., ignoring"), so any output at all is a failure. --man=no: the
# man page comes with the package.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system"
ln -s usr/bin "$root/bin"
ln -s usr/lib "$root/lib"
cp -a "$(readlink -f /lib/systemd/system)" "$root/usr/lib/systemd/system"
for cmd in usr/bin/blog-agent usr/bin/kill usr/lib/systemd/systemd-sysctl; do
  printf '#!/bin/sh\nexit 0\n' >"$root/$cmd"
  chmod 0755 "$root/$cmd"
done
cp "$unit" "$root/etc/systemd/system/blog-agent.service"
out=$(systemd-analyze verify --man=no --root="$root" blog-agent.service 2>&1)
rc=$?
if [ $rc -eq 0 ] && [ -z "$out" ]; then ok "systemd-analyze verify $unit"; else fail "systemd-analyze verify $unit (exit $rc)" "$out"; fi

# Host prerequisites of the traffic switch: before the agent starts, docker0's keys of the
# package's sysctl.d file (route_localnet, ARP) are applied with full privileges ("+": the agent's
# own sandbox hides /proc/sys), and a host without docker0 yet still starts it ("-"). The command
# must exist where the unit says on this machine's systemd (the "-" would hide a typo at runtime).
pre=$(grep '^ExecStartPre=' "$unit")
sysctl_cmd=/usr/lib/systemd/systemd-sysctl
if [ "$(grep -c '^ExecStartPre=' "$unit")" = 1 ] &&
  grep -E "^ExecStartPre=(\+-|-\+)$sysctl_cmd( |$)" <<<"$pre" >/dev/null &&
  grep -- '--prefix=/net/ipv4/conf/docker0\( \|$\)' <<<"$pre" >/dev/null &&
  grep -- '--prefix=/net/ipv4/neigh/docker0\( \|$\)' <<<"$pre" >/dev/null &&
  [ -x "$sysctl_cmd" ] &&
  grep -E '^net\.ipv4\.conf\.docker0\.route_localnet *= *1$' packaging/sysctl/60-blog-agent.conf >/dev/null; then
  ok "$unit applies docker0's sysctl keys before the agent starts (${pre#ExecStartPre=})"
else
  fail "$unit applies docker0's sysctl keys before the agent starts (ExecStartPre=+-$sysctl_cmd --prefix=/net/ipv4/conf/docker0 --prefix=/net/ipv4/neigh/docker0; $sysctl_cmd executable here)" "${pre:-no ExecStartPre= line}"
fi

out=$(systemd-analyze security --offline=yes "$unit" 2>&1)
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
if [ -z "$score" ]; then
  fail "systemd-analyze security $unit: no score" "$out"
elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
  ok "systemd-analyze security $unit: exposure $score <= $max_exposure"
else
  fail "systemd-analyze security $unit: exposure $score > $max_exposure" "$(grep '✗' <<<"$out")"
fi

# ---- cloud-init ------------------------------------------------------------------------------
for f in "${cloud_inits[@]}"; do
  if out=$(cloud-init schema -c "$f" 2>&1); then ok "cloud-init schema $f"; else fail "cloud-init schema $f" "$out"; fi
  size=$(wc -c <"$f")
  if [ "$size" -lt "$max_user_data" ]; then ok "$f is $size bytes (< $max_user_data)"; else fail "$f is $size bytes (>= $max_user_data)"; fi
  # The agent rejects unknown keys (exit 78): every key of the config.toml written by
  # write_files must exist in packaging/config.example.toml (commented-out keys included)
  # with the same TOML type.
  if out=$(/usr/bin/python3 - "$f" packaging/config.example.toml <<'EOF' 2>&1
import re, sys, tomllib, yaml
user_data, example = sys.argv[1], sys.argv[2]
text = open(example).read()
# `# name = "staging"` documents an optional key: uncomment such lines before parsing.
allowed = tomllib.loads(re.sub(r'(?m)^#\s*([a-z_]+ = )', r'\1', text))
files = [w for w in yaml.safe_load(open(user_data)).get("write_files", [])
         if w.get("path") == "/etc/blog-agent/config.toml"]
if len(files) != 1:
    sys.exit("write_files has no /etc/blog-agent/config.toml")
config = tomllib.loads(files[0]["content"])
def walk(have, want, where):
    for key, value in have.items():
        name = f"{where}.{key}" if where else key
        if key not in want:
            if where == "release.keys":
                continue  # one key per environment: names are free
            sys.exit(f"unknown key {name}")
        if isinstance(value, dict) and want[key] != {}:
            walk(value, want[key], name)
        elif type(value) is not type(want[key]):
            sys.exit(f"{name}: {type(value).__name__}, example has {type(want[key]).__name__}")
walk(config, allowed, "")
EOF
  ); then
    ok "$f config.toml keys match packaging/config.example.toml"
  else
    fail "$f config.toml keys match packaging/config.example.toml" "$out"
  fi
  # Whoever can write the bucket's packages/ must not get root on a new host: the install step,
  # run with stand-ins for aws, dnf/apt-get and cloud-init, installs only a package matching
  # PKG_SHA256, and refuses (exit non-zero) without one.
  if out=$(/usr/bin/python3 - "$f" <<'EOF' 2>&1
import re, sys
sys.path.insert(0, "scripts")
from cfn_check import install_refusals
text = open(sys.argv[1]).read()
pin = lambda sha: re.sub(r'(?m)^(\s*)PKG_SHA256=""$', lambda m: f'{m[1]}PKG_SHA256="{sha}"', text, count=1)
print(install_refusals(pin))
EOF
  ); then
    ok "$f installs the package only when it matches PKG_SHA256 ($out)"
  else
    fail "$f installs the package only when it matches PKG_SHA256" "$out"
  fi
done

# The journal's way to CloudWatch Logs in cloud-init/al2023.yaml: the rsyslog rule and the
# logrotate file parse (rsyslogd -N1, logrotate -d on a scratch copy), the CloudWatch agent's
# config is JSON naming both files (scripts/cfn_check.py checks the stack's log group in it).
journal_files() {
  local d rc=0
  d=$(mktemp -d)
  /usr/bin/python3 - "$d" <<'EOF' || rc=1
import json, sys, yaml
d = sys.argv[1]
files = {w["path"]: w["content"] for w in yaml.safe_load(open("cloud-init/al2023.yaml"))["write_files"]}
rs = [c for p, c in files.items() if p.startswith("/etc/rsyslog.d/")]
lr = [c for p, c in files.items() if p.startswith("/etc/logrotate.d/")]
cw = [c for p, c in files.items() if p.startswith("/opt/aws/amazon-cloudwatch-agent/")]
assert len(rs) == len(lr) == len(cw) == 1, "expected one rsyslog, logrotate and CloudWatch agent file"
paths = {f["file_path"] for f in json.loads(cw[0])["logs"]["logs_collected"]["files"]["collect_list"]}
assert paths == {"/var/log/blog-agent.log", "/var/log/cloud-init-output.log"}, paths
assert "/var/log/blog-agent.log" in rs[0] and "/var/log/blog-agent.log" in lr[0], "file names differ"
open(f"{d}/rsyslog.conf", "w").write('module(load="imuxsock")\n' + rs[0])
open(f"{d}/logrotate.conf", "w").write(lr[0].replace("/var/log/blog-agent.log", f"{d}/blog-agent.log"))
open(f"{d}/blog-agent.log", "w").close()
EOF
  if [ $rc -eq 0 ]; then
    rsyslogd -N1 -f "$d/rsyslog.conf" >"$d/out" 2>&1 || { cat "$d/out"; rc=1; }
    # logrotate -d exits 0 on an unknown directive: its "error:" lines count.
    if ! logrotate -d -s "$d/state" "$d/logrotate.conf" >"$d/out" 2>&1 || grep -q '^error:' "$d/out"; then
      grep '^error:' "$d/out" || cat "$d/out"
      rc=1
    fi
  fi
  rm -rf "$d"
  return $rc
}
what="cloud-init/al2023.yaml: rsyslog rule, logrotate file and CloudWatch agent config parse"
if out=$(journal_files 2>&1); then ok "$what"; else fail "$what" "$out"; fi

# ---- JSON --------------------------------------------------------------------------------
for f in "${jsons[@]}"; do
  if out=$(python3 -m json.tool "$f" 2>&1 >/dev/null); then ok "json $f"; else fail "json $f" "$out"; fi
done
# A host reads the halt markers and every host's votes under its halt prefix (GetObject on
# <folder>/halted/*) and writes only its own vote: PutObject on <folder>/halted/<40 ?>/${aws:userid}
# (its caller identity, AROA...:i-... for an instance profile; the SHA as 40 single-character
# wildcards, so that under one SHA a host can write one key only), and its own bake records:
# PutObject on <folder>/halted/bake/<40 ?>/baked/${aws:userid} and .../reverted/${aws:userid}
# (docs/fleet.md), nothing else. No statement may grant a delete (s3:Delete*), a wildcard action
# (s3:*, s3:Put*, *), or an S3 write other than those PutObjects: the decisive marker
# <folder>/halted/<sha> and unhalt are the operators'.
host_halt_grants() {
  local f=$1
  shift
  local what="$f: reads $(printf '%s/halted/* ' "$@")and writes only its own vote (halted/<40 ?>/\${aws:userid}) and bake records (halted/bake/<40 ?>/{baked,reverted}/\${aws:userid}), deletes nothing"
  local out
  if out=$(/usr/bin/python3 - "$f" "$@" <<'EOF' 2>&1
import json, sys
path, folders = sys.argv[1], sys.argv[2:]
policy = json.load(open(path))
arn = "arn:aws:s3:::blog-artifacts/"
reads = {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions"}
votes = sorted(f"{arn}{f}/halted/{'?' * 40}/${{aws:userid}}" for f in folders)
records = sorted(f"{arn}{f}/halted/bake/{'?' * 40}/{o}/${{aws:userid}}" for f in folders for o in ("baked", "reverted"))
halts = {f"{arn}{f}/halted/*" for f in folders}
put, record, get = False, False, set()
for st in policy["Statement"]:
    sid = st.get("Sid")
    if st["Effect"] != "Allow":
        sys.exit(f"{sid}: Effect {st['Effect']}")
    actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
    resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
    bad = [a for a in actions if "*" in a or a.lower().startswith("s3:delete")]
    if bad:
        sys.exit(f"{sid}: {bad}")
    writes = [a for a in actions if a.startswith("s3:") and a not in reads]
    if writes:
        if writes != ["s3:PutObject"] or sorted(resources) not in (votes, records):
            sys.exit(f"{sid}: {writes} on {resources}; a host may only s3:PutObject its own vote, {votes}, "
                     f"or its own bake records, {records}")
        put |= sorted(resources) == votes
        record |= sorted(resources) == records
    if "s3:GetObject" in actions:
        get |= halts & set(resources)
if not put:
    sys.exit(f"no s3:PutObject on {votes}: the host cannot vote")
if not record:
    sys.exit(f"no s3:PutObject on {records}: the host cannot record its bakes")
if get != halts:
    sys.exit(f"no s3:GetObject on {sorted(halts - get)}: the host cannot read markers and votes")
EOF
  ); then
    ok "$what"
  else
    fail "$what" "$out"
  fi
}
# One role per environment: each policy names only its own release key.
for env in staging production; do
  f=packaging/iam-policy-$env.json
  other=$([ $env = staging ] && echo production/prodbuild.txt || echo staging/stagebuild.txt)
  own=$([ $env = staging ] && echo staging/stagebuild.txt || echo production/prodbuild.txt)
  if grep -q "$own" "$f" && ! grep -q "$other" "$f"; then ok "$f grants only $own"; else fail "$f grants only $own"; fi
  # Halt objects: read under the environment's own halted/ prefix; write only this host's vote.
  host_halt_grants "$f" "$(dirname "$own")"
  other_halt="$(dirname "$other")/halted/"
  if grep -q "$other_halt" "$f"; then fail "$f names $other_halt (another environment's halt prefix)"; fi
  # Launch gate: complete and heartbeat the lifecycle action of the environment's own group only.
  if out=$(/usr/bin/python3 - "$f" "blog-$env" <<'EOF' 2>&1
import json, sys
policy, group = json.load(open(sys.argv[1])), sys.argv[2]
want = {"autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"}
for st in policy["Statement"]:
    actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
    resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
    if want & set(actions):
        if len(resources) != 1 or not resources[0].endswith(f":autoScalingGroupName/{group}"):
            sys.exit(f"{st.get('Sid')}: completes lifecycle actions on {resources}, expected only group {group}")
        want -= set(actions)
if want:
    sys.exit(f"no grant of {sorted(want)} on group {group}")
EOF
  ); then
    ok "$f completes lifecycle actions of group blog-$env only"
  else
    fail "$f completes lifecycle actions of group blog-$env only" "$out"
  fi
done

# The shared role of packaging/iam-policy.json: both environments' halt prefixes, the same rules.
host_halt_grants packaging/iam-policy.json staging production

# The operators' policy: the decisive marker and unhalt (put and delete under the halt prefixes,
# nothing else written or deleted; no s3:DeleteObjectVersion, so history stays), reads of the
# release objects' history for halt's rollback target.
f=packaging/iam-policy-operator.json
what="$f: writes and deletes only under staging/halted/* and production/halted/*; no version deletes"
if out=$(/usr/bin/python3 - "$f" <<'EOF' 2>&1
import json, sys
policy = json.load(open(sys.argv[1]))
arn = "arn:aws:s3:::blog-artifacts/"
halts = sorted(f"{arn}{e}/halted/*" for e in ("staging", "production"))
reads = {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions"}
want = {"s3:PutObject", "s3:DeleteObject"}
for st in policy["Statement"]:
    sid = st.get("Sid")
    if st["Effect"] != "Allow":
        sys.exit(f"{sid}: Effect {st['Effect']}")
    actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
    resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
    bad = [a for a in actions if "*" in a or a == "s3:DeleteObjectVersion"]
    if bad:
        sys.exit(f"{sid}: {bad}")
    writes = {a for a in actions if a.startswith("s3:") and a not in reads}
    if writes:
        if not writes <= want or sorted(resources) != halts:
            sys.exit(f"{sid}: {sorted(writes)} on {resources}; expected only {sorted(want)} on {halts}")
        want -= writes
if want:
    sys.exit(f"no grant of {sorted(want)} on {halts}: halt or unhalt cannot work")
EOF
); then ok "$what"; else fail "$what" "$out"; fi

# ---- CloudFormation --------------------------------------------------------------------------
# The environment as one template: cfn-lint, its policies and user-data against the files
# above, and (when moto answers at AWS_ENDPOINT_URL) the stack created on moto.
echo "== CloudFormation (scripts/check-cloudformation.sh)"
bash scripts/check-cloudformation.sh || failures=$((failures + 1))
# ---- CI (the pipeline's own half) -------------------------------------------------------------
echo "== CI configs and the publisher roles (scripts/check-ci-config.sh)"
bash scripts/check-ci-config.sh || failures=$((failures + 1))

finish check-deploy-files
