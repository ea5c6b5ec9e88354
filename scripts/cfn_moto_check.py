#!/usr/bin/env python3
"""Creates packaging/cloudformation/blog.yaml as a stack on the local moto_server, checks what
moto made of it, lists what moto created and what it skipped, runs the agent against it, then
deletes the stack.

    source scripts/stack-env.sh && bash scripts/stack-up.sh
    .stack/venv/bin/python scripts/cfn_moto_check.py [--require-agent]

The agent part: a config written from the stack's outputs, an image registered in the stack's
repository, then `blog-agent publish`, `releases --json` and `check` against the stack's bucket,
key, repository and group. The binary is BLOG_AGENT_BIN, else target/debug/blog-agent, else
target/x86_64-unknown-linux-musl/release/blog-agent; with none, that part is a `skip` line
(a FAIL with --require-agent).

Starts nothing but a small instance-metadata stand-in on 127.0.0.1 for the agent: it talks to
the moto_server at AWS_ENDPOINT_URL and refuses to run when that URL is not a moto_server (so it
can never create a stack in a real account), and to the local registry at
BLOG_AGENT_TEST_REGISTRY. Lines: `ok`/`FAIL` for checks, `moto` for what moto does not do (not
failures), `skip` for what could not run here. Exit 1 if any check failed.
"""
import argparse
import ast
import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no scripts/__pycache__ in the work tree
import cfn_check  # noqa: E402  (the template loader and the evaluator of conditions)

ROOT = Path(__file__).resolve().parent.parent
ENV = "staging"
GROUP = f"blog-{ENV}"
# The `ok`/`FAIL` lines and their count (cfn_check.failures) are cfn_check's.
ok, fail = cfn_check.ok, cfn_check.fail


def note(what):
    print(f"moto {what}")


def applied(cond, what, moto_note):
    """A property moto may ignore: `ok` when moto applied it, else a `moto` line (not a failure;
    scripts/cfn_check.py checks the template itself)."""
    ok(what) if cond else note(moto_note)


def api(call):
    """The call's answer, or its error code (moto answers "not configured" for ignored properties)."""
    try:
        return call()
    except Exception as e:  # noqa: BLE001
        return getattr(e, "response", {}).get("Error", {}).get("Code", repr(e))


