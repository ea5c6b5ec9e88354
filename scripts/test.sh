#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the integration tests against the
# real local stack (started here if it is not up). `make test` and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/stack-up.sh
source scripts/stack-env.sh
# The test path's own tools (docs/build.md, "Supply chain"), from the Rust package registry:
# cargo-deny is a stage below, cargo-nextest runs the tests (without it, `cargo test` does).
# scripts/package.sh installs cargo-auditable itself. Not in install-deps.sh: `make demo`
# needs none of them, and building them takes minutes.
for tool in cargo-deny cargo-nextest; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "test: cargo install --locked $tool" >&2
    cargo install --locked --quiet "$tool"
  fi
done

# Containers left by an interrupted earlier run are found by label, never by name guessing.
stale=$(docker ps -aq --filter label=blog-agent-test)
[ -z "$stale" ] || docker rm -f $stale >/dev/null

echo "== deployment files (systemd unit, cloud-init, IAM JSON)" >&2
bash scripts/check-deploy-files.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo deny (deny.toml: advisories, licenses, duplicate crates, sources)" >&2
# Where a snapshot of the RustSec advisory database sits beside the repository
# (../shared/advisory-db.tar.gz, for machines without access to it), it is unpacked into
# target/advisory-dbs under the folder name cargo-deny gives the default database, and
# cargo-deny runs offline against it. Elsewhere cargo-deny fetches the live database.
root=$(pwd)
snapshot=$root/../shared/advisory-db.tar.gz
deny_cmd=(cargo deny check)
if [ -f "$snapshot" ]; then
  dbs=$root/target/advisory-dbs
  db=$dbs/advisory-db-3157b0e258782691 # "advisory-db-" + cargo-deny's hash of the default URL
  sum=$(sha256sum "$snapshot" | cut -d' ' -f1)
  if [ ! -d "$db/crates" ] || [ "$(cat "$dbs/snapshot.sha256" 2>/dev/null)" != "$sum" ]; then
    rm -rf "$db" && mkdir -p "$db"
    tar -xzf "$snapshot" -C "$db" --strip-components=1
    echo "$sum" >"$dbs/snapshot.sha256"
  fi
  echo "cargo deny: offline, advisory database snapshot $(git -C "$db" log -1 --format='%h of %cs' 2>/dev/null || echo '(unknown date)')" >&2
  # deny.toml with db-path pointing at the unpacked snapshot (deny.toml itself keeps the default).
  sed '/^\[advisories\]$/a db-path = "'"$dbs"'"' deny.toml >"$dbs/deny.toml"
  grep -q '^db-path = ' "$dbs/deny.toml" || { echo "cargo deny: no [advisories] table in deny.toml" >&2; exit 1; }
  cargo fetch --locked --quiet # --offline also stops cargo from downloading crates
  deny_cmd=(cargo deny --offline --config "$dbs/deny.toml" check)
fi
if ! "${deny_cmd[@]}"; then
  echo "cargo deny failed: each error above names the crate, the advisory or rule, and the fix (an advisory's 'Solution: Upgrade to ...' means 'cargo update -p CRATE'); an exception goes in deny.toml with a reason and an expiry" >&2
  exit 1
fi

echo "== tests" >&2
# dockerd_restart restarts the Docker daemon: it runs alone, after everything else.
summary=$(mktemp)
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast -E 'not binary(dockerd_restart)' "$@" 2>&1 | tee -a "$summary"
  echo "== dockerd restart test (alone)" >&2
  cargo nextest run --no-fail-fast -E 'binary(dockerd_restart)' "$@" 2>&1 | tee -a "$summary"
else
  # Every test target (what --all-targets builds), each tests/*.rs and tests/*/main.rs found
  # here rather than named, except dockerd_restart, which then runs alone.
  targets=(--lib --bins --examples --benches)
  for f in tests/*.rs tests/*/main.rs; do
    [ -f "$f" ] || continue
    t=${f#tests/}; t=${t%.rs}; t=${t%/main}
    [ "$t" = dockerd_restart ] || targets+=(--test "$t")
  done
  cargo test --no-fail-fast "${targets[@]}" "$@"
  echo "== dockerd restart test (alone)" >&2
  cargo test --no-fail-fast --test dockerd_restart "$@"
fi
# The agent built above against what the CloudFormation template makes (on moto): publish into
# the stack's bucket with its KMS key, releases, check.
echo "== the agent against the CloudFormation stack on moto" >&2
"${BLOG_AGENT_VENV:-.stack/venv}/bin/python" scripts/cfn_moto_check.py --require-agent
# docs/cloudformation.md's commands, as written, with that agent (publish, releases).
echo "== docs/cloudformation.md's commands on moto" >&2
"${BLOG_AGENT_VENV:-.stack/venv}/bin/python" scripts/check-docs-commands.py --require-agent

# The slow stage: static release binary, .deb and .rpm, contents, install smoke test.
echo "== packaging" >&2
bash scripts/package.sh

# The packaged agent booted by cloud-init under a real systemd, end to end.
echo "== boot e2e" >&2
bash scripts/boot-e2e.sh

# One closing line with the totals of both nextest runs.
if [ -s "$summary" ]; then
  # nextest: "Summary [ 12.3s] 75 tests run: 75 passed, 0 skipped" (", N failed" when some fail)
  read -r passed failed < <(awk '/Summary/ { for (i = 2; i <= NF; i++) {
      if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } } END { print p+0, f+0 }' "$summary")
  echo "tests: $passed passed, $failed failed"
fi
