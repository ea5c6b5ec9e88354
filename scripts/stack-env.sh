# Sourced by the other scripts: where the local stack listens and how to reach it.
# Everything binds to 127.0.0.1. Override a port by exporting it before running the scripts.
: "${BLOG_AGENT_STACK_DIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.stack}"
: "${REGISTRY_PORT:=5000}"          # registry that accepts the ECR token moto hands out
: "${BADAUTH_REGISTRY_PORT:=5002}"  # registry whose password differs: the "wrong password" path
: "${MOTO_PORT:=5001}"              # moto_server: S3 and ECR (5000 is the registry's)
export BLOG_AGENT_STACK_DIR REGISTRY_PORT BADAUTH_REGISTRY_PORT MOTO_PORT
export BLOG_AGENT_TEST_REGISTRY="127.0.0.1:$REGISTRY_PORT"
export BLOG_AGENT_TEST_BADAUTH_REGISTRY="127.0.0.1:$BADAUTH_REGISTRY_PORT"
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export DOCKER_BUILDKIT=0
# moto's ECR token decodes to AWS:<this>; the registry's htpasswd holds the same pair, so the
# pull path under test is exactly the production one: ECR token -> registry login.
export ECR_TOKEN_USER=AWS
export ECR_TOKEN_PASSWORD=123456789012-auth-token