def expect(cond, what, detail=""):
    (ok if cond else lambda w: fail(w, detail))(what)
    return cond


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--require-agent", action="store_true",
                    help="no blog-agent binary is a failure, not a skip (scripts/test.sh, after the build)")
    args = ap.parse_args()
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5) as r:
            is_moto = r.status == 200
    except Exception:  # noqa: BLE001
        is_moto = False
    if not endpoint or not is_moto:
        print(f"cfn_moto_check: no moto_server at AWS_ENDPOINT_URL={endpoint!r} "
              "(source scripts/stack-env.sh; bash scripts/stack-up.sh)", file=sys.stderr)
        return 2
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    client = lambda name: boto3.client(name, endpoint_url=endpoint, region_name=region)  # noqa: E731
    cfn, ec2, s3, kms, ecr, iam, asg, elb = (client(n) for n in (
        "cloudformation", "ec2", "s3", "kms", "ecr", "iam", "autoscaling", "elbv2"))

    text = cfn_check.TEMPLATE.read_text()
    template = cfn_check.load_template(text)
    suffix = f"{os.getpid()}-{int(time.time())}"
    stack = f"blog-cfn-check-{suffix}"
    repo_name = f"blog-cfn-check-{suffix}"

    if asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]:
        fail(f"moto already has an Auto Scaling group {GROUP} (a stack left by an earlier run?)")
        return 1
    vpc = next(v for v in ec2.describe_vpcs()["Vpcs"] if v.get("IsDefault"))["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]][:2]
    params = {"Environment": ENV, "VpcId": vpc, "LoadBalancerSubnetIds": ",".join(subnets),
              "InstanceSubnetIds": ",".join(subnets), "RepositoryName": repo_name,
              "EnableWarmPool": "true", "MinSize": "1", "MaxSize": "3", "DesiredCapacity": "1",
              "ReleaseImagesToKeep": "15",
              # Required (no hosts install an unchecked package); moto launches no real host, so
              # any well-formed checksum will do.
              "AgentPackageSha256": hashlib.sha256(b"cfn-check package").hexdigest()}

    # The journal's retention, and the operators' role (any principal of the account).
    params.update({"LogRetentionDays": "14", "OperatorPrincipalArn": f"arn:aws:iam::{cfn_check.ACCOUNT}:root"})
    t0 = time.monotonic()
    cfn.create_stack(StackName=stack, TemplateBody=text, Capabilities=["CAPABILITY_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
    try:
        check_stack(cfn, ec2, s3, kms, ecr, iam, asg, elb, template, stack, params, t0)
        check_agent(cfn, s3, ecr, asg, stack, args.require_agent)
    except Exception as e:  # noqa: BLE001 - reported, then the stack is still deleted
        import traceback
        fail(f"checking the stack stopped: {type(e).__name__}: {e}", traceback.format_exc(limit=3))
    finally:
        delete_stack(cfn, s3, ecr, asg, iam, stack, cfn_check.lifecycle_hook_name(template))
    return 1 if cfn_check.failures else 0


def wait(cfn, stack, want, seconds=120):
    deadline = time.monotonic() + seconds
    while True:
        try:
            s = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        except cfn.exceptions.ClientError as e:
            if want == "DELETE_COMPLETE" and "does not exist" in str(e):
                return "DELETE_COMPLETE", None
            raise
        status = s["StackStatus"]
        if status == want or status.endswith("_FAILED") or status.endswith("ROLLBACK_COMPLETE") \
                or time.monotonic() > deadline:
            return status, s
        time.sleep(0.5)


def check_stack(cfn, ec2, s3, kms, ecr, iam, asg, elb, template, stack, params, t0):
    status, s = wait(cfn, stack, "CREATE_COMPLETE")
    if not expect(status == "CREATE_COMPLETE", f"stack {stack}: {status} in {time.monotonic() - t0:.1f} s",
                  json.dumps([e.get("ResourceStatusReason") for e in
                              cfn.describe_stack_events(StackName=stack)["StackEvents"]
                              if "FAILED" in e.get("ResourceStatus", "")], indent=1)):
        return
    outputs = {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])}

    # ---- created vs skipped --------------------------------------------------------------------
    ev = cfn_check.Evaluator(template, **params)
    wanted = {name: r["Type"] for name, r in template["Resources"].items()
              if "Condition" not in r or ev.condition(r["Condition"])}
    listed = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    # moto lists a resource it skipped as an entry with no id, no type and no physical id.
    made = {r["LogicalResourceId"]: r for r in listed if r["LogicalResourceId"]}
    for name in sorted(made, key=lambda n: (made[n]["ResourceType"], n)):
        r = made[name]
        print(f"     created {r['ResourceType']:45} {name:26} {r['PhysicalResourceId']}")
    for name in sorted(set(wanted) - set(made)):
        note(f"has no CloudFormation type {wanted[name]}: {name} skipped (stack still CREATE_COMPLETE)")

    # ---- outputs -------------------------------------------------------------------------------
    want_outputs = {"Bucket", "ReleaseKey", "RepositoryUri", "Region", "KmsKeyArn",
                    "AutoScalingGroupName", "LifecycleHookName", "TargetGroupArn"}
    expect(want_outputs <= set(outputs), "outputs for the agent's config: " + ", ".join(
        f"{k}={outputs.get(k)}" for k in sorted(want_outputs)), f"missing {sorted(want_outputs - set(outputs))}")
    bucket, key_arn, repo_uri = outputs.get("Bucket"), outputs.get("KmsKeyArn"), outputs.get("RepositoryUri")
    expect(outputs.get("ReleaseKey") == "staging/stagebuild.txt", "output ReleaseKey is the staging key")
    expect(outputs.get("AutoScalingGroupName") == GROUP, f"output AutoScalingGroupName is {GROUP}")

    # ---- bucket and key ------------------------------------------------------------------------
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    expect(enc["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
           "bucket: default encryption SSE-KMS with the stack's key", enc)
    # Properties moto's AWS::S3::Bucket ignores (it applies BucketEncryption's algorithm and key,
    # and Tags): checked where moto applied them, reported where it did not.
    applied(enc.get("BucketKeyEnabled") is True, "bucket: S3 Bucket Key on",
            "ignores BucketEncryption's BucketKeyEnabled (GetBucketEncryption: false)")
    applied(s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled", "bucket: versioning on",
            "ignores the bucket's VersioningConfiguration (versioning off)")
    pab = api(lambda: s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"])
    applied(isinstance(pab, dict) and set(pab.values()) == {True} and len(pab) == 4,
            "bucket: public access blocked", f"ignores the bucket's PublicAccessBlockConfiguration ({pab})")
    own = api(lambda: s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"])
    applied(own == [{"ObjectOwnership": "BucketOwnerEnforced"}], "bucket: ACLs disabled (BucketOwnerEnforced)",
            f"ignores the bucket's OwnershipControls ({own})")
    lc = api(lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"])
    applied(isinstance(lc, list) and lc and lc[0].get("NoncurrentVersionExpiration", {}).get("NoncurrentDays") == 90,
            "bucket: noncurrent versions expire after 90 days",
            f"ignores the bucket's LifecycleConfiguration ({lc})")
    pol = api(lambda: json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]))
    applied(isinstance(pol, dict) and any(st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
                                          for st in pol.get("Statement", [])),
            "bucket policy denies requests without TLS",
            f"has no AWS::S3::BucketPolicy type: no bucket policy ({pol})")
    check_notifications(s3, template, params, outputs, bucket)

    # What CI does: an SSE-KMS upload with the bucket's default key, read back.
    sha = "3f2a9c1" + "0" * 33
    s3.put_object(Bucket=bucket, Key="staging/stagebuild.txt", Body=sha.encode())
    head = s3.head_object(Bucket=bucket, Key="staging/stagebuild.txt")
    expect(head.get("ServerSideEncryption") == "aws:kms" and head.get("SSEKMSKeyId") == key_arn
           and s3.get_object(Bucket=bucket, Key="staging/stagebuild.txt")["Body"].read().decode() == sha,
           "bucket: a release SHA written without encryption headers is stored SSE-KMS with the key",
           {k: head.get(k) for k in ("ServerSideEncryption", "SSEKMSKeyId")})
    key_id = key_arn.rsplit("/", 1)[1]
    kp = kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
    kp = kp if isinstance(kp, dict) else json.loads(kp)  # moto answers a key made by a stack with an object
    acct = key_arn.split(":")[4]
    expect(any(st.get("Principal") == {"AWS": f"arn:aws:iam::{acct}:root"} and st.get("Action") == "kms:*"
               for st in kp["Statement"]), "KMS key policy delegates to IAM (account root, kms:*)", kp)
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases(KeyId=key_id)["Aliases"]}
    expect(aliases.get(f"alias/blog-{ENV}") == key_id, f"KMS alias alias/blog-{ENV}", aliases)

    # ---- repository ----------------------------------------------------------------------------
    repo_name = params["RepositoryName"]
    repo = ecr.describe_repositories(repositoryNames=[repo_name])["repositories"][0]
    expect(repo["repositoryUri"] == repo_uri and repo["imageTagMutability"] == "IMMUTABLE",
           "ECR repository: immutable tags", repo)
    scan = repo.get("imageScanningConfiguration", {})
    applied(scan.get("scanOnPush") is True, "ECR repository: scan on push",
            f"ignores the repository's ImageScanningConfiguration (imageScanningConfiguration: {scan})")
    try:
        lp = json.loads(ecr.get_lifecycle_policy(repositoryName=repo_name)["lifecyclePolicyText"])
        expect(lp["rules"][0]["selection"]["countNumber"] == int(params["ReleaseImagesToKeep"]),
               "ECR lifecycle policy keeps ReleaseImagesToKeep images", lp)
    except ecr.exceptions.LifecyclePolicyNotFoundException:
        note("ignores the repository's LifecyclePolicy (GetLifecyclePolicy: LifecyclePolicyNotFoundException)")

    # ---- instance role: what moto resolved, against packaging/iam-policy-staging.json -----------
    role = next(r for r in made.values() if r["LogicalResourceId"] == "InstanceRole")["PhysicalResourceId"]
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    got = iam.get_role_policy(RoleName=role, PolicyName="blog-agent")["PolicyDocument"] if "blog-agent" in names else {}
    if isinstance(got, str):
        try:
            got = json.loads(got)
        except ValueError:  # moto keeps a stack's inline policy as Python's repr of the document
            got = ast.literal_eval(got)
    normal = (json.dumps(got).replace(bucket, cfn_check.BUCKET).replace(key_id, cfn_check.KEY_ID)
              .replace(f"repository/{repo_name}", "repository/blog").replace(f":{acct}:", f":{cfn_check.ACCOUNT}:")
              .replace(f".{os.environ.get('AWS_REGION', 'us-east-1')}.", f".{cfn_check.REGION}.")
              .replace(f":{os.environ.get('AWS_REGION', 'us-east-1')}:", f":{cfn_check.REGION}:"))
    want = json.loads((ROOT / f"packaging/iam-policy-{ENV}.json").read_text())
    norm = lambda doc: [cfn_check.normalise_statement(x) for x in doc.get("Statement", [])]  # noqa: E731
    expect(sorted(names) == ["blog-agent", "ship-journal"] and norm(json.loads(normal)) == norm(want),
           f"instance role's policy as moto resolved it == packaging/iam-policy-{ENV}.json (names normalised)",
           json.dumps(json.loads(normal), indent=1))
    profiles = iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]
    expect(len(profiles) == 1, "instance profile holds the role")

    # ---- the way in and the journal (SSM, the operators' role, the log group) -------------------
    attached = [x["PolicyArn"] for x in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]]
    applied(attached == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"],
            "instance role: AmazonSSMManagedInstanceCore attached (Session Manager, Run Command)",
            f"attaches no AWS managed policy to a stack's role (ManagedPolicyArns ignored, {attached}; "
            "a moto_server without MOTO_IAM_LOAD_MANAGED_POLICIES=true has none): scripts/cfn_check.py "
            "checks the template's ManagedPolicyArns")
    expect("KeyName" not in data_of_launch_template(ec2, made), "launch template: no key pair")
    logs = boto3.client("logs", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))
    group = outputs.get("LogGroupName")
    lg = [x for x in logs.describe_log_groups(logGroupNamePrefix=group or "-")["logGroups"]
          if x["logGroupName"] == group]
    expect(group == f"/blog-agent/{ENV}" and len(lg) == 1 and lg[0].get("retentionInDays") == 14,
           f"log group {group} with LogRetentionDays (14) as retention", lg)
    ship = iam.get_role_policy(RoleName=role, PolicyName="ship-journal")["PolicyDocument"] \
        if "ship-journal" in names else {}
    ship = ship if isinstance(ship, dict) else (json.loads(ship) if ship.startswith("{\"") else ast.literal_eval(ship))
    res_ = [r for st in ship.get("Statement", []) for r in cfn_check.as_list(st["Resource"])]
    # GetAtt Arn of a log group ends in `:*` on AWS (the group and its streams); moto leaves it off.
    expect(bool(lg) and [r.removesuffix(":*") for r in res_] == [lg[0].get("arn", "").removesuffix(":*")],
           "instance role ships the journal to that log group only", ship)
    op = outputs.get("OperatorRoleArn", "")
    if expect(op.startswith("arn:") and ":role/" in op, f"operator role {op} (OperatorPrincipalArn set)"):
        op_name = op.rsplit("/", 1)[1]
        trust = iam.get_role(RoleName=op_name)["Role"]["AssumeRolePolicyDocument"]
        trust = trust if isinstance(trust, dict) else json.loads(trust)
        expect(trust["Statement"][0]["Principal"] == {"AWS": params["OperatorPrincipalArn"]},
               "operator role trusts OperatorPrincipalArn", trust)
        op_names = sorted(iam.list_role_policies(RoleName=op_name)["PolicyNames"])
        expect(op_names == ["blog-halt", "blog-hosts", "blog-rollback"],
               "operator role's policies: blog-halt, blog-hosts, blog-rollback", op_names)
        # The operator's own commands through the role, as a laptop would (moto does not enforce
        # IAM: this shows the role can be assumed and names the session, not what it may do).
        sts = boto3.client("sts", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                           region_name=os.environ.get("AWS_REGION", "us-east-1"))
        who = sts.assume_role(RoleArn=op, RoleSessionName="oncall")["AssumedRoleUser"]["Arn"]
        expect(who.endswith(f"/{op_name}/oncall"), f"AssumeRole on the operator role: {who}")
        note("does not enforce IAM: the operator role's and the hosts' grants are compared with "
             "packaging/iam-policy-operator.json and checked by scripts/cfn_check.py, not exercised")
    note("has no Session Manager or Run Command target here: `aws ssm start-session` and "
         "`send-command` to the hosts are AWS only (docs/operations.md)")

    # ---- launch template -----------------------------------------------------------------------
    lt_id = made["LaunchTemplate"]["PhysicalResourceId"]
    ver = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"][-1]
    data = ver["LaunchTemplateData"]
    want_md = json.loads((ROOT / "packaging/launch-template.json").read_text())["MetadataOptions"]
    got_md = {k: data.get("MetadataOptions", {}).get(k) for k in want_md}
    expect(got_md == want_md, "launch template: IMDSv2 required, hop limit 1, tags in metadata", got_md)
    user_data = base64.b64decode(data.get("UserData", "")).decode()
    doc = yaml.safe_load(user_data) if user_data else {}
    conf = next((w["content"] for w in doc.get("write_files", [])
                 if w["path"] == "/etc/blog-agent/config.toml"), "")
    config = tomllib.loads(conf) if conf else {}
    want_conf = {("release", "bucket"): bucket, ("release", "keys"): {ENV: "staging/stagebuild.txt"},
                 ("image", "repository"): repo_uri, ("rollout", "lifecycle_hook"): outputs.get("LifecycleHookName"),
                 ("environment", "allowed"): [ENV]}
    bad = {f"[{a}] {b}": config.get(a, {}).get(b) for (a, b), v in want_conf.items() if config.get(a, {}).get(b) != v}
    expect(not bad and f"PKG=s3://{bucket}/packages/" in user_data,
           f"launch template user-data: config.toml names this stack's bucket, key, repository and hook "
           f"({len(user_data)} bytes)", bad)
    expect(data.get("IamInstanceProfile", {}).get("Arn") == profiles[0]["Arn"] if profiles else False,
           "launch template: the instance profile", data.get("IamInstanceProfile"))

    # ---- group, hook, warm pool, instances -----------------------------------------------------
    g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    if not expect(len(g) == 1, f"Auto Scaling group {GROUP}"):
        return
    g = g[0]
    tg_arn = outputs.get("TargetGroupArn")
    tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in g["Tags"]}
    expect(tags.get("Environment") == (ENV, True), "group tag Environment=staging, propagated at launch", tags)
    expect(g.get("TargetGroupARNs") == [tg_arn], "group registers in the target group", g.get("TargetGroupARNs"))
    expect(g.get("LaunchTemplate", {}).get("LaunchTemplateId") == lt_id, "group uses the launch template")
    ids = [i["InstanceId"] for i in g["Instances"]]
    inst = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]] if ids else []
    itags = [{t["Key"]: t["Value"] for t in i.get("Tags", [])} for i in inst]
    expect(len(inst) == int(params["DesiredCapacity"]) and all(t.get("Environment") == ENV for t in itags),
           f"{len(inst)} instance(s) launched with tag Environment={ENV}", itags)

    spec = template["Resources"]["AutoScalingGroup"]["Properties"]["LifecycleHookSpecificationList"][0]
    hooks = asg.describe_lifecycle_hooks(AutoScalingGroupName=GROUP)["LifecycleHooks"]
    if spec["LifecycleHookName"] not in [x["LifecycleHookName"] for x in hooks]:
        note("ignores the group's LifecycleHookSpecificationList (no hook); "
             "created through PutLifecycleHook from the same spec instead")
        asg.put_lifecycle_hook(AutoScalingGroupName=GROUP, LifecycleHookName=spec["LifecycleHookName"],
                               LifecycleTransition=spec["LifecycleTransition"],
                               HeartbeatTimeout=spec["HeartbeatTimeout"], DefaultResult=spec["DefaultResult"])
        hooks = asg.describe_lifecycle_hooks(AutoScalingGroupName=GROUP)["LifecycleHooks"]
    h = {x["LifecycleHookName"]: x for x in hooks}.get(outputs.get("LifecycleHookName"), {})
    expect(h.get("LifecycleTransition") == "autoscaling:EC2_INSTANCE_LAUNCHING" and h.get("HeartbeatTimeout") == 300
           and h.get("DefaultResult") == "ABANDON",
           f"DescribeLifecycleHooks answers hook {outputs.get('LifecycleHookName')} (what the agent reads)", hooks)

    wp = asg.describe_warm_pool(AutoScalingGroupName=GROUP).get("WarmPoolConfiguration")
    if not wp:
        note("has no warm pool for the group (the skipped AWS::AutoScaling::WarmPool); "
             "created through PutWarmPool from the same properties instead")
        props = template["Resources"]["WarmPool"]["Properties"]
        asg.put_warm_pool(AutoScalingGroupName=GROUP, PoolState=props["PoolState"], MinSize=props["MinSize"])
        wp = asg.describe_warm_pool(AutoScalingGroupName=GROUP).get("WarmPoolConfiguration")
    expect((wp or {}).get("PoolState") == "Stopped", "warm pool: PoolState Stopped", wp)

    # ---- load balancer -------------------------------------------------------------------------
    tg = elb.describe_target_groups(TargetGroupArns=[tg_arn])["TargetGroups"][0]
    expect((tg["Port"], tg["HealthCheckPath"], tg["HealthCheckPort"], tg.get("Matcher", {}).get("HttpCode"))
           == (80, "/", "traffic-port", "200-299"),
           "target group: port 80, health check / on the traffic port, 2xx", tg)
    lb_arn = made["LoadBalancer"]["PhysicalResourceId"]
    listeners = elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]
    expect([(x["Port"], x["Protocol"], x["DefaultActions"][0].get("TargetGroupArn")) for x in listeners]
           == [(80, "HTTP", tg_arn)], "listener: HTTP 80 forwards to the target group", listeners)
    sg = {x["GroupId"]: x for x in ec2.describe_security_groups(GroupIds=[
        made["InstanceSecurityGroup"]["PhysicalResourceId"], made["LoadBalancerSecurityGroup"]["PhysicalResourceId"]]
    )["SecurityGroups"]}
    inst_sg = sg[made["InstanceSecurityGroup"]["PhysicalResourceId"]]["IpPermissions"]
    lb_sg_id = made["LoadBalancerSecurityGroup"]["PhysicalResourceId"]
    expect([(p["FromPort"], p["ToPort"], [x["GroupId"] for x in p.get("UserIdGroupPairs", [])], p.get("IpRanges"))
            for p in inst_sg] == [(80, 80, [lb_sg_id], [])],
           "instance security group: port 80 from the load balancer's group only", inst_sg)


