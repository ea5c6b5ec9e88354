#!/usr/bin/env bash
# bench/baseline.sh: the EC2 user-data script hosts use today, which blog-agent replaces.
# It is what the benchmark compares blog-agent with: read the SHA from S3, log in to ECR, pull,
# remove the old container, run the new one. Nothing more (no health check, no rollback).
#
# Parameterised like blog-agent's config (packaging/config.example.toml), through the
# environment; the defaults are the example config's values:
#   BLOG_BUCKET      [release] bucket                      blog-artifacts
#   BLOG_KEY         [release.keys] <env>                  staging/stagebuild.txt
#   BLOG_REPOSITORY  [image] repository                    123456789012.dkr.ecr.us-east-1.amazonaws.com/blog
#   BLOG_NAME        [container] name                      blog
#   BLOG_PORTS       [container] ports (space-separated)   80:80
#   BLOG_LABELS      [container] labels (k=v, space-sep.)  (none)
# AWS region, credentials and endpoint come from the usual AWS_* variables (the benchmark sets
# AWS_ENDPOINT_URL to its moto); the docker CLI's login goes to DOCKER_CONFIG if set.
set -euo pipefail
BLOG_BUCKET=${BLOG_BUCKET:-blog-artifacts}
BLOG_KEY=${BLOG_KEY:-staging/stagebuild.txt}
BLOG_REPOSITORY=${BLOG_REPOSITORY:-123456789012.dkr.ecr.us-east-1.amazonaws.com/blog}
BLOG_NAME=${BLOG_NAME:-blog}
BLOG_PORTS=${BLOG_PORTS:-80:80}
BLOG_LABELS=${BLOG_LABELS:-}
registry=${BLOG_REPOSITORY%%/*}

sha=$(aws s3 cp "s3://$BLOG_BUCKET/$BLOG_KEY" - | tr -d '[:space:]')
aws ecr get-login-password | docker login --username AWS --password-stdin "$registry"
docker pull "$BLOG_REPOSITORY:$sha"
docker rm -f "$BLOG_NAME" || true
args=()
for p in $BLOG_PORTS; do args+=(-p "$p"); done
for l in $BLOG_LABELS; do args+=(--label "$l"); done
docker run -d --name "$BLOG_NAME" --restart unless-stopped "${args[@]}" "$BLOG_REPOSITORY:$sha"
