#!/usr/bin/env bash
# Checks the CloudFormation template packaging/cloudformation/blog.yaml: cfn-lint; its user-data
# block is generated from cloud-init/al2023.yaml (and that renders to valid user-data); its
# instance policy equals packaging/iam-policy-<environment>.json after normalising the
# placeholders, and the optional CI publisher role's policy and trust equal
# packaging/iam-policy-publisher-<environment>.json and packaging/iam-trust-circleci.json; the
# launch hook, environment tag, health check path and port, and metadata
# options follow packaging/config.example.toml and packaging/launch-template.json
# (scripts/cfn_check.py). When a moto_server answers at AWS_ENDPOINT_URL (scripts/stack-env.sh
# after scripts/stack-up.sh), also creates the stack there, checks it and deletes it
# (scripts/cfn_moto_check.py), and runs the shell blocks of docs/cloudformation.md there
# (scripts/check-docs-commands.py).
# Prints one line per check, `ok ...` or `FAIL ...` (details indented below), and exits 1 if
# any check failed. cfn-lint comes with moto[server] in .stack/venv (installed the way
# scripts/install-deps.sh does when missing); cloud-init from Debian when missing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

template=packaging/cloudformation/blog.yaml
venv=${BLOG_AGENT_VENV:-$(pwd)/.stack/venv}

# shellcheck source=scripts/lib/checks.sh
source scripts/lib/checks.sh

# ---- tools ---------------------------------------------------------------------------------
if [ ! -x "$venv/bin/cfn-lint" ]; then
  echo "check-cloudformation: moto[server] (with cfn-lint) into $venv" >&2
  { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'moto[server]'; } >&2 ||
    { echo "FAIL cannot install cfn-lint into $venv"; exit 1; }
fi
command -v cloud-init >/dev/null 2>&1 || apt_install check-cloudformation cloud-init

# ---- cfn-lint ------------------------------------------------------------------------------
# Exit status is a bit mask: 2 errors, 4 warnings, 8 informational. Errors and warnings fail.
out=$("$venv/bin/cfn-lint" "$template" 2>&1)
rc=$?
if [ $((rc & ~8)) -eq 0 ]; then
  ok "cfn-lint $template ($("$venv/bin/cfn-lint" --version 2>&1))"
else
  fail "cfn-lint $template (exit $rc)" "$out"
fi

# ---- template against the repository's files --------------------------------------------------
"$venv/bin/python" scripts/cfn_check.py
rc=$?
failures=$((failures + rc))

# ---- the stack on moto -------------------------------------------------------------------------
if [ -n "${AWS_ENDPOINT_URL:-}" ] && curl -fsS -o /dev/null --max-time 5 "$AWS_ENDPOINT_URL/moto-api/" 2>/dev/null; then
  out=$("$venv/bin/python" scripts/cfn_moto_check.py 2>&1)
  rc=$?
  if [ $rc -eq 0 ]; then
    ok "$template as a stack on moto ($AWS_ENDPOINT_URL): created, checked, deleted;" \
      "$(grep -c '^ok ' <<<"$out") checks, $(grep -c '^moto ' <<<"$out") things moto does not do" \
      "(scripts/cfn_moto_check.py lists them)"
    # The agent's part is skipped before anything is built (CI's first stage): say so.
    grep '^skip ' <<<"$out" || true
  else
    fail "$template as a stack on moto ($AWS_ENDPOINT_URL) (exit $rc)" "$(grep -v '^     created ' <<<"$out")"
  fi
  # docs/cloudformation.md's commands, as written, against the same moto (after the stack
  # above is deleted: both make the group blog-staging).
  out=$("$venv/bin/python" scripts/check-docs-commands.py 2>&1)
  rc=$?
  if [ $rc -eq 0 ]; then
    if grep -q '^skip ' <<<"$out"; then
      grep '^skip ' <<<"$out"
    else
      ok "docs/cloudformation.md's commands against moto: $(tail -n 1 <<<"$out" | sed 's/^check-docs-commands: //')"
      grep -E '^(aws-only|offline |stand-in) ' <<<"$out" | sed 's/^/     /'
    fi
  else
    fail "docs/cloudformation.md's commands against moto (scripts/check-docs-commands.py, exit $rc)" "$out"
  fi
else
  ok "$template as a stack on moto: not run, no moto_server at AWS_ENDPOINT_URL" \
    "(source scripts/stack-env.sh after scripts/stack-up.sh)"
fi

finish check-cloudformation