def check_notifications(s3, template, params, outputs, bucket):
    """The halt prefix's notifications: the stack's topic, the bucket's notification configuration
    (applied through the API where moto ignores the property), and what a subscriber receives for
    a vote, a bake record and an object elsewhere in the bucket."""
    endpoint, region = os.environ["AWS_ENDPOINT_URL"], os.environ.get("AWS_REGION", "us-east-1")
    sns = boto3.client("sns", endpoint_url=endpoint, region_name=region)
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)
    topic = outputs.get("NotificationTopicArn", "")
    attrs = api(lambda: sns.get_topic_attributes(TopicArn=topic)["Attributes"])
    if not expect(isinstance(attrs, dict), f"output NotificationTopicArn is the stack's SNS topic ({topic})", attrs):
        return
    policy = json.loads(attrs.get("Policy") or "{}")
    applied(any(st.get("Principal") == {"Service": "s3.amazonaws.com"} for st in policy.get("Statement", [])),
            "topic policy lets S3 publish", "has no AWS::SNS::TopicPolicy type: the topic keeps its default policy")
    ev = cfn_check.Evaluator(template, **params)
    (conf,) = ev.ev(template["Resources"]["ArtifactsBucket"]["Properties"]["NotificationConfiguration"]
                    ["TopicConfigurations"])
    want = {"TopicArn": topic, "Events": [conf["Event"]],
            "Filter": {"Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]}
                                               for r in conf["Filter"]["S3Key"]["Rules"]]}}}
    got = api(lambda: s3.get_bucket_notification_configuration(Bucket=bucket).get("TopicConfigurations", []))
    if isinstance(got, list) and got:
        expect([{k: g.get(k) for k in want} for g in got] == [want], "bucket: notifications to the topic", got)
    else:
        note("ignores the bucket's NotificationConfiguration: applied through PutBucketNotificationConfiguration")
        s3.put_bucket_notification_configuration(Bucket=bucket,
                                                 NotificationConfiguration={"TopicConfigurations": [want]})
    queue = sqs.create_queue(QueueName=f"blog-cfn-check-{os.getpid()}")["QueueUrl"]
    try:
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        sha = "3f2a9c1" + "1" * 33
        told = {f"staging/halted/{sha}/AROAEXAMPLE:i-0aaa", f"staging/halted/bake/{sha}/baked/AROAEXAMPLE:i-0aaa"}
        for key in sorted(told) + ["staging/not-a-halt.txt"]:
            s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
        keys, deadline, extra = [], time.monotonic() + 20, 1
        # Until both arrived, then one more receive: a message for the third object shows there.
        while (len(keys) < len(told) or extra) and time.monotonic() < deadline:
            extra -= len(keys) >= len(told)
            for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
                event = json.loads(json.loads(m["Body"])["Message"])
                # S3 URL-encodes the key in its events (`:` as %3A), as AWS does.
                keys += [urllib.parse.unquote_plus(r["s3"]["object"]["key"]) for r in event.get("Records", [])]
        expect(sorted(keys) == sorted(told), "a subscriber hears of new votes and bake records under the halt "
               "prefix, and of nothing else in the bucket", keys)
    finally:
        sqs.delete_queue(QueueUrl=queue)


