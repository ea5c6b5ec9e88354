"""demo_aws.py: the AWS side of `make demo` that is not blog-agent's, against moto at
AWS_ENDPOINT_URL (scripts/stack-env.sh), and the demo's swap count.

  setup BUCKET REPO        the release bucket (versioned, as the CloudFormation stack makes
                           it) and the ECR repository, both made empty
  register REPO SHA        CI's image push as ECR sees it: the registry's exact manifest of
                           REPO:SHA put into moto's ECR with its digest, so `blog-agent publish`
                           reads the digest hosts pull (moto keeps no layers; the registry does)
  clean BUCKET REPO        every object version, the bucket and the repository removed
  swap RESULT OLD NEW      one line from bench/swap_client.py's result: requests sent, how many
                           failed (no answer or not 200), and which version answered

Refuses to run against anything but a moto_server: it deletes buckets.
"""
import base64
import hashlib
import json
import os
import sys
import urllib.request

MEDIA = "application/vnd.docker.distribution.manifest.v2+json"


def clients():
    import boto3

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    try:
        urllib.request.urlopen(endpoint.rstrip("/") + "/moto-api/", timeout=5).close()
    except Exception as e:  # noqa: BLE001 - anything else is not moto
        sys.exit(f"demo_aws: {endpoint} is not a moto_server ({e}): source scripts/stack-env.sh after scripts/stack-up.sh")
    return boto3.client("s3", endpoint_url=endpoint), boto3.client("ecr", endpoint_url=endpoint)


def empty_bucket(s3, bucket):
    try:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for page in pages:
            objects = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                       for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            if objects:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        pass
    except Exception as e:  # noqa: BLE001 - a missing bucket answers NoSuchBucket, or a ClientError saying so
        if "NoSuchBucket" not in str(e):
            raise


def drop_repository(ecr, repo):
    try:
        ecr.delete_repository(repositoryName=repo, force=True)
    except ecr.exceptions.RepositoryNotFoundException:
        pass


def setup(bucket, repo):
    s3, ecr = clients()
    empty_bucket(s3, bucket)
    drop_repository(ecr, repo)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    ecr.create_repository(repositoryName=repo)


def register(repo, sha):
    _, ecr = clients()
    url = f"http://{os.environ['BLOG_AGENT_TEST_REGISTRY']}/v2/{repo}/manifests/{sha}"
    auth = base64.b64encode(f"{os.environ['ECR_TOKEN_USER']}:{os.environ['ECR_TOKEN_PASSWORD']}".encode()).decode()
    req = urllib.request.Request(url, headers={"Accept": MEDIA, "Authorization": f"Basic {auth}"})
    manifest = urllib.request.urlopen(req, timeout=30).read()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    ecr.put_image(repositoryName=repo, imageManifest=manifest.decode(), imageManifestMediaType=MEDIA,
                  imageTag=sha, imageDigest=digest)
    print(digest)


def clean(bucket, repo):
    s3, ecr = clients()
    empty_bucket(s3, bucket)
    drop_repository(ecr, repo)


def swap(result, old, new):
    with open(result) as f:
        requests = json.load(f)["newconn"]
    failed = [r for r in requests if r[2] != 200]
    seen = {}
    for r in requests:
        if r[2] == 200:
            seen[r[3]] = seen.get(r[3], 0) + 1
    errors = sorted({r[4] or f"HTTP {r[2]}" for r in failed})
    print(f"swap: {len(failed)} failed of {len(requests)} requests "
          f"({seen.get(old, 0)} answered by {old[:7]}, {seen.get(new, 0)} by {new[:7]})"
          + (f"; errors: {', '.join(errors[:3])}" if errors else ""))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"setup": setup, "register": register, "clean": clean, "swap": swap}[cmd](*args)


if __name__ == "__main__":
    main()
