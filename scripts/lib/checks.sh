# shellcheck shell=bash
# Shared by scripts/check-*.sh: each check prints one line, `ok ...` or `FAIL ...` (details
# indented below); `finish` ends the script with exit 1 if any check failed. Source it from the
# repository's root.

failures=0

ok() { echo "ok   $*"; }

# fail SUMMARY [DETAIL]
fail() {
  echo "FAIL $1"
  # shellcheck disable=SC2001 # indents every line of the detail
  [ -n "${2:-}" ] && sed 's/^/     /' <<<"$2"
  failures=$((failures + 1))
}

# apt_install WHO PACKAGE...: installs Debian packages, refreshing the package lists only if
# they are missing or the install fails with them; exits 1 with a FAIL line if it cannot.
apt_install() {
  local who=$1
  shift
  echo "$who: apt-get install $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || apt-get update -qq >&2
  if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
      { echo "FAIL cannot install $*"; exit 1; }
  fi
}

# finish WHO: the summary line, and the exit status.
finish() {
  if [ "$failures" -gt 0 ]; then
    echo "$1: $failures check(s) failed"
    exit 1
  fi
  echo "$1: all checks passed"
}
