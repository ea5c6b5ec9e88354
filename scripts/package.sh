#!/usr/bin/env bash
# Builds the static x86_64 musl release binary, the man page and completions, the .deb and the
# .rpm, checks what is inside them, and installs the .deb on this machine as a smoke test.
# Installs its own tools (musl target, musl-tools, rpm, cargo-auditable, cargo-deb,
# cargo-generate-rpm).
#
# CARGO_TARGET_DIR is honoured for the build (e.g. CARGO_TARGET_DIR=/work/target-pkg, to keep
# the release build out of a target dir another build is using): the binary is read from there,
# as cargo-deb and cargo-generate-rpm do. The man pages and completions (target/assets, named so
# in Cargo.toml's assets) and the packages (target/packages, where scripts/boot-e2e.sh looks)
# stay under ./target either way.
set -euo pipefail
# Pipes into grep use `grep PAT >/dev/null`, never `grep -q`: -q exits at the first match, and a
# writer with more to say (readelf -S prints over 4 KiB) then dies of SIGPIPE, which pipefail turns
# into a failed check of a binary that is fine.
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
target_dir=${CARGO_TARGET_DIR:-target}
out=target/packages
ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; exit 1; }

rustup target list --installed | grep -x "$target" >/dev/null || rustup target add "$target"
need_apt=()
command -v musl-gcc >/dev/null || need_apt+=(musl-tools)
command -v rpm >/dev/null || need_apt+=(rpm)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
command -v cargo-auditable >/dev/null || cargo install --locked --quiet cargo-auditable
command -v cargo-deb >/dev/null || cargo install --locked --quiet cargo-deb
command -v cargo-generate-rpm >/dev/null || cargo install --locked --quiet cargo-generate-rpm

echo "== static release build ($target), with its dependency list embedded (cargo auditable)" >&2
cargo auditable build --release --locked --target "$target"
bin=$target_dir/$target/release/blog-agent
# Rust's musl target links static-PIE (keeps ASLR): glibc's ldd calls that "statically linked"
# rather than "not a dynamic executable". Either way there must be no program interpreter.
ldd_says=$(ldd "$bin" 2>&1 || true)
if grep -qE "not a dynamic executable|statically linked" <<<"$ldd_says" && ! readelf -l "$bin" | grep INTERP >/dev/null; then
  ok "static: ldd says '$(echo $ldd_says)', no ELF interpreter"
else
  fail "not static: ldd says: $ldd_says"
fi
size=$(stat -c %s "$bin")
[ "$size" -lt $((10 * 1024 * 1024)) ] && ok "binary size $((size / 1024)) KiB (< 10 MiB)" || fail "binary is $size bytes"
"$bin" --version | grep "(commit " >/dev/null && ok "$("$bin" --version)" || fail "--version lacks the commit"
# The dependency list cargo-auditable embeds (zlib-compressed JSON in the .dep-v0 section, kept
# by `strip = true`), which `cargo audit bin` and other scanners read on a host.
deps=$(mktemp)
readelf -S "$bin" | grep '\.dep-v0' >/dev/null && objcopy --dump-section .dep-v0="$deps" "$bin" /dev/null \
  || fail "no .dep-v0 section: the binary was not built with cargo auditable"
