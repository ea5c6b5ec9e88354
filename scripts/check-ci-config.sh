#!/usr/bin/env bash
# Checks the CI half of the release pipeline, offline: the reference CircleCI config
# (packaging/circleci/config.yml) and GitHub Actions workflow (packaging/github-actions/blog.yml)
# against their schemas (check-jsonschema's bundled copies) and against what the pipeline must
# do, and the publisher roles' IAM files: one policy per environment
# (packaging/iam-policy-publisher-{staging,production}.json), CircleCI's trust
# (packaging/iam-trust-circleci.json) and GitHub's, one per environment
# (packaging/iam-trust-github-{staging,production}.json).
# Prints one line per check, `ok ...` or `FAIL ...` (details indented below), and exits 1 if
# any check failed. check-jsonschema comes from PyPI into .stack/venv (installed the way
# scripts/install-deps.sh does when missing).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

venv=${BLOG_AGENT_VENV:-$(pwd)/.stack/venv}
circleci=packaging/circleci/config.yml
workflow=packaging/github-actions/blog.yml
policies=(packaging/iam-policy-publisher-staging.json packaging/iam-policy-publisher-production.json)
trusts=(packaging/iam-trust-circleci.json packaging/iam-trust-github-staging.json
  packaging/iam-trust-github-production.json)

# shellcheck source=scripts/lib/checks.sh
source scripts/lib/checks.sh

