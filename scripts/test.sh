#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the integration tests against the
# real local stack (started here if it is not up). `make test` and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/stack-up.sh
source scripts/stack-env.sh

# Containers left by an interrupted earlier run are found by label, never by name guessing.
stale=$(docker ps -aq --filter label=blog-agent-test)
[ -z "$stale" ] || docker rm -f $stale >/dev/null

echo "== deployment files (systemd unit, cloud-init, IAM JSON)" >&2
bash scripts/check-deploy-files.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --all-targets --quiet -- -D warnings
echo "== tests" >&2
# dockerd_restart restarts the Docker daemon: it runs alone, after everything else.
summary=$(mktemp)
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast -E 'not binary(dockerd_restart)' "$@" 2>&1 | tee -a "$summary"
  echo "== dockerd restart test (alone)" >&2
  cargo nextest run --no-fail-fast -E 'binary(dockerd_restart)' "$@" 2>&1 | tee -a "$summary"
else
  cargo test --no-fail-fast --lib --test sync --test run "$@"
  cargo test --no-fail-fast --test dockerd_restart "$@"
fi

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