audit=$(python3 -c 'import json, sys, zlib
d = json.loads(zlib.decompress(open(sys.argv[1], "rb").read()))
p = d["packages"]
print(len(p), " ".join(sorted(x["name"] + "@" + x["version"] for x in p if x["name"] in ("blog-agent", "rustls", "hyper", "h2"))))' "$deps") \
  || fail ".dep-v0 does not hold cargo-auditable's compressed JSON"
rm -f "$deps"
grep -q "blog-agent@" <<<"$audit" && ! grep -qE "rustls@0\.21|hyper@0\.14|h2@0\.3" <<<"$audit" \
  && ok "embedded dependency list (.dep-v0): ${audit%% *} crates; $(cut -d' ' -f2- <<<"$audit")" || fail "embedded dependency list: $audit"
# Where cargo-audit is installed (it is not required), scan the binary as an operator would;
# offline against the advisory snapshot when scripts/test.sh has unpacked one.
if command -v cargo-audit >/dev/null; then
  audit_db=target/advisory-dbs/advisory-db-3157b0e258782691
  audit_args=()
  [ -d "$audit_db/crates" ] && audit_args=(--db "$audit_db" --no-fetch)
  cargo audit "${audit_args[@]}" bin "$bin" && ok "cargo audit bin: no known vulnerability" || fail "cargo audit bin $bin"
fi

rm -rf target/assets "$out"
mkdir -p "$out"
"$bin" generate-assets target/assets
cargo deb --no-build --no-strip --target "$target" --output "$out/" >/dev/null
cargo generate-rpm --target "$target" --output "$out/" >/dev/null
deb=$(ls "$out"/*.deb)
rpmfile=$(ls "$out"/*.rpm)
ok "built $(basename "$deb") and $(basename "$rpmfile")"

# Contents: the same files in both, at each distribution's paths.
deb_list=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#')
rpm_list=$(rpm -qlp "$rpmfile" 2>/dev/null)
for f in /usr/bin/blog-agent /usr/share/doc/blog-agent/config.example.toml \
         /usr/share/bash-completion/completions/blog-agent /usr/share/fish/vendor_completions.d/blog-agent.fish; do
  grep -qx "$f" <<<"$deb_list" && grep -qx "$f" <<<"$rpm_list" && ok "both packages ship $f" || fail "$f missing from a package"
done
# The documents the unit and the man pages point to (/usr/share/doc/blog-agent/systemd.md, ...).
# cargo-deb compresses only NEWS and changelog under /usr/share/doc: these keep their names.
for doc in README.md configuration.md operations.md systemd.md traffic.md; do
  grep -qx "/usr/share/doc/blog-agent/$doc" <<<"$deb_list" && grep -qx "/usr/share/doc/blog-agent/$doc" <<<"$rpm_list" \
    && ok "both packages ship /usr/share/doc/blog-agent/$doc" || fail "/usr/share/doc/blog-agent/$doc missing from a package"
done
# A path ends at its file name: a sentence's full stop after it is not part of it.
unit_docs=$(grep -oE '/usr/share/doc/blog-agent/[A-Za-z0-9_.-]*[A-Za-z0-9_-]' systemd/blog-agent.service | sort -u)
for doc in $unit_docs; do
  grep -qx "$doc" <<<"$deb_list" && grep -qx "$doc" <<<"$rpm_list" \
    && ok "the unit's $doc is shipped" || fail "the unit points to $doc, which a package does not ship"
done
# cargo-deb compresses man pages, as Debian policy asks.
for page in blog-agent blog-agent-sync blog-agent-run blog-agent-status blog-agent-check blog-agent-pause blog-agent-resume blog-agent-halt blog-agent-unhalt blog-agent-publish blog-agent-releases blog-agent-rollback blog-agent-promote; do
  grep -qE "^/usr/share/man/man1/$page\.1(\.gz)?$" <<<"$deb_list" && grep -qx "/usr/share/man/man1/$page.1" <<<"$rpm_list" \
    && ok "both packages ship man page $page(1)" || fail "man page $page(1) missing from a package"
done
# The man pages have the sections a reader expects and name only pages that are shipped
# (src/cli/assets.rs; its unit tests check the same).
for page in target/assets/*.1; do
  for section in "EXIT STATUS" ENVIRONMENT FILES "SEE ALSO"; do
    grep -xE "\.SH \"?$section\"?" "$page" >/dev/null || fail "$(basename "$page") lacks the $section section"
  done
  ! grep -F 'blog\-agent\-help' "$page" >/dev/null || fail "$(basename "$page") names blog-agent-help(1), which is not shipped"
done
ok "man pages: EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO in each, no blog-agent-help(1)"
grep -qx /usr/lib/sysctl.d/60-blog-agent.conf <<<"$deb_list" && grep -qx /usr/lib/sysctl.d/60-blog-agent.conf <<<"$rpm_list" \
  && ok "both packages ship the docker0 ARP setting (sysctl.d)" || fail "sysctl.d/60-blog-agent.conf missing from a package"
grep -qE '^/(usr/)?lib/systemd/system/blog-agent.service$' <<<"$deb_list" && ok ".deb ships the systemd unit" || fail ".deb lacks the unit"
grep -qx /usr/lib/systemd/system/blog-agent.service <<<"$rpm_list" && ok ".rpm ships the systemd unit" || fail ".rpm lacks the unit"
# The binary packaged is the one just built and checked above (not a stale one from another
# target dir).
deb_bin_sum=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/blog-agent | sha256sum | cut -d' ' -f1)
[ "$deb_bin_sum" = "$(sha256sum <"$bin" | cut -d' ' -f1)" ] && ok ".deb ships $bin" || fail ".deb's /usr/bin/blog-agent is not $bin"
# The unit as in the tree, with the ExecStartPre that applies docker0's sysctl keys.
deb_unit=$(dpkg-deb --fsys-tarfile "$deb" | tar -x --wildcards -O '*/systemd/system/blog-agent.service')
[ "$deb_unit" = "$(cat systemd/blog-agent.service)" ] && grep -- '^ExecStartPre=+-/usr/lib/systemd/systemd-sysctl --prefix=/net/ipv4/conf/docker0 --prefix=/net/ipv4/neigh/docker0$' <<<"$deb_unit" >/dev/null \
  && ok ".deb's unit is systemd/blog-agent.service, with ExecStartPre applying docker0's sysctl keys" || fail ".deb's unit differs from systemd/blog-agent.service or lacks the ExecStartPre"

# Dependencies: the default traffic mode ("switch") runs iptables-restore.
deb_depends=$(dpkg-deb -f "$deb" Depends)
grep -E '(^|, )iptables( |,|$)' <<<"$deb_depends" >/dev/null && ok ".deb depends on iptables (Depends: $deb_depends)" || fail ".deb does not depend on iptables (Depends: ${deb_depends:-none})"
rpm_requires=$(rpm -qp --requires "$rpmfile" 2>/dev/null)
grep -E '^iptables( |$)' <<<"$rpm_requires" >/dev/null && ok ".rpm requires iptables" || fail ".rpm does not require iptables"

# Scriptlets: enabled but not started on install; stopped and disabled on removal.
scripts=$(mktemp -d); trap 'rm -rf "$scripts"' EXIT
dpkg-deb -e "$deb" "$scripts"
grep -q "deb-systemd-helper.*enable" "$scripts/postinst" && ok ".deb postinst enables the unit" || fail ".deb postinst does not enable"
! grep -qE "deb-systemd-invoke (start|restart) " "$scripts/postinst" && ok ".deb postinst does not start it" || fail ".deb postinst starts the unit"
grep -qE "deb-systemd-invoke try-restart" "$scripts/postinst" && ok ".deb postinst restarts it on upgrade only if running" || fail ".deb postinst lacks try-restart"
grep -qE "deb-systemd-invoke stop" "$scripts/prerm" && ok ".deb prerm stops the unit" || fail ".deb prerm does not stop"
grep -q "deb-systemd-helper disable" "$scripts/postrm" && ok ".deb postrm disables the unit" || fail ".deb postrm does not disable"
# docker0's keys of sysctl.d/60-blog-agent.conf, both prefixes (route_localnet is under conf/,
# the ARP setting under neigh/), for a docker0 that exists before the package (Ubuntu).
grep -F -- '"$sysctl" --prefix=/net/ipv4/conf/docker0 --prefix=/net/ipv4/neigh/docker0' "$scripts/postinst" >/dev/null \
  && ok ".deb postinst applies docker0's conf and neigh sysctl keys" || fail ".deb postinst lacks systemd-sysctl with both docker0 prefixes"
rpm_scripts=$(rpm -qp --scripts "$rpmfile" 2>/dev/null)
grep -q "systemctl enable blog-agent.service" <<<"$rpm_scripts" && ok ".rpm %post enables the unit" || fail ".rpm %post"
grep -q "disable --now blog-agent.service" <<<"$rpm_scripts" && ok ".rpm %preun stops and disables it" || fail ".rpm %preun"
grep -q "try-restart blog-agent.service" <<<"$rpm_scripts" && ok ".rpm %postun restarts it on upgrade" || fail ".rpm %postun"
grep -F -- "systemd-sysctl --prefix=/net/ipv4/conf/docker0 --prefix=/net/ipv4/neigh/docker0" <<<"$rpm_scripts" >/dev/null \
  && ok ".rpm %post applies docker0's conf and neigh sysctl keys" || fail ".rpm %post lacks systemd-sysctl with both docker0 prefixes"

# The install script applies docker0's settings at once when docker0 exists before the package
# (Ubuntu's order). Put the kernel defaults back first, so the checks below prove the package set
# them, not an earlier run. route_localnet is host-wide state another test may rely on: its old
# value is put back right after the check.
arp=/proc/sys/net/ipv4/neigh/docker0/retrans_time_ms
localnet=/proc/sys/net/ipv4/conf/docker0/route_localnet
docker0_writable=false
localnet_was=""
if [ -w "$arp" ] && [ -w "$localnet" ]; then
  docker0_writable=true
  localnet_was=$(cat "$localnet")
  trap 'rm -rf "$scripts"; echo "$localnet_was" >"$localnet" 2>/dev/null || true' EXIT
  echo 1000 >"$arp"
  echo 0 >"$localnet"
fi

# Install the .deb here and run it from the installed path.
dpkg -i "$deb" >/dev/null
if $docker0_writable; then
  localnet_now=$(cat "$localnet")
  echo "$localnet_was" >"$localnet"
  trap 'rm -rf "$scripts"' EXIT
  [ "$(cat "$arp")" = 100 ] && ok "installed: docker0 ARP retransmit is 100 ms" || fail "postinst did not apply the docker0 setting ($(cat "$arp") ms)"
  [ "$localnet_now" = 1 ] && ok "installed: net.ipv4.conf.docker0.route_localnet went from 0 to 1 (put back to $localnet_was)" \
    || fail "postinst did not apply net.ipv4.conf.docker0.route_localnet ($localnet_now)"
else
  echo "package: skipped the docker0 sysctl checks (no docker0, or /proc/sys read-only)" >&2
fi
/usr/bin/blog-agent --version >/dev/null && ok "installed: $(/usr/bin/blog-agent --version)" || fail "installed --version"
for sub in sync run status check pause resume; do
  /usr/bin/blog-agent "$sub" --help | grep -x "Examples:" >/dev/null && ok "installed: blog-agent $sub --help" || fail "$sub --help"
done
echo "package: all checks passed ($out)" >&2