# ---- tools ---------------------------------------------------------------------------------
if [ ! -x "$venv/bin/check-jsonschema" ]; then
  echo "check-ci-config: check-jsonschema into $venv" >&2
  { { [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"; } &&
    "$venv/bin/pip" install -q 'check-jsonschema>=0.29,<1'; } >&2 ||
    { echo "FAIL cannot install check-jsonschema into $venv"; exit 1; }
fi
if ! "$venv/bin/python" -c 'import yaml, tomllib' >/dev/null 2>&1; then
  "$venv/bin/pip" install -q pyyaml >&2 || { echo "FAIL cannot install PyYAML into $venv"; exit 1; }
fi

# ---- schemas (the copies bundled with check-jsonschema: no network) ------------------------
version=$("$venv/bin/check-jsonschema" --version 2>&1 | sed 's/.*version //')
for pair in "vendor.circle-ci $circleci" "vendor.github-workflows $workflow"; do
  read -r schema file <<<"$pair"
  if out=$("$venv/bin/check-jsonschema" --builtin-schema "$schema" "$file" 2>&1); then
    ok "check-jsonschema --builtin-schema $schema $file (check-jsonschema $version)"
  else
    fail "check-jsonschema --builtin-schema $schema $file" "$out"
  fi
done

# ---- JSON ----------------------------------------------------------------------------------
for f in "${policies[@]}" "${trusts[@]}"; do
  if out=$("$venv/bin/python" -m json.tool "$f" 2>&1 >/dev/null); then ok "json $f"; else fail "json $f" "$out"; fi
done

# ---- what the policies, the trusts and the pipelines say ------------------------------------
# One `ok`/`FAIL` line per check; exit status: the number of failed checks.
"$venv/bin/python" - "$circleci" "$workflow" "${policies[@]}" "${trusts[@]}" <<'EOF'
import json, os, re, subprocess, sys, tempfile, tomllib
import yaml

(circleci_path, workflow_path, staging_policy, production_policy,
 circle_trust, gh_staging_trust, gh_production_trust) = sys.argv[1:8]
POLICY = {"staging": staging_policy, "production": production_policy}
BUCKET = "blog-artifacts"
RELEASE_KEY = {"staging": "staging/stagebuild.txt", "production": "production/prodbuild.txt"}
HALTS = {"staging": "staging/halted/*", "production": "production/halted/*"}
# What each role may read: its own environment; production's promote also reads staging's
# release object, its versions and its halts.
READ_ENVS = {"staging": ["staging"], "production": ["production", "staging"]}
READS = {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions"}
ECR_PUSH = {"ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
            "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:DescribeImages"}
# ECR per role: staging builds and pushes the image; production only checks its digest.
ECR = {"staging": ECR_PUSH, "production": {"ecr:DescribeImages"}}
failures = 0


def check(what):
    def run(fn):
        global failures
        try:
            extra = fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the rest
            failures += 1
            print(f"FAIL {what}")
            detail = str(e) if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}"
            for line in detail.rstrip().splitlines():
                print(f"     {line}")
        else:
            print(f"ok   {what}" + (f" ({extra})" if extra else ""))
    return run


def as_list(x):
    return x if isinstance(x, list) else [x]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def statements(path):
    return [dict(s, Action=as_list(s["Action"]), Resource=as_list(s.get("Resource", [])))
            for s in load_json(path)["Statement"]]


def s3_arn(key):
    return f"arn:aws:s3:::{BUCKET}/{key}"


# ---- the publisher policies: one role per environment ---------------------------------------
for env, policy_path in POLICY.items():
    other = "production" if env == "staging" else "staging"
    keys = [RELEASE_KEY[e] for e in READ_ENVS[env]]
    halts = [HALTS[e] for e in READ_ENVS[env]]

    @check(f"{policy_path} grants no s3:DeleteObject (nor s3:Delete*, s3:*, *), denies nothing")
    def _():
        for s in statements(policy_path):
            assert s["Effect"] == "Allow", f"{s.get('Sid')}: Effect {s['Effect']}"
            bad = [a for a in s["Action"] if a.lower().startswith("s3:delete") or "*" in a]
            assert not bad, f"{s.get('Sid')}: {bad}"

    @check(f"{policy_path} writes only {RELEASE_KEY[env]} (no halt marker, nothing of {other})")
    def _():
        writes = set()
        for s in statements(policy_path):
            w = [a for a in s["Action"] if a.startswith("s3:") and a not in READS]
            if w:
                assert s["Resource"] == [s3_arn(RELEASE_KEY[env])], f"{s.get('Sid')}: {w} on {s['Resource']}"
                writes |= set(w)
        assert writes == {"s3:PutObject"}, f"writes {sorted(writes)}: publish needs s3:PutObject on {RELEASE_KEY[env]}"

    @check(f"{policy_path} reads {', '.join(keys)} (and versions) and {', '.join(halts)}, nothing else in S3"
           + (f"; nothing of {other}" if env == "staging" else ""))
    def _():
        grants = {(a, r) for s in statements(policy_path) for a in s["Action"] for r in s["Resource"]
                  if a in ("s3:GetObject", "s3:GetObjectVersion")}
        want = {("s3:GetObject", s3_arn(k)) for k in keys + halts} | \
               {("s3:GetObjectVersion", s3_arn(k)) for k in keys} | \
               {("s3:GetObject", s3_arn("packages/blog-agent_*"))}
        assert grants == want, f"missing {sorted(want - grants)}, extra {sorted(grants - want)}"
        if env == "staging":
            text = open(policy_path).read()
            assert f"{other}/" not in text, f"names {other}/"

    @check(f"{policy_path} lists only {', '.join(keys)} (and versions) and {', '.join(halts)}")
    def _():
        lists = {}
        for s in statements(policy_path):
            acts = [a for a in s["Action"] if a in ("s3:ListBucket", "s3:ListBucketVersions")]
            if not acts:
                continue
            assert s["Resource"] == [f"arn:aws:s3:::{BUCKET}"], f"{s.get('Sid')}: {s['Resource']}"
            prefixes = as_list(s.get("Condition", {}).get("StringLike", {}).get("s3:prefix", []))
            assert prefixes, f"{s.get('Sid')}: no s3:prefix condition: lists the whole bucket"
            others = set(s.get("Condition", {})) - {"StringLike"}
            assert not others, f"{s.get('Sid')}: unexpected conditions {others}"
            for a in acts:
                lists.setdefault(a, set()).update(prefixes)
        assert lists.get("s3:ListBucketVersions") == set(keys), \
            f"ListBucketVersions on {lists.get('s3:ListBucketVersions')}, expected the release keys {keys} (history)"
        assert lists.get("s3:ListBucket") == set(keys + halts), \
            f"ListBucket on {lists.get('s3:ListBucket')}, expected {keys + halts}"

    @check(f"{policy_path} uses the KMS key only through S3 (kms:ViaService), GenerateDataKey and Decrypt")
    def _():
        got = set()
        for s in statements(policy_path):
            kms = [a for a in s["Action"] if a.startswith("kms:")]
            if kms:
                via = s.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                assert via == "s3.us-east-1.amazonaws.com", f"{s.get('Sid')}: kms:ViaService {via!r}"
                assert all(r.startswith("arn:aws:kms:") and ":key/" in r for r in s["Resource"]), s["Resource"]
                got |= set(kms)
        assert got == {"kms:GenerateDataKey", "kms:Decrypt"}, f"kms actions {sorted(got)}"

    @check(f"{policy_path} ECR: {'push and describe' if env == 'staging' else 'DescribeImages only, no push'}"
           " on the repository; nothing else on *")
    def _():
        got = set()
        for s in statements(policy_path):
            if "*" in s["Resource"]:
                assert env == "staging" and s["Action"] == ["ecr:GetAuthorizationToken"], f"{s.get('Sid')}: {s['Action']} on *"
            ecr = set(a for a in s["Action"] if a.startswith("ecr:")) - {"ecr:GetAuthorizationToken"}
            if ecr:
                assert s["Resource"] == ["arn:aws:ecr:us-east-1:123456789012:repository/blog"], s["Resource"]
                got |= ecr
        assert got == ECR[env], f"missing {sorted(ECR[env] - got)}, extra {sorted(got - ECR[env])}"

    @check(f"{policy_path} uses the placeholders of packaging/iam-policy.json (bucket, key, repository)")
    def _():
        def arns(path, prefix):
            return {r for s in statements(path) for r in s["Resource"] if r.startswith(prefix)}
        for prefix in ("arn:aws:kms:", "arn:aws:ecr:"):
            mine, hosts = arns(policy_path, prefix), arns("packaging/iam-policy.json", prefix)
            assert mine == hosts, f"{sorted(mine)} != {sorted(hosts)}"
        buckets = {r.split(":::")[1].split("/")[0] for s in statements(policy_path)
                   for r in s["Resource"] if r.startswith("arn:aws:s3:::")}
        assert buckets == {BUCKET}, f"buckets {buckets}"


# ---- the trust policies ---------------------------------------------------------------------
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ANY_UUID = "????????-????-????-????-????????????"


@check(f"{circle_trust} trusts one CircleCI organization's jobs of one project, main branch only, "
       f"with no * in sub")
def _():
    (s,) = load_json(circle_trust)["Statement"]
    fed = s["Principal"]["Federated"]
    m = re.fullmatch(rf"arn:aws:iam::123456789012:oidc-provider/oidc\.circleci\.com/org/({UUID})", fed)
    assert m, f"Federated {fed}"
    org = m[1]
    p = f"oidc.circleci.com/org/{org}"
    assert s["Effect"] == "Allow" and s["Action"] == "sts:AssumeRoleWithWebIdentity", s["Action"]
    cond = s["Condition"]
    assert set(cond) == {"StringEquals", "StringLike"}, f"operators {sorted(cond)}: no IfExists, no ForAllValues"
    eq = cond["StringEquals"]
    assert eq.get(f"{p}:aud") == org, "aud must equal the organization id (StringEquals)"
    project = eq.get(f"{p}:oidc.circleci.com/project-id", "")
    assert re.fullmatch(UUID, project), f"project-id {project!r}: one project (StringEquals)"
    assert set(eq) == {f"{p}:aud", f"{p}:oidc.circleci.com/project-id"}, \
        f"StringEquals keys {sorted(eq)}: a key IAM does not evaluate (context-ids) fails every job"
    (key, sub), = cond["StringLike"].items()
    assert key == f"{p}:sub", key
    # The user is 36 single-character wildcards and the origin is named: with a * there, a
    # branch named x/vcs-ref/refs/heads/main would match.
    m = re.fullmatch(rf"org/{org}/project/{project}/user/{re.escape(ANY_UUID)}/vcs-origin/([\w.-]+/[\w.-]+/[\w.-]+)"
                     r"/vcs-ref/refs/heads/main", sub)
    assert m and "*" not in sub, f"sub {sub!r}: org/<org>/project/<project>/user/<36 ?>/vcs-origin/<repo>/vcs-ref/refs/heads/main"
    return f"org {org}, project {project}, {m[1]} main"


def github_trust(path, subs):
    (s,) = load_json(path)["Statement"]
    g = "token.actions.githubusercontent.com"
    assert s["Principal"]["Federated"] == f"arn:aws:iam::123456789012:oidc-provider/{g}", s["Principal"]
    assert s["Effect"] == "Allow" and s["Action"] == "sts:AssumeRoleWithWebIdentity", s["Action"]
    assert set(s["Condition"]) == {"StringEquals"}, f"operators {sorted(s['Condition'])}: StringEquals only, no wildcard"
    eq = s["Condition"]["StringEquals"]
    assert eq.get(f"{g}:aud") == "sts.amazonaws.com", f"aud {eq.get(f'{g}:aud')!r}"
    assert eq.get(f"{g}:ref") == "refs/heads/main", f"ref {eq.get(f'{g}:ref')!r}: main only"
    assert sorted(as_list(eq.get(f"{g}:sub"))) == sorted(subs), f"sub {eq.get(f'{g}:sub')!r}, expected {subs}"
    assert set(eq) == {f"{g}:aud", f"{g}:ref", f"{g}:sub"}, sorted(eq)


@check(f"{gh_staging_trust} trusts main's build job and the staging environment of one repository")
def _():
    github_trust(gh_staging_trust, ["repo:OWNER/blog:ref:refs/heads/main", "repo:OWNER/blog:environment:staging"])


@check(f"{gh_production_trust} trusts the production environment of one repository only, on main")
def _():
    github_trust(gh_production_trust, ["repo:OWNER/blog:environment:production"])

# ---- the pipelines --------------------------------------------------------------------------
cc = yaml.safe_load(open(circleci_path))
gh = yaml.safe_load(open(workflow_path))
# PyYAML reads GitHub's `on:` key as the boolean True.
gh_on = gh.get("on", gh.get(True))
SHA40 = "0123456789abcdef0123456789abcdef01234567"
OLD_KEYS = re.compile(r"aws[_-]?access[_-]?key[_-]?id|aws[_-]?secret[_-]?access[_-]?key|aws[_-]?session[_-]?token",
                      re.I)


@check(f"{circleci_path}, {workflow_path}: AWS by OIDC only (no AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
def _():
    for path in (circleci_path, workflow_path):
        text = open(path).read()
        found = sorted(set(m.group(0) for m in OLD_KEYS.finditer(text)))
        assert not found, f"{path}: {found}"
    # CircleCI: every job that calls AWS assumes the role through aws-cli/setup with role_arn.
    setup = cc["commands"]["aws-login"]["steps"][0]["aws-cli/setup"]
    assert setup.get("role_arn") and setup.get("role_session_name"), f"aws-cli/setup {setup}"
    assert set(setup) <= {"role_arn", "role_session_name", "region", "session_duration", "profile_name"}, setup
    for name, job in cc["jobs"].items():
        steps = [next(iter(s)) if isinstance(s, dict) else s for s in job["steps"]]
        text = json.dumps(job)
        if re.search(r"\baws |blog-agent (publish|promote)", text):
            assert "aws-login" in steps, f"CircleCI job {name} calls AWS without aws-login"
    # GitHub: id-token: write, and configure-aws-credentials with role-to-assume before AWS calls.
    assert gh["permissions"].get("id-token") == "write", "permissions: id-token: write"
    for name, job in gh["jobs"].items():
        seen = False
        for st in job["steps"]:
            if "configure-aws-credentials" in st.get("uses", ""):
                assert st.get("with", {}).get("role-to-assume"), f"{name}: no role-to-assume"
                seen = True
            if re.search(r"\baws |blog-agent (publish|promote)", st.get("run", "")):
                assert seen, f"GitHub job {name} calls AWS before configure-aws-credentials"


@check(f"{circleci_path}: orbs and image pinned; {workflow_path}: actions pinned to a commit")
def _():
    for name, ref in cc.get("orbs", {}).items():
        assert re.fullmatch(r"[a-z0-9-]+/[a-z0-9-]+@\d+\.\d+\.\d+", ref), f"orb {name}: {ref} (pin x.y.z)"
    for ex in cc.get("executors", {}).values():
        for img in ex.get("docker", []):
            assert re.search(r":\d{4}\.\d{2}$", img["image"]), f"image {img['image']} (pin a dated tag)"
    uses = [st["uses"] for job in gh["jobs"].values() for st in job["steps"] if "uses" in st]
    bad = [u for u in uses if not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u)]
    assert not bad, f"not pinned to a commit: {bad}"
    return ", ".join(cc.get("orbs", {}).values())


@check(f"{circleci_path}: build-and-push -> publish-staging -> approval -> promote-production; steps defined")
def _():
    builtin = {"checkout", "run", "setup_remote_docker", "save_cache", "restore_cache", "store_artifacts",
               "store_test_results", "persist_to_workspace", "attach_workspace", "add_ssh_keys", "when", "unless"}
    orbs = set(cc.get("orbs", {}))
    commands = set(cc.get("commands", {}))

    def step_names(steps):
        for s in steps:
            yield next(iter(s)) if isinstance(s, dict) else s

    for where, steps in [(f"jobs.{n}", j["steps"]) for n, j in cc["jobs"].items()] + \
                        [(f"commands.{n}", c["steps"]) for n, c in cc["commands"].items()]:
        for name in step_names(steps):
            ok = name in builtin or name in commands or (name.split("/")[0] in orbs and "/" in name)
            assert ok, f"{where}: step {name!r} is not a built-in step, a command or an orb's"
    (wf,) = cc["workflows"].values()
    jobs = {}
    for j in wf["jobs"]:
        name, spec = (j, {}) if isinstance(j, str) else next(iter(j.items()))
        jobs[name] = spec or {}
    for name, spec in jobs.items():
        if spec.get("type") == "approval":
            continue
        assert name in cc["jobs"], f"workflow job {name} is not defined under jobs"
        assert spec.get("context"), f"workflow job {name} has no context (its env vars and the OIDC token)"
    for name, spec in jobs.items():
        for r in spec.get("requires", []):
            assert r in jobs, f"{name} requires {r}, not in the workflow"
    approvals = [n for n, s in jobs.items() if s.get("type") == "approval"]
    assert len(approvals) == 1, f"approval jobs: {approvals}"
    chain = {"publish-staging": ["build-and-push"], approvals[0]: ["publish-staging"],
             "promote-production": [approvals[0]]}
    for name, want in chain.items():
        assert jobs.get(name, {}).get("requires") == want, f"{name} requires {jobs.get(name, {}).get('requires')}, expected {want}"
    rev = "<< pipeline.git.revision >>"
    text = {n: json.dumps(cc["jobs"][n]) for n in cc["jobs"]}
    assert f'{rev}' in text["build-and-push"] and "docker build" in text["build-and-push"] and \
        "docker push" in text["build-and-push"], "build-and-push does not build and push <repo>:<sha>"
    assert re.search(rf"blog-agent publish [^\n]*--env staging {re.escape(rev)}", text["publish-staging"]), \
        "publish-staging does not run `blog-agent publish --env staging <sha>`"
    assert re.search(rf"blog-agent promote [^\n]*{re.escape(rev)} [\\\\n ]*--from staging --to production --soak 30m",
                     text["promote-production"]), \
        "promote-production does not run `blog-agent promote <sha> --from staging --to production --soak 30m`"


@check(f"{workflow_path}: build-and-push -> publish-staging -> promote-production (environment production)")
def _():
    assert gh_on == {"push": {"branches": ["main"]}}, f"on: {gh_on}"
    j = gh["jobs"]
    assert j["publish-staging"]["needs"] == "build-and-push" and j["promote-production"]["needs"] == "publish-staging"
    assert j["promote-production"].get("environment") == "production", "the approval is the production environment"
    runs = {n: "\n".join(st.get("run", "") for st in job["steps"]) for n, job in j.items()}
    assert "docker build" in runs["build-and-push"] and "docker push" in runs["build-and-push"]
    assert re.search(r'blog-agent publish [^\n]*--env staging "\$SHA"', runs["publish-staging"]), "publish"
    assert re.search(r'blog-agent promote [^\n]*"\$SHA"[\\\n ]*--from staging --to production --soak 30m',
                     runs["promote-production"]), "promote"
    assert gh["env"]["SHA"] == "${{ github.sha }}"


ROLE_VAR = {"staging": "BLOG_STAGING_PUBLISHER_ROLE_ARN", "production": "BLOG_PRODUCTION_PUBLISHER_ROLE_ARN"}
JOB_ENV = {"build-and-push": "staging", "publish-staging": "staging", "promote-production": "production"}


@check(f"{circleci_path}: build-and-push and publish-staging take the staging role and context, "
       "promote-production the production role and a context of its own")
def _():
    param = cc["commands"]["aws-login"].get("parameters", {}).get("role_arn", {})
    assert param and "default" not in param, "aws-login: parameter role_arn, without a default"
    assert set(cc["jobs"]) == set(JOB_ENV), f"jobs {sorted(cc['jobs'])}: which role does each take?"
    for job, env in JOB_ENV.items():
        roles = [s["aws-login"].get("role_arn") if isinstance(s, dict) else None
                 for s in cc["jobs"][job]["steps"] if s == "aws-login" or (isinstance(s, dict) and "aws-login" in s)]
        assert roles == ["${%s}" % ROLE_VAR[env]], f"{job}: aws-login role_arn {roles}, expected ${{{ROLE_VAR[env]}}}"
    (wf,) = cc["workflows"].values()
    contexts = {}
    for j in wf["jobs"]:
        name, spec = (j, {}) if isinstance(j, str) else next(iter(j.items()))
        contexts[name] = spec.get("context")
    staging = {contexts[j] for j, e in JOB_ENV.items() if e == "staging"}
    assert len(staging) == 1 and contexts["promote-production"] not in staging, \
        f"contexts {contexts}: production's must be its own (restricted to a security group)"
    return f"contexts {staging.pop()}, {contexts['promote-production']}"


@check(f"{workflow_path}: build-and-push and publish-staging (environment staging) take the staging role, "
       "promote-production (environment production) the production role")
def _():
    for job, env in JOB_ENV.items():
        spec = gh["jobs"][job]
        roles = [st.get("with", {}).get("role-to-assume") for st in spec["steps"]
                 if "configure-aws-credentials" in st.get("uses", "")]
        assert roles == ["${{ vars.%s }}" % ROLE_VAR[env]], f"{job}: role-to-assume {roles}"
        if job != "build-and-push":
            assert spec.get("environment") == env, f"{job}: environment {spec.get('environment')!r}, expected {env}"
    assert "environment" not in gh["jobs"]["build-and-push"], "build-and-push: trusted by sub ref:refs/heads/main"


def run_scripts():
    """Every shell script of both files, with CI's expressions replaced by plain values."""
    def cc_steps(steps, where):
        for s in steps:
            if isinstance(s, dict) and "run" in s:
                r = s["run"]
                yield where + ": " + (r.get("name", "") if isinstance(r, dict) else ""), \
                    r["command"] if isinstance(r, dict) else r
    for n, c in cc["commands"].items():
        yield from ((circleci_path,) + x for x in cc_steps(c["steps"], f"commands.{n}"))
    for n, j in cc["jobs"].items():
        yield from ((circleci_path,) + x for x in cc_steps(j["steps"], f"jobs.{n}"))
    for n, j in gh["jobs"].items():
        for st in j["steps"]:
            if "run" in st:
                yield workflow_path, f"jobs.{n}: {st.get('name', '')}", st["run"]


def plain(script):
    script = script.replace("<< pipeline.git.revision >>", SHA40).replace("<< pipeline.git.branch >>", "main")
    return re.sub(r"\$\{\{[^}]*\}\}", "x", script)


@check(f"{circleci_path}, {workflow_path}: every run step is valid bash (bash -n)")
def _():
    n = 0
    for path, where, script in run_scripts():
        out = subprocess.run(["bash", "-n"], input=plain(script), capture_output=True, text=True)
        assert out.returncode == 0, f"{path} {where}:\n{out.stderr}"
        n += 1
    return f"{n} scripts"


def example_keys():
    text = open("packaging/config.example.toml").read()
    return tomllib.loads(re.sub(r"(?m)^#\s*([a-z_]+ = )", r"\1", text))


# [release] kms_key belongs to `blog-agent publish` (issue 18): accepted here until
# packaging/config.example.toml documents it (then it is checked like every other key).
PENDING = {("release", "kms_key")}


@check(f"{circleci_path}, {workflow_path}: the config the jobs write is TOML with keys of packaging/config.example.toml")
def _():
    example = example_keys()
    env = {"BLOG_BUCKET": "bucket-x", "BLOG_KMS_KEY_ARN": "arn:aws:kms:us-east-1:123456789012:key/k",
           "BLOG_ECR_REPOSITORY": "123456789012.dkr.ecr.us-east-1.amazonaws.com/blog", "PATH": os.environ["PATH"]}
    found = {circleci_path: [], workflow_path: []}
    notes = []
    for path, where, script in run_scripts():
        if "config" not in where or "Write" not in where:
            continue
        found[path].append(script)
        with tempfile.TemporaryDirectory() as tmp:
            e = dict(env, BLOG_AGENT_CONFIG=f"{tmp}/blog-agent/config.toml", RUNNER_TEMP=tmp, HOME=tmp)
            out = subprocess.run(["bash", "-eo", "pipefail", "-c", plain(script)], env=e, cwd=tmp,
                                 capture_output=True, text=True)
            assert out.returncode == 0, f"{path} {where}: {out.stderr}"
            target = e["BLOG_AGENT_CONFIG"] if path == circleci_path else f"{tmp}/blog-agent.toml"
            config = tomllib.loads(open(target).read())
        for section, keys in config.items():
            assert section in example, f"{path}: unknown section [{section}]"
            for k, v in keys.items():
                if (section, k) in PENDING and k not in example[section]:
                    notes.append(f"[{section}] {k}")
                    continue
                assert k in example[section], f"{path}: unknown key [{section}] {k}"
                assert type(v) is type(example[section][k]), f"{path}: [{section}] {k} is {type(v).__name__}"
        assert config["release"]["bucket"] == "bucket-x" and config["image"]["repository"] == env["BLOG_ECR_REPOSITORY"], \
            f"{path}: bucket and repository do not come from BLOG_BUCKET and BLOG_ECR_REPOSITORY"
        assert config["release"].get("kms_key") == env["BLOG_KMS_KEY_ARN"], f"{path}: kms_key is not BLOG_KMS_KEY_ARN"
        assert config["release"]["keys"] == example["release"]["keys"], \
            f"{path}: release keys {config['release']['keys']} != {example['release']['keys']}"
        assert os.path.isabs(config.get("agent", {}).get("state_dir", "/")), f"{path}: state_dir not absolute"
    counts = {p: len(v) for p, v in found.items()}
    assert counts == {circleci_path: 1, workflow_path: 2}, \
        f"'Write ... config' steps {counts}: expected one command in CircleCI, one per blog-agent job in GitHub"
    assert found[workflow_path][0] == found[workflow_path][1], f"{workflow_path}: the two config steps differ"
    if notes:
        return "not yet in the example, accepted: " + ", ".join(sorted(set(notes)))


sys.exit(min(failures, 100))
EOF
rc=$?
failures=$((failures + rc))

finish check-ci-config
