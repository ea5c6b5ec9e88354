"""put-release.py BUCKET KEY SHA: writes SHA to s3://BUCKET/KEY the way CI does
(`aws s3 cp stagebuild.txt s3://... --sse=aws:kms --sse-kms-key-id ...`), against the
endpoint in AWS_ENDPOINT_URL. Creates the bucket when missing."""
import sys

import boto3

bucket, key, sha = sys.argv[1:4]
s3 = boto3.client("s3")
try:
    s3.head_bucket(Bucket=bucket)
except Exception:
    s3.create_bucket(Bucket=bucket)
key_id = "ec0a605d-17e9-4ac8-a2e3-e299c1ee1a93"  # moto does not check that the key exists
s3.put_object(Bucket=bucket, Key=key, Body=(sha + "\n").encode(), ServerSideEncryption="aws:kms", SSEKMSKeyId=key_id)
print(f"s3://{bucket}/{key} = {sha}")
