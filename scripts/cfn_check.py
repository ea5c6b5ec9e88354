#!/usr/bin/env python3
"""Checks packaging/cloudformation/blog.yaml against the files it must agree with, and generates
its user-data block from cloud-init/al2023.yaml.

    python3 scripts/cfn_check.py                     # the checks: one `ok`/`FAIL` line each
    python3 scripts/cfn_check.py --write-user-data   # regenerate the template's UserData block

Run by scripts/check-cloudformation.sh (needs PyYAML; Python 3.11+ for tomllib). Exit status:
the number of failed checks (0: all passed).

How placeholders are normalised: the template is evaluated for one environment the way
CloudFormation would (Ref, Fn::Sub, Fn::If, Fn::FindInMap, Fn::Select, Fn::Split, Fn::GetAtt),
with the placeholder values of the JSON policies standing in for what only AWS knows: account
123456789012, region us-east-1, partition aws, bucket blog-artifacts, KMS key id
00000000-0000-0000-0000-000000000000, and the repository named by the RepositoryName parameter.
The result is compared with packaging/iam-policy-<environment>.json statement by statement.
The optional publisher role (CircleCiOrgId set) is evaluated the same way, with the organization
and project ids and the repository (vcs-origin) of packaging/iam-trust-circleci.json, and compared
with packaging/iam-policy-publisher-<environment>.json (its inline policy) and
packaging/iam-trust-circleci.json (its trust policy, the same for both environments; the
identity provider's ARN is arn:aws:iam::123456789012:oidc-provider/<its Url>).
The optional operator role (OperatorPrincipalArn set): its blog-halt policy for staging and for
production, merged, is compared with packaging/iam-policy-operator.json; its other grants are
checked for what they may write and which instances they reach. Also: the hosts' SSM policy and
log group, the CloudWatch agent's config in the user-data, and the template's size (51,200 bytes
is what `aws cloudformation deploy --template-file` may send).
"""
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import difflib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "packaging/cloudformation/blog.yaml"
USER_DATA = ROOT / "cloud-init/al2023.yaml"
EXAMPLE = ROOT / "packaging/config.example.toml"
LAUNCH_TEMPLATE_JSON = ROOT / "packaging/launch-template.json"
PUBLISHER_POLICY = {env: ROOT / f"packaging/iam-policy-publisher-{env}.json" for env in ("staging", "production")}
PUBLISHER_TRUST = ROOT / "packaging/iam-trust-circleci.json"
ENVIRONMENTS = ("staging", "production")
MAX_USER_DATA = 16384  # EC2 rejects user-data over 16 KiB (before base64)

ACCOUNT, REGION, PARTITION = "123456789012", "us-east-1", "aws"
BUCKET, KEY_ID = "blog-artifacts", "00000000-0000-0000-0000-000000000000"


# ---- CloudFormation YAML ------------------------------------------------------------------------
class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref X -> {"Ref": X}, !Sub -> Fn::Sub, ...)."""


def _short_form(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _short_form)


def load_template(text=None):
    return yaml.load(TEMPLATE.read_text() if text is None else text, Loader=CfnLoader)


class Evaluator:
    """Evaluates a template's intrinsic functions for given parameters, with placeholders for
    the values only AWS knows (see the module docstring)."""

    def __init__(self, template, **params):
        self.t = template
        self.params = {k: v.get("Default") for k, v in template.get("Parameters", {}).items()}
        self.params.update(params)
        self.pseudo = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION,
                       "AWS::Partition": PARTITION, "AWS::URLSuffix": "amazonaws.com",
                       "AWS::StackName": "blog-stack"}

    def resource(self, name):
        return self.t["Resources"][name]

    def condition(self, name):
        return bool(self.ev(self.t["Conditions"][name]))

    def ref(self, name):
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            if self.params[name] is None:
                return f"<{name}>"
            return self.params[name]
        res = self.resource(name)  # KeyError: a reference to nothing
        props = res.get("Properties", {})
        kind = res["Type"]
        if kind == "AWS::S3::Bucket":
            return BUCKET
        if kind == "AWS::KMS::Key":
            return KEY_ID
        if kind == "AWS::ECR::Repository":
            return self.ev(props["RepositoryName"])
        if kind == "AWS::AutoScaling::AutoScalingGroup" and "AutoScalingGroupName" in props:
            return self.ev(props["AutoScalingGroupName"])
        if kind == "AWS::Logs::LogGroup" and "LogGroupName" in props:
            return self.ev(props["LogGroupName"])
        if kind == "AWS::IAM::OIDCProvider":
            url = self.ev(props["Url"]).removeprefix("https://")
            return f"arn:{PARTITION}:iam::{ACCOUNT}:oidc-provider/{url}"
        return f"<{name}>"

    def getatt(self, name, attr):
        kind = self.resource(name)["Type"]
        if (kind, attr) == ("AWS::S3::Bucket", "Arn"):
            return f"arn:{PARTITION}:s3:::{self.ref(name)}"
        if (kind, attr) == ("AWS::KMS::Key", "Arn"):
            return f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{self.ref(name)}"
        if (kind, attr) == ("AWS::ECR::Repository", "Arn"):
            return f"arn:{PARTITION}:ecr:{REGION}:{ACCOUNT}:repository/{self.ref(name)}"
        if (kind, attr) == ("AWS::ECR::Repository", "RepositoryUri"):
            return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{self.ref(name)}"
        return f"<{name}.{attr}>"

    def sub(self, arg):
        text, names = (arg, {}) if isinstance(arg, str) else (arg[0], self.ev(arg[1]))

        def one(m):
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in names:
                return str(names[name])
            if "." in name and name.split(".", 1)[0] in self.t["Resources"]:
                return str(self.getatt(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]*)\}", one, text)

    def ev(self, node):
        if isinstance(node, list):
            return [self.ev(x) for x in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Condition":
                return self.condition(arg)
            if fn == "Fn::GetAtt":
                return self.getatt(*(arg if isinstance(arg, list) else arg.split(".", 1)))
            if fn == "Fn::Sub":
                return self.sub(arg)
            if fn == "Fn::If":
                return self.ev(arg[1] if self.condition(arg[0]) else arg[2])
            if fn == "Fn::Equals":
                a, b = self.ev(arg)
                return str(a) == str(b)
            if fn == "Fn::Not":
                return not self.ev(arg[0])
            if fn == "Fn::And":
                return all(self.ev(arg))
            if fn == "Fn::Or":
                return any(self.ev(arg))
            if fn == "Fn::FindInMap":
                m, k1, k2 = self.ev(arg)
                return self.t["Mappings"][m][k1][k2]
            if fn == "Fn::Select":
                return self.ev(arg[1])[int(self.ev(arg[0]))]
            if fn == "Fn::Split":
                return self.ev(arg[1]).split(self.ev(arg[0]))
            if fn == "Fn::Join":
                return self.ev(arg[0]).join(str(x) for x in self.ev(arg[1]))
            if fn == "Fn::Base64":
                return self.ev(arg)  # kept as text, for the checks
        return {k: self.ev(v) for k, v in node.items()}


# ---- the user-data block -------------------------------------------------------------------------
BEGIN = "# BEGIN user-data"
END = "# END user-data"
HEADER = """\
# blog-agent on Amazon Linux 2023: the user-data of packaging/cloudformation/blog.yaml,
# generated from cloud-init/al2023.yaml (scripts/cfn_check.py --write-user-data).
# The environment comes from the instance tag `Environment`, set by the Auto Scaling group.
"""
# Names the generated Fn::Sub text may use: the template's own, and ReleaseKey (its variable map).
SUB_VARS = {"ArtifactsBucket", "Repository.RepositoryUri", "Environment", "ReleaseKey",
            "AgentPackageKey", "AgentPackageSha256", "HostLogGroup",
            "PublicKeyLine"}
RELEASE_KEY_EXPR = """\
            - ReleaseKey: !If
                - DefaultShaObjectKey
                - !FindInMap [Environments, !Ref Environment, ShaObjectKey]
                - !Ref ShaObjectKey
              PublicKeyLine: !If
                - VerifyReleases
                - !Sub 'public_key = "${ReleasePublicKey}"'
                - "# public_key: none (ReleasePublicKey empty)"
