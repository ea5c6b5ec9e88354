#!/usr/bin/env bash
# upload-package.sh: puts blog-agent's package where the stack's hosts fetch it, and prints the
# two stack parameters that name it.
#
#   scripts/upload-package.sh --stack blog-staging [--package FILE]
#   scripts/upload-package.sh --bucket BUCKET [--package FILE]
#
# FILE: an already-built .rpm (what the AL2023 hosts install) or .deb (what CI jobs take their
# binary from). Without --package, builds both with scripts/package.sh (Debian, root, the Rust
# toolchain; it also installs the .deb on this machine as a smoke test) and uploads the .rpm of
# target/packages/.
# The object is s3://BUCKET/packages/<file name>, encrypted by the bucket's default (SSE-KMS),
# with its SHA-256 in the object's metadata (sha256). A key that already holds another package
# is refused: a running stack pins the checksum of what is there, so a changed package gets a
# new name (bump the version or release in Cargo.toml).
#
# stdout, for `aws cloudformation deploy --parameter-overrides`:
#   AgentPackageKey=packages/<file name>
#   AgentPackageSha256=<64 hex>
# Diagnostics go to stderr. Needs the AWS CLI and credentials that may s3:PutObject under
# packages/ (and kms:GenerateDataKey on the bucket's key); AWS_ENDPOINT_URL is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
stack='' bucket='' package=''
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) stack=${2:?--stack needs a name}; shift 2 ;;
    --bucket) bucket=${2:?--bucket needs a name}; shift 2 ;;
    --package) package=${2:?--package needs a file}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "upload-package: unknown argument '$1'" >&2; usage ;;
  esac
done
if [ -n "$stack" ] && [ -n "$bucket" ]; then echo "upload-package: --stack or --bucket, not both" >&2; exit 2; fi
if [ -z "$stack" ] && [ -z "$bucket" ]; then echo "upload-package: --stack or --bucket is required" >&2; exit 2; fi

if [ -n "$stack" ]; then
  # The stack's ArtifactsBucket (its output Bucket), read as a resource: that works from the
  # moment the bucket exists, and on moto, which leaves a stack made by `deploy` without outputs.
  bucket=$(aws cloudformation list-stack-resources --stack-name "$stack" --output text \
    --query "StackResourceSummaries[?LogicalResourceId=='ArtifactsBucket'].PhysicalResourceId")
  case "$bucket" in
    ''|None) echo "upload-package: stack $stack has no bucket (ArtifactsBucket)" >&2; exit 1 ;;
  esac
fi

if [ -z "$package" ]; then
  echo "upload-package: building with scripts/package.sh" >&2
  bash scripts/package.sh >&2
  mapfile -t rpms < <(ls -t target/packages/blog-agent-*.x86_64.rpm 2>/dev/null)
  [ ${#rpms[@]} -gt 0 ] || { echo "upload-package: scripts/package.sh made no target/packages/*.rpm" >&2; exit 1; }
  package=${rpms[0]}
fi
[ -f "$package" ] || { echo "upload-package: $package: no such file" >&2; exit 1; }
name=$(basename "$package")
# The template's AgentPackageKey pattern (.rpm), and the CI jobs' blog-agent_*.deb.
if ! [[ "$name" =~ ^[A-Za-z0-9._+-]+\.(rpm|deb)$ ]]; then
  echo "upload-package: $name: expected a .rpm or .deb named with [A-Za-z0-9._+-] only" >&2
  exit 1
fi
key=packages/$name
sha=$(sha256sum "$package" | cut -d' ' -f1)

# An object already there: the same bytes are fine (nothing to do), others are refused.
have=$(aws s3api head-object --bucket "$bucket" --key "$key" --query 'Metadata.sha256' --output text 2>/dev/null || true)
if [ -n "$have" ] && [ "$have" != "$sha" ]; then
  echo "upload-package: s3://$bucket/$key already holds another package (sha256 $have); give this one a new name" >&2
  exit 1
elif [ "$have" = "$sha" ]; then
  echo "upload-package: s3://$bucket/$key already holds this package" >&2
else
  aws s3 cp --only-show-errors --metadata "sha256=$sha" "$package" "s3://$bucket/$key" >&2
  got=$(aws s3api head-object --bucket "$bucket" --key "$key" --query 'ContentLength' --output text)
  [ "$got" = "$(stat -c %s "$package")" ] ||
    { echo "upload-package: s3://$bucket/$key is $got bytes, $package $(stat -c %s "$package")" >&2; exit 1; }
  echo "upload-package: uploaded $package to s3://$bucket/$key" >&2
fi
echo "AgentPackageKey=$key"
echo "AgentPackageSha256=$sha"
