#!/usr/bin/env bash
# Builds the static x86_64 musl release binary, the man page and completions, the .deb and the
# .rpm, checks what is inside them, and installs the .deb on this machine as a smoke test.
# Installs its own tools (musl target, musl-tools, rpm, cargo-auditable, cargo-deb,
# cargo-generate-rpm).
set -euo pipefail
# Pipes into grep use `grep PAT >/dev/null`, never `grep -q`: -q exits at the first match, and a
# writer with more to say (readelf -S prints over 4 KiB) then dies of SIGPIPE, which pipefail turns
# into a failed check of a binary that is fine.
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
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
bin=target/$target/release/blog-agent
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
# cargo-deb compresses man pages, as Debian policy asks.
for page in blog-agent blog-agent-sync blog-agent-run blog-agent-status blog-agent-check blog-agent-pause blog-agent-resume blog-agent-halt blog-agent-unhalt; do
  grep -qE "^/usr/share/man/man1/$page\.1(\.gz)?$" <<<"$deb_list" && grep -qx "/usr/share/man/man1/$page.1" <<<"$rpm_list" \
    && ok "both packages ship man page $page(1)" || fail "man page $page(1) missing from a package"
done
grep -qx /usr/lib/sysctl.d/60-blog-agent.conf <<<"$deb_list" && grep -qx /usr/lib/sysctl.d/60-blog-agent.conf <<<"$rpm_list" \
  && ok "both packages ship the docker0 ARP setting (sysctl.d)" || fail "sysctl.d/60-blog-agent.conf missing from a package"
grep -qE '^/(usr/)?lib/systemd/system/blog-agent.service$' <<<"$deb_list" && ok ".deb ships the systemd unit" || fail ".deb lacks the unit"
grep -qx /usr/lib/systemd/system/blog-agent.service <<<"$rpm_list" && ok ".rpm ships the systemd unit" || fail ".rpm lacks the unit"

# Scriptlets: enabled but not started on install; stopped and disabled on removal.
scripts=$(mktemp -d); trap 'rm -rf "$scripts"' EXIT
dpkg-deb -e "$deb" "$scripts"
grep -q "deb-systemd-helper.*enable" "$scripts/postinst" && ok ".deb postinst enables the unit" || fail ".deb postinst does not enable"
! grep -qE "deb-systemd-invoke (start|restart) " "$scripts/postinst" && ok ".deb postinst does not start it" || fail ".deb postinst starts the unit"
grep -qE "deb-systemd-invoke try-restart" "$scripts/postinst" && ok ".deb postinst restarts it on upgrade only if running" || fail ".deb postinst lacks try-restart"
grep -qE "deb-systemd-invoke stop" "$scripts/prerm" && ok ".deb prerm stops the unit" || fail ".deb prerm does not stop"
grep -q "deb-systemd-helper disable" "$scripts/postrm" && ok ".deb postrm disables the unit" || fail ".deb postrm does not disable"
rpm_scripts=$(rpm -qp --scripts "$rpmfile" 2>/dev/null)
grep -q "systemctl enable blog-agent.service" <<<"$rpm_scripts" && ok ".rpm %post enables the unit" || fail ".rpm %post"
grep -q "disable --now blog-agent.service" <<<"$rpm_scripts" && ok ".rpm %preun stops and disables it" || fail ".rpm %preun"
grep -q "try-restart blog-agent.service" <<<"$rpm_scripts" && ok ".rpm %postun restarts it on upgrade" || fail ".rpm %postun"
grep -q "systemd-sysctl --prefix=/net/ipv4/neigh/docker0" <<<"$rpm_scripts" && ok ".rpm %post applies the docker0 setting" || fail ".rpm %post lacks the sysctl"

# The install script applies the docker0 ARP setting at once. Put the kernel default back
# first, so the check below proves the package set it, not an earlier run.
arp=/proc/sys/net/ipv4/neigh/docker0/retrans_time_ms
arp_writable=false
if [ -w "$arp" ]; then arp_writable=true; echo 1000 >"$arp"; fi

# Install the .deb here and run it from the installed path.
dpkg -i "$deb" >/dev/null
if $arp_writable; then
  [ "$(cat "$arp")" = 100 ] && ok "installed: docker0 ARP retransmit is 100 ms" || fail "postinst did not apply the docker0 setting ($(cat "$arp") ms)"
else
  echo "package: skipped the docker0 ARP check (no docker0, or /proc/sys read-only)" >&2
fi
/usr/bin/blog-agent --version >/dev/null && ok "installed: $(/usr/bin/blog-agent --version)" || fail "installed --version"
for sub in sync run status check pause resume; do
  /usr/bin/blog-agent "$sub" --help | grep "Example:" >/dev/null && ok "installed: blog-agent $sub --help" || fail "$sub --help"
done
echo "package: all checks passed ($out)" >&2