"""


def lifecycle_hook_name(template):
    asg = template["Resources"]["AutoScalingGroup"]["Properties"]
    hooks = [h for h in asg.get("LifecycleHookSpecificationList", [])
             if h.get("LifecycleTransition") == "autoscaling:EC2_INSTANCE_LAUNCHING"]
    if len(hooks) != 1:
        raise ValueError(f"AutoScalingGroup has {len(hooks)} launch lifecycle hooks, expected 1")
    return hooks[0]["LifecycleHookName"]


def user_data_sub_text(source, hook):
    """cloud-init/al2023.yaml as the text of the template's Fn::Sub: every CHANGE ME filled
    from the stack, the config narrowed to the stack's environment, and the launch gate on."""
    text = source.replace("${", "${!")  # a literal ${ in the file stays literal

    def edit(pattern, replace, what, count=1):
        nonlocal text
        text, n = re.subn(pattern, replace, text, flags=re.M)
        if n != count:
            raise ValueError(f"cloud-init/al2023.yaml: {what}: {n} matches of /{pattern}/, "
                             f"expected {count}; update scripts/cfn_check.py")

    edit(r"\A#cloud-config\n(?:#.*\n)+", lambda m: "#cloud-config\n" + HEADER, "header comment")
    edit(r'^(\s*)allowed = \[.*\]$', lambda m: m[1] + 'allowed = ["${Environment}"]',
         "[environment] allowed")
    edit(r'^(\s*)bucket = "blog-artifacts"$',
         lambda m: m[1] + 'bucket = "${ArtifactsBucket}"\n' + m[1] + "${PublicKeyLine}", "[release] bucket")
    edit(r'^(\s*)\[release\.keys\]\n(?:\1[a-z]+ = ".*"\n)+',
         lambda m: f'{m[1]}[release.keys]\n{m[1]}${{Environment}} = "${{ReleaseKey}}"\n',
         "[release.keys]")
    edit(r'^\s*# CHANGE ME: your account, region and repository\.\n(\s*)repository = ".*"$',
         lambda m: m[1] + 'repository = "${Repository.RepositoryUri}"', "[image] repository")
    edit(r'^(\s*)# CHANGE ME: the \.rpm in S3\.', lambda m: m[1] + "# The .rpm in S3 (parameter AgentPackageKey).",
         "PKG comment")
    edit(r'^(\s*)PKG=s3://blog-artifacts/packages/\S+$',
         lambda m: m[1] + "PKG=s3://${ArtifactsBucket}/${AgentPackageKey}", "PKG=")
    edit(r"^(\s*)# CHANGE ME: the package's SHA-256 \(`sha256sum FILE`\)\.",
         lambda m: m[1] + "# The package's SHA-256 (parameter AgentPackageSha256).", "PKG_SHA256 comment")
    edit(r'^(\s*)PKG_SHA256=""$', lambda m: m[1] + 'PKG_SHA256="${AgentPackageSha256}"',
         "PKG_SHA256=")
    # The CloudWatch agent's config (write_files) ships to the stack's log group.
    edit(r'^\s*# CHANGE ME: the log group of this environment\'s hosts \(two lines\)\.\n', "",
         "log group comment")
    edit(r'"log_group_name": "/blog-agent/staging"',
         '"log_group_name": "${HostLogGroup}"', "log_group_name", count=2)
    # [rollout] lifecycle_hook at the end of the config.toml that write_files writes.
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines)
              if re.fullmatch(r"\s*(- )?path: /etc/blog-agent/config\.toml", line))
    start = next(i for i in range(at, len(lines)) if lines[i].strip() == "content: |") + 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start
    for i in range(start, len(lines)):
        if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) < indent:
            break
        if lines[i].strip():
            end = i + 1
    if any(line.strip() == "[rollout]" for line in lines[start:end]):
        raise ValueError("cloud-init/al2023.yaml already has [rollout]: update scripts/cfn_check.py")
    pad = " " * indent
    lines[end:end] = ["", pad + "[rollout]", f'{pad}lifecycle_hook = "{hook}"']
    text = "\n".join(lines)

    if "CHANGE ME" in text:
        raise ValueError("cloud-init/al2023.yaml has a CHANGE ME the generator does not fill: "
                         "update scripts/cfn_check.py")
    used = set(re.findall(r"\$\{([^!}][^}]*)\}", text))
    if used - SUB_VARS:
        raise ValueError(f"unexpected substitutions {sorted(used - SUB_VARS)}")
    return text