def data_of_launch_template(ec2, made):
    lt_id = made["LaunchTemplate"]["PhysicalResourceId"]
    return ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"][-1]["LaunchTemplateData"]


# ---- the agent against the stack ---------------------------------------------------------------
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"


def agent_binary():
    """(path, None), or (None, why there is none): BLOG_AGENT_BIN, else the debug build, else
    the static release build."""
    given = os.environ.get("BLOG_AGENT_BIN")
    tried = [Path(given)] if given else [ROOT / "target/debug/blog-agent",
                                         ROOT / "target/x86_64-unknown-linux-musl/release/blog-agent"]
    for path in tried:
        if path.is_file() and os.access(path, os.X_OK):
            return path, None
    if given:
        return None, f"BLOG_AGENT_BIN={given} is not an executable file"
    return None, ("no blog-agent binary (target/debug/blog-agent or target/x86_64-unknown-linux-musl/release/"
                  "blog-agent; not built yet): build it, or set BLOG_AGENT_BIN")


def minimal_manifest():
    """A small valid image manifest (schema 2): a config blob and one layer, an empty tar."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w"):
        pass
    layer = gzip.compress(tar.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar.getvalue()).hexdigest()]}}).encode()
    blob = lambda media, data: {"mediaType": media, "size": len(data),  # noqa: E731
                                "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
    return json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_MEDIA,
                       "config": blob("application/vnd.docker.container.image.v1+json", config),
                       "layers": [blob("application/vnd.docker.image.rootfs.diff.tar.gzip", layer)]}).encode()


def register_image(ecr, registry, repo_name, sha):
    """CI's push: a tiny image built and pushed to the local registry as REGISTRY/REPO:SHA
    (scripts/publish-image.sh), and that exact manifest registered in the stack's ECR repository
    with its digest (PutImage; moto keeps no layers), as tests/pipeline.rs does. Without Docker
    or the registry, a minimal manifest made here is registered instead. Returns (digest, why the
    image is not in the registry or None)."""
    manifest, why = None, None
    if not registry:
        why = "BLOG_AGENT_TEST_REGISTRY is not set"
    elif not shutil.which("docker"):
        why = "no docker command"
    else:
        r = subprocess.run(["bash", str(ROOT / "scripts/publish-image.sh"), sha, "good", registry, repo_name],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            why = f"scripts/publish-image.sh failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
        else:
            creds = f"{os.environ.get('ECR_TOKEN_USER', 'AWS')}:{os.environ.get('ECR_TOKEN_PASSWORD', '')}"
            req = urllib.request.Request(f"http://{registry}/v2/{repo_name}/manifests/{sha}", headers={
                "Accept": MANIFEST_MEDIA, "Authorization": "Basic " + base64.b64encode(creds.encode()).decode()})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    manifest = resp.read()
            except Exception as e:  # noqa: BLE001
                why = f"GET {req.full_url}: {e}"
    if manifest is None:
        manifest = minimal_manifest()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    put = ecr.put_image(repositoryName=repo_name, imageManifest=manifest.decode(),
                        imageManifestMediaType=MANIFEST_MEDIA, imageTag=sha, imageDigest=digest)
    expect(put["image"]["imageId"]["imageDigest"] == digest,
           f"ECR PutImage {repo_name}:{sha[:12]} in the stack's repository: {digest[:19]}... "
           + ("(the manifest the local registry serves)" if why is None else "(a minimal manifest made here)"),
           put["image"]["imageId"])
    return digest, why


class FakeImds:
    """Instance metadata on 127.0.0.1 for the agent's launch-gate check: an IMDSv2 token and the
    instance id of the stack's group's instance (nothing else: region and credentials come from
    the environment). The agent reaches no other metadata service."""

    def __init__(self, instance_id):
        class Handler(http.server.BaseHTTPRequestHandler):
            def reply(self, status, body="", headers=()):
                data = body.encode()
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):  # noqa: N802
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                if self.path == "/latest/api/token" and ttl:
                    self.reply(200, "cfn-check-token", [("X-aws-ec2-metadata-token-ttl-seconds", ttl)])
                else:
                    self.reply(400)

            def do_GET(self):  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") != "cfn-check-token":
                    self.reply(401)
                elif self.path == "/latest/meta-data/instance-id":
                    self.reply(200, instance_id)
                else:
                    self.reply(404)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_agent(cfn, s3, ecr, asg, stack, require):
    """The real agent against what the stack made: a config from the stack's outputs, an image
    registered in its repository, then `publish` (the object lands in its bucket, SSE-KMS with its
    key, with the digest), `releases --json` (lists it) and `check` (its S3, ECR, registry and
    launch-gate lines pass; Docker and port lines are reported, not asserted)."""
    binary, why = agent_binary()
    if binary is None:
        if require:
            fail(f"the agent against the stack: {why}")
        else:
            print(f"skip the agent against the stack (publish, releases, check): {why}")
        return
    status, s = wait(cfn, stack, "CREATE_COMPLETE", seconds=5)
    if status != "CREATE_COMPLETE":
        return  # reported by check_stack
    out = {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])}
    bucket, key, key_arn, repo_uri, hook = (out.get(k) for k in (
        "Bucket", "ReleaseKey", "KmsKeyArn", "RepositoryUri", "LifecycleHookName"))
    repo_name = repo_uri.split("/", 1)[1]  # the URI's path: the ECR repository name
    registry = os.environ.get("BLOG_AGENT_TEST_REGISTRY", "")
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(binary.stat().st_mtime))
    ok(f"the agent against the stack: {binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary} "
       f"(built {built})")

    # The release history needs versioning, which moto did not apply from the template.
    if s3.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        print("     (moto left versioning off, see above: turned on through PutBucketVersioning, "
              "as the template's VersioningConfiguration asks)")
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    sha = hashlib.sha1(f"cfn-check {stack}".encode()).hexdigest()
    digest, not_in_registry = register_image(ecr, registry, repo_name, sha)
    if not_in_registry:
        print(f"skip image in the local registry: {not_in_registry}; `check`'s registry line not asserted")

    group = out.get("AutoScalingGroupName", GROUP)
    instances = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    instance_id = next((i["InstanceId"] for g in instances for i in g["Instances"]), None)
    imds = FakeImds(instance_id or "i-00000000000000000")
    work = Path(tempfile.mkdtemp(prefix="cfn-agent-check."))
    try:
        port = free_port()
        cfg = work / "config.toml"
        cfg.write_text(
            f'[environment]\nallowed = ["{ENV}"]\n'
            f'[release]\nbucket = "{bucket}"\nkms_key = "{key_arn}"\n'
            f'[release.keys]\n{ENV} = "{key}"\n'
            f'[image]\nrepository = "{registry or "127.0.0.1:9"}/{repo_name}"\n'
            f'[container]\nname = "cfn-check-{os.getpid()}"\nports = ["127.0.0.1:{port}:80"]\n'
            f'[health]\nurl = "http://127.0.0.1:{port}/"\n'
            f'[agent]\nstate_dir = "{work / "state"}"\n'
            f'[traffic]\nmode = "publish"\n'
            f'[rollout]\nlifecycle_hook = "{hook}"\n')
        env = {k: v for k, v in os.environ.items()
               if k not in ("AWS_PROFILE", "BLOG_AGENT_CONFIG", "RUST_LOG", "JOURNAL_STREAM")}
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.endpoint

        def agent(*argv):
            r = subprocess.run([str(binary), "--config", str(cfg), "--env", ENV, *argv], env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
            return r.returncode, r.stdout, r.stderr

        # publish
        rc, stdout, stderr = agent("publish", sha)
        expect(rc == 0 and f"published {sha}" in stderr and digest in stderr,
               f"blog-agent publish {sha[:12]}: exit {rc}", stdout + stderr)
        head = api(lambda: s3.head_object(Bucket=bucket, Key=key))
        head = head if isinstance(head, dict) else {}
        body = api(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
        meta = head.get("Metadata", {})
        expect(body == f"{sha}\n" and head.get("ServerSideEncryption") == "aws:kms"
               and head.get("SSEKMSKeyId") == key_arn and meta.get("blog-digest") == digest,
               f"publish: s3://{bucket}/{key} holds the SHA, SSE-KMS with the stack's key, "
               f"blog-digest {digest[:19]}...",
               {"body": body, "ServerSideEncryption": head.get("ServerSideEncryption"),
                "SSEKMSKeyId": head.get("SSEKMSKeyId"), "Metadata": meta})

        # releases --json
        rc, stdout, stderr = agent("releases", "--json")
        try:
            hist = json.loads(stdout)
        except ValueError:
            hist = {}
        first = (hist.get("releases") or [{}])[0]
        expect(rc == 0 and first.get("sha") == sha and first.get("digest") == digest and first.get("current")
               and hist.get("versioning_off") is False,
               f"blog-agent releases --json: exit {rc}, newest {str(first.get('sha'))[:12]} current, "
               f"{len(hist.get('releases') or [])} release(s)", stdout + stderr)

        # check: its lines, `ok|FAIL|skip name: detail`
        rc, stdout, stderr = agent("check")
        lines = {}
        for line in stdout.splitlines():
            word, _, rest = line.partition(" ")
            name, _, detail = rest.strip().partition(": ")
            lines[name] = (word, detail)
        print(f"     blog-agent check (exit {rc}):")
        for line in (stdout + stderr).rstrip().splitlines():
            print(f"       {line}")
        want = {
            "config": lambda d: d == str(cfg),
            "environment": lambda d: d.startswith(ENV),
            "aws region": lambda d: d == os.environ.get("AWS_REGION", "us-east-1"),
            "aws credentials": lambda d: True,
            "s3 object": lambda d: bucket in d and key in d,
            "release sha": lambda d: d == sha,
            "release halt": lambda d: "is not halted" in d,
            "ecr token": lambda d: True,
            "launch gate": lambda d: f'"{hook}"' in d and f'"{group}"' in d and str(instance_id) in d,
        }
        if not not_in_registry:
            # Hosts pull a published release by its digest, and `check` asks for that.
            want["registry"] = lambda d: f"{repo_name}@{digest}" in d
        bad = {n: lines.get(n) for n, good in want.items()
               if not (lines.get(n, ("", ""))[0] == "ok" and good(lines[n][1]))}
        others = [n for n in lines if n not in want]
        expect(not bad,
               f"blog-agent check: ok {', '.join(want)} (not asserted: {', '.join(others)})",
               json.dumps(bad, indent=1))
    finally:
        imds.close()
        shutil.rmtree(work, ignore_errors=True)


def delete_stack(cfn, s3, ecr, asg, iam, stack, hook):
    """Empties the versioned bucket and the repository (as docs/cloudformation.md says to),
    removes what this script added through the API (moto keeps a group's lifecycle hooks after
    the group is deleted), deletes the stack and checks that the group and the role went."""
    try:
        ids = {r["LogicalResourceId"]: r["PhysicalResourceId"]
               for r in cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]}
    except Exception:  # noqa: BLE001
        ids = {}
    bucket, role, repo = ids.get("ArtifactsBucket"), ids.get("InstanceRole"), ids.get("Repository")
    while bucket:  # every version and delete marker, 1000 at a time
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=1000)
        objs = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if not objs:
            break
        s3.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
    if repo:
        try:
            images = ecr.list_images(repositoryName=repo)["imageIds"]
            if images:
                ecr.batch_delete_image(repositoryName=repo, imageIds=images)
        except Exception:  # noqa: BLE001 - no repository: nothing to empty
            pass
    for call in (lambda: asg.delete_warm_pool(AutoScalingGroupName=GROUP, ForceDelete=True),
                 lambda: asg.delete_lifecycle_hook(AutoScalingGroupName=GROUP, LifecycleHookName=hook)):
        try:
            call()
        except Exception:  # noqa: BLE001 - not there: nothing to remove
            pass
    cfn.delete_stack(StackName=stack)
    status, _ = wait(cfn, stack, "DELETE_COMPLETE")
    gone = not asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    role_gone = True
    if role:
        try:
            iam.get_role(RoleName=role)
            role_gone = False
        except iam.exceptions.NoSuchEntityException:
            pass
    expect(status == "DELETE_COMPLETE" and gone and role_gone,
           f"stack deleted after emptying the bucket: {status}; group gone: {gone}; role gone: {role_gone}")


if __name__ == "__main__":
    rc = main()
    if rc != 2:
        n = cfn_check.failures
        print("cfn_moto_check: " + (f"{n} check(s) failed" if n else "all checks passed"))
    sys.exit(rc)
