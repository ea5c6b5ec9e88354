#!/usr/bin/env bash
# Installs everything the local stack needs (the demo's and the tests'), from Debian and PyPI
# only. The Rust tools only the tests use (cargo-deny, cargo-nextest) are installed by
# scripts/test.sh, cargo-auditable by scripts/package.sh: `make demo` builds none of them.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${BLOG_AGENT_VENV:-$here/.stack/venv}

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need_apt+=(apache2-utils)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null || need_apt+=(busybox-static)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v iptables-restore >/dev/null 2>&1 && command -v iptables-legacy >/dev/null 2>&1 || need_apt+=(iptables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
# Signed releases: tests sign with Debian's minisign CLI, as CI does ([release] public_key).
command -v minisign >/dev/null 2>&1 || need_apt+=(minisign)
# The host's clock set off for one agent process (tests/clock.rs preloads libfaketime).
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/moto_server" ]; then
  echo "install-deps: moto[server] into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]'
fi
# The reference parser of the Prometheus text format: tests/fleet.rs checks the metrics
# textfile with it (prometheus_client.parser), not by eye.
if ! "$venv/bin/python" -c 'import prometheus_client.parser' >/dev/null 2>&1; then
  echo "install-deps: prometheus_client into $venv" >&2
  "$venv/bin/pip" install -q 'prometheus_client>=0.20,<1'
fi
# JSON Schema validation of the reference CI configs, offline: scripts/check-ci-config.sh runs
# check-jsonschema with the CircleCI and GitHub Actions schemas it bundles (--builtin-schema).
if [ ! -x "$venv/bin/check-jsonschema" ]; then
  echo "install-deps: check-jsonschema into $venv" >&2
  "$venv/bin/pip" install -q 'check-jsonschema>=0.29,<1'
fi