def user_data_block(source, hook):
    body = user_data_sub_text(source, hook)
    out = [BEGIN + ": generated from cloud-init/al2023.yaml by",
           "# `python3 scripts/cfn_check.py --write-user-data`. Edit that file, then regenerate.",
           "UserData:",
           "  Fn::Base64: !Sub",
           "    - |"]
    out = ["        " + line for line in out]
    for line in body.rstrip("\n").split("\n"):
        out.append(("              " + line) if line else "")
    out.append(RELEASE_KEY_EXPR.rstrip("\n"))
    out.append("        " + END)
    return "\n".join(out) + "\n"


def replace_block(template_text, block):
    lines = template_text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip().startswith(BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(f"{TEMPLATE.relative_to(ROOT)}: expected one '{BEGIN}' ... '{END}' block")
    return "".join(lines[:begins[0]]) + block + "".join(lines[ends[0] + 1:])


# ---- the checks ----------------------------------------------------------------------------------
failures = 0


def ok(what):
    print(f"ok   {what}")


def fail(what, detail=""):
    global failures
    failures += 1
    print(f"FAIL {what}")
    for line in str(detail).rstrip().splitlines():
        print(f"     {line}")


def check(what):
    """Runs the decorated function at once: `ok WHAT` (plus what it returns), or `FAIL WHAT`
    with the exception's text."""
    def run(fn):
        try:
            extra = fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the rest
            fail(what, e if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}")
        else:
            ok(what + (f" ({extra})" if extra else ""))
        return fn
    return run


def as_list(x):
    return x if isinstance(x, list) else [x]


def normalise_statement(st):
    st = dict(st)
    for k in ("Action", "Resource"):
        if k in st:
            st[k] = as_list(st[k])
    return st


def same_policy(got, want, name):
    """Two policy documents equal statement by statement (Action and Resource as lists)."""
    assert got["Version"] == want["Version"], f"Version {got['Version']} != {want['Version']}"
    g = [normalise_statement(s) for s in got["Statement"]]
    w = [normalise_statement(s) for s in want["Statement"]]
    if g != w:
        dump = lambda x: json.dumps(x, indent=1, sort_keys=True).splitlines()  # noqa: E731
        raise AssertionError("\n".join(difflib.unified_diff(dump(w), dump(g), name, "template",
                                                            lineterm="", n=2)))


SUB_PATTERN = (r"org/([0-9a-f-]{36})/project/([0-9a-f-]{36})/user/\?{8}-\?{4}-\?{4}-\?{4}-\?{12}"
               r"/vcs-origin/([A-Za-z0-9.-]+/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+)/vcs-ref/refs/heads/main")


def publisher_placeholders(trust):
    """The CircleCI organization and project ids and the repository (vcs-origin) of
    packaging/iam-trust-circleci.json."""
    (st,) = trust["Statement"]
    sub = next(iter(st["Condition"]["StringLike"].values()))
    m = re.fullmatch(SUB_PATTERN, sub)
    if not m:
        raise ValueError(f"{PUBLISHER_TRUST.name}: sub {sub!r} is not "
                         "org/<org>/project/<project>/user/<36 ?>/vcs-origin/<host/owner/repo>/vcs-ref/refs/heads/main")
    return m[1], m[2], m[3]


def example():
    text = EXAMPLE.read_text()
    # `# lifecycle_hook = "blog-launch"` documents an optional key: uncomment such lines.
    return tomllib.loads(re.sub(r'(?m)^#\s*([a-z_]+ = )', r'\1', text))


def main():
    if sys.argv[1:] == ["--write-user-data"]:
        text = TEMPLATE.read_text()
        block = user_data_block(USER_DATA.read_text(), lifecycle_hook_name(load_template(text)))
        new = replace_block(text, block)
        if new != text:
            TEMPLATE.write_text(new)
            print(f"{TEMPLATE.relative_to(ROOT)}: user-data regenerated")
        else:
            print(f"{TEMPLATE.relative_to(ROOT)}: user-data already up to date")
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2

    text = TEMPLATE.read_text()
    t = load_template(text)
    res = t["Resources"]
    ex = example()
    rel = TEMPLATE.relative_to(ROOT)

    @check(f"{rel} user-data block is generated from {USER_DATA.relative_to(ROOT)} (up to date)")
    def _():
        want = replace_block(text, user_data_block(USER_DATA.read_text(), lifecycle_hook_name(t)))
        if want != text:
            diff = difflib.unified_diff(text.splitlines(), want.splitlines(), "template", "generated",
                                        lineterm="", n=1)
            raise AssertionError("run: python3 scripts/cfn_check.py --write-user-data\n"
                                 + "\n".join(list(diff)[:40]))

    @check(f"{rel} is under 51,200 bytes (`aws cloudformation deploy --template-file` sends it in "
           "the request; bigger needs an S3 bucket the stack cannot have made yet)")
    def _():
        size = len(text.encode())
        assert size < 51200, f"{size} bytes: shorten comments, or docs/cloudformation.md needs --s3-bucket"
        return f"{size} bytes"

    @check(f"{rel} hardcodes no account, region, partition or bucket")
    def _():
        found = [s for s in (ACCOUNT, REGION, "arn:aws:", BUCKET) if s in text]
        assert not found, f"literal {found}: use ${{AWS::AccountId}}, ${{AWS::Region}}, ${{AWS::Partition}}, the resources"

    for env in ENVIRONMENTS:
        @check(f"{rel} instance policy (Environment={env}) == packaging/iam-policy-{env}.json")
        def _():
            got = Evaluator(t, Environment=env).ev(res["InstanceRole"]["Properties"]["Policies"])
            names = [p["PolicyName"] for p in got]
            assert sorted(names) == ["blog-agent", "ship-journal"], f"inline policies {names}"
            got = next(p for p in got if p["PolicyName"] == "blog-agent")["PolicyDocument"]
            want = json.loads((ROOT / f"packaging/iam-policy-{env}.json").read_text())
            assert got["Version"] == want["Version"], f"Version {got['Version']} != {want['Version']}"
            g = [normalise_statement(s) for s in got["Statement"]]
            w = [normalise_statement(s) for s in want["Statement"]]
            if g != w:
                dump = lambda x: json.dumps(x, indent=1, sort_keys=True).splitlines()  # noqa: E731
                raise AssertionError("\n".join(difflib.unified_diff(
                    dump(w), dump(g), f"iam-policy-{env}.json", "template", lineterm="", n=2)))

    @check(f"{rel} hosts: SSM managed instance core policy, no key pair, no SSH; the journal's "
           "log group with LogRetentionDays; the role ships to it only")
    def _():
        props = res["InstanceRole"]["Properties"]
        arns = Evaluator(t, Environment="staging").ev(props.get("ManagedPolicyArns", []))
        assert arns == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"], f"ManagedPolicyArns {arns}"
        lt = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
        assert "KeyName" not in lt, "the launch template names a key pair"
        ingress = [r for g in ("InstanceSecurityGroup",)
                   for r in res[g]["Properties"].get("SecurityGroupIngress", [])]
        assert not any(r.get("FromPort", 0) <= 22 <= r.get("ToPort", -1) for r in ingress), "port 22 open"
        lg = res["HostLogGroup"]
        assert lg["Type"] == "AWS::Logs::LogGroup", lg["Type"]
        assert lg["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, "retention"
        name = Evaluator(t, Environment="production").ev(lg["Properties"]["LogGroupName"])
        assert name == "/blog-agent/production", name
        pols = {p["PolicyName"]: p["PolicyDocument"] for p in props["Policies"]}
        (st,) = pols["ship-journal"]["Statement"]
        assert sorted(as_list(st["Action"])) == ["logs:CreateLogStream", "logs:DescribeLogStreams",
                                                 "logs:PutLogEvents"], st["Action"]
        assert st["Resource"] == {"Fn::GetAtt": ["HostLogGroup", "Arn"]}, st["Resource"]
        return name.replace("production", "<environment>")

    # ---- the operators' role (OperatorPrincipalArn set) ------------------------------------------
    OPERATOR_POLICY = ROOT / "packaging/iam-policy-operator.json"
    op_principal = f"arn:aws:iam::{ACCOUNT}:role/operators"

    def operator_policies(ev):
        return {p["PolicyName"]: p["PolicyDocument"] for p in ev.ev(res["OperatorRole"]["Properties"]["Policies"])}

    @check(f"{rel} operator role's halt policy, staging's and production's merged, == "
           f"{OPERATOR_POLICY.relative_to(ROOT)}")
    def _():
        merged = None
        for env in ENVIRONMENTS:
            ev = Evaluator(t, Environment=env, OperatorPrincipalArn=op_principal)
            assert ev.condition("CreateOperator"), "CreateOperator false with OperatorPrincipalArn set"
            doc = operator_policies(ev)["blog-halt"]
            if merged is None:
                merged = json.loads(json.dumps(doc))
                continue
            for a, b in zip(merged["Statement"], doc["Statement"]):
                assert a["Sid"] == b["Sid"], f"{a['Sid']} vs {b['Sid']}"
                for k in ("Resource",):
                    if as_list(a[k]) != as_list(b[k]):
                        a[k] = as_list(a[k]) + [r for r in as_list(b[k]) if r not in as_list(a[k])]
                if "Condition" in a and a["Condition"] != b["Condition"]:
                    pa = a["Condition"]["StringLike"]["s3:prefix"]
                    pa += [x for x in b["Condition"]["StringLike"]["s3:prefix"] if x not in pa]
        want = json.loads(OPERATOR_POLICY.read_text())
        srt = lambda d: {**d, "Statement": [  # noqa: E731 - order of resources and prefixes is free
            {**normalise_statement(s), "Resource": sorted(as_list(s["Resource"])),
             **({"Condition": {"StringLike": {"s3:prefix": sorted(s["Condition"]["StringLike"]["s3:prefix"])}}}
                if "StringLike" in s.get("Condition", {}) else {})}
            for s in d["Statement"]]}
        same_policy(srt(merged), srt(want), OPERATOR_POLICY.name)

    @check(f"{rel} operator role: trusts OperatorPrincipalArn only; writes only the halt prefix and "
           "the release key; SSM on the group's instances only; none with OperatorPrincipalArn empty")
    def _():
        ev = Evaluator(t, Environment="staging", OperatorPrincipalArn=op_principal)
        role = ev.ev(res["OperatorRole"]["Properties"])
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"AWS": op_principal} and trust["Action"] == "sts:AssumeRole", trust
        reads = {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions"}
        allowed = {f"arn:aws:s3:::{BUCKET}/staging/halted/*", f"arn:aws:s3:::{BUCKET}/staging/stagebuild.txt"}
        group = "blog-staging"
        for name, doc in operator_policies(ev).items():
            for st in doc["Statement"]:
                acts = as_list(st["Action"])
                assert st["Effect"] == "Allow" and not any(a.endswith("*") for a in acts), st
                writes = [a for a in acts if a.startswith("s3:") and a not in reads]
                assert not writes or set(as_list(st["Resource"])) <= allowed, f"{name}/{st['Sid']}: {writes} on {st['Resource']}"
                assert "s3:DeleteObjectVersion" not in acts, st["Sid"]
                if {"ssm:StartSession", "ssm:SendCommand", "ec2:GetConsoleOutput"} & set(acts):
                    instances = [r for r in as_list(st["Resource"]) if ":instance/" in r]
                    if instances:
                        cond = st.get("Condition", {}).get("StringEquals", {})
                        tags = {k: v for k, v in cond.items() if k.endswith("Tag/aws:autoscaling:groupName")}
                        assert list(tags.values()) == [group], f"{name}/{st['Sid']}: instances not limited to {group}: {cond}"
        ev = Evaluator(t, Environment="staging")
        assert not ev.condition("CreateOperator"), "CreateOperator true with OperatorPrincipalArn empty"
        assert res["OperatorRole"].get("Condition") == "CreateOperator", "OperatorRole's Condition"
        assert t["Outputs"]["OperatorRoleArn"].get("Condition") == "CreateOperator", "output's Condition"

    # ---- CI's publisher role (CircleCiOrgId set) ------------------------------------------------
    trust_json = json.loads(PUBLISHER_TRUST.read_text())
    org, project, origin = publisher_placeholders(trust_json)
    ci = {"CircleCiOrgId": org, "CircleCiProjectId": project, "CircleCiVcsOrigin": origin}

    def publisher_policy(ev):
        got = ev.ev(res["PublisherRole"]["Properties"]["Policies"])
        assert len(got) == 1, f"{len(got)} inline policies, expected 1"
        return got[0]["PolicyDocument"]

    for env in ENVIRONMENTS:
        @check(f"{rel} publisher policy (Environment={env}, CircleCiOrgId set) == "
               f"{PUBLISHER_POLICY[env].relative_to(ROOT)}")
        def _():
            got = publisher_policy(Evaluator(t, Environment=env, **ci))
            same_policy(got, json.loads(PUBLISHER_POLICY[env].read_text()), PUBLISHER_POLICY[env].name)

    for env, given in (("staging", ""), ("production", ""),
                       ("staging", f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.circleci.com/org/{org}")):
        what = "CircleCiOidcProviderArn given" if given else "the stack's identity provider"
        @check(f"{rel} publisher trust (Environment={env}, {what}) == {PUBLISHER_TRUST.relative_to(ROOT)}")
        def _():
            ev = Evaluator(t, Environment=env, CircleCiOidcProviderArn=given, **ci)
            assert ev.condition("CreatePublisher"), "CreatePublisher is false with CircleCiOrgId set"
            assert ev.condition("CreateCircleCiProvider") == (not given), "CreateCircleCiProvider"
            got = json.loads(ev.ev(res["PublisherRole"]["Properties"]["AssumeRolePolicyDocument"]))
            same_policy(got, trust_json, PUBLISHER_TRUST.name)
            if not given:
                props = ev.ev(res["CircleCiOidcProvider"]["Properties"])
                assert props == {"Url": f"https://oidc.circleci.com/org/{org}", "ClientIdList": [org]}, props

    @check(f"{rel} CircleCiOrgId empty: no identity provider, no publisher role, no output; "
           "project and repository required")
    def _():
        ev = Evaluator(t, Environment="production")
        assert not ev.condition("CreatePublisher") and not ev.condition("CreateCircleCiProvider")
        assert res["PublisherRole"].get("Condition") == "CreatePublisher", "PublisherRole's Condition"
        assert res["CircleCiOidcProvider"].get("Condition") == "CreateCircleCiProvider", "provider's Condition"
        assert t["Outputs"]["PublisherRoleArn"].get("Condition") == "CreatePublisher", "output's Condition"
        rule = t["Rules"]["CircleCiProjectWithOrganization"]
        assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CircleCiOrgId"}, ""]}]}, rule
        asserts = [a["Assert"] for a in rule["Assertions"]]
        for name in ("CircleCiProjectId", "CircleCiVcsOrigin"):
            assert {"Fn::Not": [{"Fn::Equals": [{"Ref": name}, ""]}]} in asserts, f"{name} not required: {rule}"

    @check(f"{rel} ShaObjectKey=other/key.txt moves the publisher's own release and halt grants; "
           "production's reads of staging stay on staging's default key")
    def _():
        for env, reads in (("staging", []), ("production", ["staging/stagebuild.txt"])):
            doc = publisher_policy(Evaluator(t, Environment=env, ShaObjectKey="other/key.txt", **ci))
            by_sid = {s["Sid"]: s for s in doc["Statement"]}
            got = as_list(by_sid["PublishRelease"]["Resource"])
            assert got == [f"arn:aws:s3:::{BUCKET}/other/key.txt"], f"Environment={env}: PublishRelease on {got}"
            got = as_list(by_sid.get("ReadStagingRelease", {}).get("Resource", []))
            assert got == [f"arn:aws:s3:::{BUCKET}/{k}" for k in reads], f"Environment={env}: ReadStagingRelease on {got}"
            halts = sorted(as_list(by_sid["ReadHaltMarkers"]["Resource"]))
            want = sorted([f"arn:aws:s3:::{BUCKET}/other/halted/*"] +
                          [f"arn:aws:s3:::{BUCKET}/{k.split('/')[0]}/halted/*" for k in reads])
            assert halts == want, f"Environment={env}: ReadHaltMarkers on {halts}"

    @check(f"{rel} ShaObjectKey=other/key.txt moves the release and halt grants with it")
    def _():
        ev = Evaluator(t, Environment="staging", ShaObjectKey="other/key.txt")
        doc = ev.ev(res["InstanceRole"]["Properties"]["Policies"])[0]["PolicyDocument"]
        by_sid = {s["Sid"]: as_list(s["Resource"]) for s in doc["Statement"]}
        assert by_sid["ReadReleaseSha"] == [f"arn:aws:s3:::{BUCKET}/other/key.txt"], by_sid["ReadReleaseSha"]
        assert by_sid["ReadHaltMarkersAndVotes"] == [f"arn:aws:s3:::{BUCKET}/other/halted/*"], \
            by_sid["ReadHaltMarkersAndVotes"]
        assert by_sid["WriteOwnHaltVote"] == [f"arn:aws:s3:::{BUCKET}/other/halted/{'?' * 40}/${{aws:userid}}"], \
            by_sid["WriteOwnHaltVote"]
        assert by_sid["WriteOwnBakeRecord"] == [
            f"arn:aws:s3:::{BUCKET}/other/halted/bake/{'?' * 40}/{o}/${{aws:userid}}" for o in ("baked", "reverted")
        ], by_sid["WriteOwnBakeRecord"]

    @check(f"{rel} notifications: every new object under the halt prefix to the SNS topic (created, or "
           "NotificationTopicArn), which lets S3 of this account publish; the bucket waits for that policy")
    def _():
        existing = f"arn:aws:sns:{REGION}:{ACCOUNT}:ops-alerts"
        for params, topic, prefix in (
            ({}, "<NotificationTopic>", "staging/halted/"),
            ({"ShaObjectKey": "other/key.txt"}, "<NotificationTopic>", "other/halted/"),
            ({"NotificationTopicArn": existing}, existing, "staging/halted/"),
        ):
            ev = Evaluator(t, Environment="staging", **params)
            (conf,) = ev.ev(res["ArtifactsBucket"]["Properties"]["NotificationConfiguration"]["TopicConfigurations"])
            assert conf["Topic"] == topic, f"{params}: topic {conf['Topic']}"
            assert conf["Event"] == "s3:ObjectCreated:*", f"{params}: event {conf['Event']}"
            assert conf["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": prefix}], f"{params}: {conf['Filter']}"
            created = ev.condition("CreateNotificationTopic")
            assert created == (topic == "<NotificationTopic>"), f"{params}: CreateNotificationTopic {created}"
            for name in ("NotificationTopic", "NotificationTopicPolicy"):
                assert res[name].get("Condition") == "CreateNotificationTopic", f"{name} is not conditional"
            assert ev.ev(t["Outputs"]["NotificationTopicArn"]["Value"]) == topic, "output NotificationTopicArn"
        waits = res["ArtifactsBucket"]["Metadata"]["WaitsForTopicPolicy"]
        assert waits == {"Fn::If": ["CreateNotificationTopic", {"Ref": "NotificationTopicPolicy"},
                                    {"Ref": "AWS::NoValue"}]}, f"the bucket does not wait for the topic policy: {waits}"
        pol = Evaluator(t, Environment="staging").ev(res["NotificationTopicPolicy"]["Properties"])
        assert pol["Topics"] == ["<NotificationTopic>"], pol["Topics"]
        (st,) = pol["PolicyDocument"]["Statement"]
        assert (st["Effect"], st["Principal"], st["Action"], st["Resource"]) == (
            "Allow", {"Service": "s3.amazonaws.com"}, "sns:Publish", "<NotificationTopic>"), st
        assert st["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}, st["Condition"]

    hook = None

    @check(f"{rel} launch lifecycle hook == [rollout] lifecycle_hook of {EXAMPLE.relative_to(ROOT)}")
    def _():
        nonlocal hook
        hook = lifecycle_hook_name(t)
        spec = next(h for h in res["AutoScalingGroup"]["Properties"]["LifecycleHookSpecificationList"])
        want = ex["rollout"]["lifecycle_hook"]
        assert hook == want, f"hook {hook!r}, example {want!r}"
        assert t["Outputs"]["LifecycleHookName"]["Value"] == hook, "output LifecycleHookName differs"
        assert spec.get("DefaultResult") == "ABANDON", "DefaultResult must be ABANDON (docs/fleet.md)"
        assert re.fullmatch(r"[A-Za-z0-9_/-]{1,255}", hook), "the agent accepts 1-255 of [A-Za-z0-9_/-]"

    @check(f"{rel} a new launch template version (a new agent package) rolls out as an instance refresh, new hosts first")
    def _():
        # docs/operations.md, "Upgrading the agent": hosts are replaced, never updated in place;
        # each new one is let into service by its launch gate before an old one goes.
        policy = res["AutoScalingGroup"].get("UpdatePolicy", {})
        refresh = policy.get("AutoScalingInstanceRefresh")
        assert refresh, f"no AutoScalingInstanceRefresh update policy on AutoScalingGroup: {policy}"
        assert refresh.get("Strategy") == "Rolling", refresh
        prefs = refresh.get("Preferences", {})
        assert prefs.get("MinHealthyPercentage") == 100 and prefs.get("MaxHealthyPercentage", 100) > 100, \
            f"launch before terminate needs MinHealthyPercentage 100 and MaxHealthyPercentage above it: {prefs}"
        version = res["AutoScalingGroup"]["Properties"]["LaunchTemplate"]["Version"]
        assert version == {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]}, \
            f"the group must follow the template's latest version (a parameter change must reach it): {version}"
        user_data = json.dumps(res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"])
        for param in ("AgentPackageKey", "AgentPackageSha256"):
            assert "${" + param + "}" in user_data, f"the user-data does not use {param}: changing it would not roll"

    @check(f"{rel} group tag == [environment] tag, propagated at launch; Environment values == allowed")
    def _():
        key = ex["environment"]["tag"]
        tags = [x for x in res["AutoScalingGroup"]["Properties"]["Tags"] if x["Key"] == key]
        assert len(tags) == 1, f"no group tag {key!r}"
        assert tags[0]["Value"] == {"Ref": "Environment"}, f"tag {key} is {tags[0]['Value']}"
        assert tags[0]["PropagateAtLaunch"] is True, "PropagateAtLaunch must be true"
        allowed = t["Parameters"]["Environment"]["AllowedValues"]
        assert sorted(allowed) == sorted(ex["environment"]["allowed"]), f"{allowed} vs {ex['environment']['allowed']}"

    @check(f"{rel} target group and instance security group follow [health] url and [container] ports")
    def _():
        url = urlsplit(ex["health"]["url"])
        port = url.port or 80
        host_ports = {int(p.split(":")[-2]) for p in ex["container"]["ports"]}
        assert port in host_ports, f"[health] url port {port} not a host port of {ex['container']['ports']}"
        tg = res["TargetGroup"]["Properties"]
        assert tg["Port"] == port, f"TargetGroup Port {tg['Port']} != {port}"
        assert tg.get("Protocol") == tg.get("HealthCheckProtocol", "HTTP") == url.scheme.upper(), "protocol"
        assert str(tg.get("HealthCheckPort", "traffic-port")) in ("traffic-port", str(port)), "HealthCheckPort"
        assert tg["HealthCheckPath"] == (url.path or "/"), f"HealthCheckPath {tg['HealthCheckPath']} != {url.path}"
        assert tg["Matcher"]["HttpCode"] == "200-299", "the agent accepts any 2xx: Matcher 200-299"
        ingress = res["InstanceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
        assert [(r["FromPort"], r["ToPort"]) for r in ingress] == [(port, port)], f"instance ingress {ingress}"
        assert all(r.get("SourceSecurityGroupId") == {"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]}
                   for r in ingress), "instance ingress must come from the load balancer's group only"
        assert "CidrIp" not in str(ingress), "instance ingress must not be open to an address range"

    @check(f"{rel} launch template MetadataOptions == {LAUNCH_TEMPLATE_JSON.relative_to(ROOT)}")
    def _():
        got = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["MetadataOptions"]
        want = json.loads(LAUNCH_TEMPLATE_JSON.read_text())["MetadataOptions"]
        assert got == want, f"{got} != {want}"

    @check(f"{rel} bucket: SSE-KMS with the stack's key and bucket key, versioned, private, TLS only")
    def _():
        b = res["ArtifactsBucket"]["Properties"]
        rule = b["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": ["ArtifactsKey", "Arn"]}}, rule
        assert rule["BucketKeyEnabled"] is True, "BucketKeyEnabled"
        assert b["VersioningConfiguration"] == {"Status": "Enabled"}, "versioning"
        assert set(b["PublicAccessBlockConfiguration"].values()) == {True} and \
            len(b["PublicAccessBlockConfiguration"]) == 4, "public access block"
        st = res["ArtifactsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for s in st), "no Deny on aws:SecureTransport false"
        key = res["ArtifactsKey"]["Properties"]["KeyPolicy"]["Statement"]
        root = {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
        assert any(s["Principal"] == root and s["Action"] == "kms:*" for s in key), "key policy does not delegate to IAM"

    @check(f"{rel} ECR: immutable tags, scan on push, keeps the newest ReleaseImagesToKeep tagged images")
    def _():
        r = res["Repository"]["Properties"]
        assert r["ImageTagMutability"] == "IMMUTABLE" and r["ImageScanningConfiguration"]["ScanOnPush"] is True
        policy = json.loads(Evaluator(t, ReleaseImagesToKeep=7).ev(r["LifecyclePolicy"]["LifecyclePolicyText"]))
        rules = policy["rules"]
        assert len(rules) == 1, rules
        sel = rules[0]["selection"]
        assert sel == {"tagStatus": "tagged", "tagPatternList": ["*"], "countType": "imageCountMoreThan",
                       "countNumber": 7}, sel
        assert rules[0]["action"] == {"type": "expire"}

    for env in ENVIRONMENTS:
        rendered = {}

        @check(f"{rel} user-data (Environment={env}): config.toml keys match {EXAMPLE.relative_to(ROOT)}, "
               "values from the stack")
        def _():
            ev = Evaluator(t, Environment=env)
            lt = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
            rendered["text"] = ev.ev(lt["UserData"])
            doc = yaml.safe_load(rendered["text"])
            files = [w for w in doc["write_files"] if w["path"] == "/etc/blog-agent/config.toml"]
            assert len(files) == 1, "write_files has no /etc/blog-agent/config.toml"
            config = tomllib.loads(files[0]["content"])

            def walk(have, want, where):
                for k, v in have.items():
                    name = f"{where}.{k}" if where else k
                    if k not in want:
                        if where == "release.keys":
                            continue
                        raise AssertionError(f"unknown key {name}")
                    if isinstance(v, dict) and want[k] != {}:
                        walk(v, want[k], name)
                    elif type(v) is not type(want[k]):
                        raise AssertionError(f"{name}: {type(v).__name__}, example has {type(want[k]).__name__}")
            walk(config, ex, "")
            key = t["Mappings"]["Environments"][env]["ShaObjectKey"]
            expect = {
                ("environment", "allowed"): [env],
                ("release", "bucket"): BUCKET,
                ("release", "keys"): {env: key},
                ("image", "repository"): f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/blog",
                ("rollout", "lifecycle_hook"): hook,
                ("environment", "tag"): ex["environment"]["tag"],
                ("health", "url"): ex["health"]["url"],
                ("container", "ports"): ex["container"]["ports"],
            }
            for (a, b), v in expect.items():
                assert config.get(a, {}).get(b) == v, f"[{a}] {b} = {config.get(a, {}).get(b)!r}, expected {v!r}"
            assert "public_key" not in config["release"], "public_key with ReleasePublicKey empty"
            pk = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"
            signed = Evaluator(t, Environment=env, ReleasePublicKey=pk).ev(lt["UserData"])
            signed = [w for w in yaml.safe_load(signed)["write_files"] if w["path"] == "/etc/blog-agent/config.toml"]
            got = tomllib.loads(signed[0]["content"])["release"].get("public_key")
            assert got == pk, f"[release] public_key = {got!r} with ReleasePublicKey set"
            runcmd = "\n".join(x if isinstance(x, str) else " ".join(x) for x in doc["runcmd"])
            assert f"PKG=s3://{BUCKET}/packages/blog-agent-" in runcmd, "PKG= is not in the stack's bucket"
            # The journal's way out: the CloudWatch agent's config names the stack's log group,
            # and it starts before the package is downloaded (its failure is shipped too).
            cw = [w for w in doc["write_files"] if w["path"].startswith("/opt/aws/amazon-cloudwatch-agent/")]
            assert len(cw) == 1, "no CloudWatch agent config in write_files"
            files = json.loads(cw[0]["content"])["logs"]["logs_collected"]["files"]["collect_list"]
            groups = {f["log_group_name"] for f in files}
            assert groups == {f"/blog-agent/{env}"}, f"CloudWatch agent ships to {groups}"
            assert {f["file_path"] for f in files} == {"/var/log/blog-agent.log", "/var/log/cloud-init-output.log"}
            assert cw[0]["path"] in runcmd and runcmd.index(cw[0]["path"]) < runcmd.index("PKG="), \
                "the CloudWatch agent must start before the package install"
            assert {"rsyslog", "amazon-cloudwatch-agent"} <= set(doc["packages"]), doc["packages"]

        if env == "staging":
            @check(f"{rel} user-data (Environment={env}): cloud-init schema; size with 1 KiB to spare "
               "for longer names")
            def _():
                assert "text" in rendered, "not rendered (see above)"
                with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                    f.write(rendered["text"])
                    f.flush()
                    out = subprocess.run(["cloud-init", "schema", "-c", f.name], capture_output=True, text=True)
                assert out.returncode == 0, out.stdout + out.stderr
                size = len(rendered["text"].encode())
                assert size < MAX_USER_DATA - 1024, f"{size} bytes: too close to EC2's {MAX_USER_DATA}"
                return f"{len(rendered['text'].encode())} bytes"

    @check(f"{rel} AgentPackageSha256 is required: no default, exactly 64 hex digits")
    def _():
        p = t["Parameters"]["AgentPackageSha256"]
        assert "Default" not in p, f"Default {p['Default']!r}: a stack without it would trust whoever writes packages/"
        pattern = re.compile(p.get("AllowedPattern", ""))
        good = "0123456789abcdef" * 4
        for value, want in (("", False), (good, True), (good[:-1], False), (good + "0", False),
                            (good.upper(), False), ("g" * 64, False), (f"{good}\n", False)):
            # CloudFormation matches AllowedPattern against the whole value.
            got = pattern.fullmatch(value) is not None
            assert got == want, f"AllowedPattern {pattern.pattern!r} {'accepts' if got else 'refuses'} {value!r}"

    @check(f"{rel} user-data installs the package only when it matches AgentPackageSha256")
    def _():
        return install_refusals(lambda sha: Evaluator(t, Environment="staging", AgentPackageSha256=sha).ev(
            res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]))

    return failures


def install_refusals(user_data_for):
    """Runs the install step of the user-data (the runcmd entry that checks PKG_SHA256) under sh, with stand-ins
    for `aws` (copies a fake package), `dnf`/`apt-get` (record the install), `cloud-init`, `snap`
    and `sleep`: with the package's own SHA-256 it installs; with none, a malformed one or
    another package's, it must not. `user_data_for(sha)` renders the user-data for a checksum."""
    import hashlib
    import os
    package = b"not really an rpm\n"
    right = hashlib.sha256(package).hexdigest()
    cases = (("the package's own SHA-256", right, True), ("no SHA-256", "", False),
             ("a malformed SHA-256", "abc", False), ("another package's SHA-256", hashlib.sha256(b"x").hexdigest(), False))
    seen = []
    for what, sha, installs in cases:
        doc = yaml.safe_load(user_data_for(sha))
        # The install step is the runcmd entry that checks the package (log shipping may come
        # first, so that an install failure reaches CloudWatch Logs too).
        script = next(c for c in doc["runcmd"] if isinstance(c, str) and "PKG_SHA256" in c)
        with tempfile.TemporaryDirectory() as work:
            bin_dir, log = Path(work, "bin"), Path(work, "installed")
            bin_dir.mkdir()
            Path(work, "package").write_bytes(package)
            stubs = {
                "aws": f'for last; do :; done; cp "{work}/package" "$last"',
                "dnf": f'echo "$@" >> "{log}"',
                "apt-get": f'echo "$@" >> "{log}"',
                "cloud-init": "echo us-east-1",
                "snap": "exit 0",
                "sleep": "exit 0",
            }
            for name, body in stubs.items():
                stub = bin_dir / name
                stub.write_text(f"#!/bin/sh\n{body}\n")
                stub.chmod(0o755)
            # The Ubuntu user-data calls the snap's aws by its path.
            script = script.replace("/snap/bin/aws", "aws")
            env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "TMPDIR": work}
            out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
            installed = log.exists()
        if installed != installs:
            raise AssertionError(f"with {what} ({sha!r}) the package was {'' if installed else 'not '}installed "
                                 f"(exit {out.returncode}):\n{out.stdout}{out.stderr}")
        if not installs and out.returncode == 0:
            raise AssertionError(f"with {what} the script refused but exited 0: cloud-init would go on")
        seen.append(f"{what}: {'installed' if installed else 'refused'}")
    return "; ".join(seen)


if __name__ == "__main__":
    sys.exit(min(main(), 100))
