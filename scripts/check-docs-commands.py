#!/usr/bin/env python3
"""Runs the shell blocks of docs/cloudformation.md, as written and in order, against the local
moto_server: the page's promise that its commands work, checked where moto can.

    source scripts/stack-env.sh && bash scripts/stack-up.sh
    .stack/venv/bin/python scripts/check-docs-commands.py [--require-agent] [DOC]

Which blocks: every fenced block whose info string is `sh`, concatenated into one bash script
(`set -euo pipefail`: a variable the page uses before setting it, or a failing command, stops
it). A block whose first line is `# AWS only: <why>` or `# not run offline: <why>` is not run
and is listed with its reason; for the ones that make something later blocks need, a stand-in
runs in its place and says so:
  - a block that pushes the image (`docker push`): the image's manifest is registered in the
    stack's ECR repository under $SHA (PutImage with its digest; SHA set if the block set it);
  - a block that scales the group through a stack update (`aws cloudformation deploy ...
    MinSize=N DesiredCapacity=M`): UpdateAutoScalingGroup with the same numbers (moto cannot
    update a stack through a change set that keeps earlier parameter values).
Blocks in other languages (toml, Dockerfile, text) are not run.

Where they run: a scratch directory with the repository's scripts/, packaging/ and cloud-init/
linked in, HOME set to a scratch home (the page writes ~/.config/blog-agent/), blog-agent on
PATH (BLOG_AGENT_BIN, else target/debug/blog-agent, else the static release build), and a
stand-in file for the package at target/packages/ when the page names one that is not there
(scripts/package.sh needs a release build). The AWS CLI reaches moto through AWS_ENDPOINT_URL.
Refuses to run unless AWS_ENDPOINT_URL answers as a moto_server, so it never touches an
account. Stacks the page created and did not delete are deleted at the end (buckets emptied).

Lines: `ok`/`FAIL` per block run, `aws-only`/`offline` per block not run, `stand-in` per
stand-in, `skip` when there is no agent binary (a FAIL with --require-agent). Exit 1 if any
block failed.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "@@docs-commands@@"
SKIP = re.compile(r"^#\s*(AWS only|not run offline):\s*(.*)$")
FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


def blocks(text):
    """(line number, code) of each top-level ```sh block."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        if lines[i].strip() == "```sh" and not lines[i].startswith(" "):
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start + 1, "\n".join(body)))
        i += 1
    return out


def agent_binary():
    for p in (os.environ.get("BLOG_AGENT_BIN"), ROOT / "target/debug/blog-agent",
              ROOT / "target/x86_64-unknown-linux-musl/release/blog-agent"):
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return Path(p)
    return None


IMAGE_STAND_IN = r'''
: "${SHA:=%s}"
manifest='{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}'
digest="sha256:$(printf %%s "$manifest" | sha256sum | cut -d' ' -f1)"
aws ecr put-image --repository-name "${REPOSITORY_URI#*/}" --image-tag "$SHA" \
  --image-manifest "$manifest" --image-digest "$digest" >/dev/null
echo "%s stand-in image: registered ${REPOSITORY_URI#*/}:$SHA ($digest) in moto's ECR"
''' % (FAKE_SHA, MARK)


def stand_in(code):
    """(name, bash) to run in place of a block that is not run, or None."""
    if "docker push" in code:
        return "image", IMAGE_STAND_IN
    if "aws cloudformation deploy" in code:
        lo, want = re.search(r"MinSize=(\d+)", code), re.search(r"DesiredCapacity=(\d+)", code)
        if lo and want:
            return "scale", (
                'group=$(aws cloudformation list-stack-resources --stack-name "$STACK" --output text '
                "--query \"StackResourceSummaries[?LogicalResourceId=='AutoScalingGroup'].PhysicalResourceId\")\n"
                f'aws autoscaling update-auto-scaling-group --auto-scaling-group-name "$group" '
                f"--min-size {lo[1]} --desired-capacity {want[1]}\n"
                f'echo "{MARK} stand-in scale: UpdateAutoScalingGroup $group MinSize={lo[1]} '
                f'DesiredCapacity={want[1]}"\n')
    return None


def is_moto(endpoint):
    try:
        with urllib.request.urlopen(endpoint.rstrip("/") + "/moto-api/", timeout=5) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - anything else is not moto
        return False


def stacks(env):
    out = subprocess.run(["aws", "cloudformation", "list-stacks", "--output", "json",
                          "--query", "StackSummaries[?StackStatus!='DELETE_COMPLETE'].StackName"],
                         env=env, capture_output=True, text=True)
    return set(json.loads(out.stdout or "[]")) if out.returncode == 0 else set()


def clean_up(env, names):
    """Deletes stacks the page left behind, after emptying their buckets."""
    for name in sorted(names):
        print(f"     cleaning up stack {name} (the page did not delete it)")
        res = subprocess.run(["aws", "cloudformation", "list-stack-resources", "--stack-name", name,
                              "--output", "json"], env=env, capture_output=True, text=True)
        for r in json.loads(res.stdout or "{}").get("StackResourceSummaries", []):
            if r.get("ResourceType") == "AWS::S3::Bucket":
                subprocess.run(["aws", "s3", "rm", "--recursive", "--quiet", f"s3://{r['PhysicalResourceId']}"],
                               env=env, capture_output=True)
            if r.get("ResourceType") == "AWS::ECR::Repository":
                subprocess.run(["aws", "ecr", "delete-repository", "--force", "--repository-name",
                                r["PhysicalResourceId"]], env=env, capture_output=True)
        subprocess.run(["aws", "cloudformation", "delete-stack", "--stack-name", name], env=env, capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("doc", nargs="?", default=str(ROOT / "docs/cloudformation.md"))
    ap.add_argument("--require-agent", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print what the commands printed")
    args = ap.parse_args()
    doc = Path(args.doc)
    rel = doc.resolve().relative_to(ROOT) if doc.resolve().is_relative_to(ROOT) else doc

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if not endpoint or not is_moto(endpoint):
        print(f"FAIL {rel}: AWS_ENDPOINT_URL ({endpoint or 'unset'}) is not a moto_server; "
              "refusing to run the page's commands (source scripts/stack-env.sh after scripts/stack-up.sh)")
        return 1
    agent = agent_binary()
    if agent is None:
        line = f"{rel}'s commands: no blog-agent binary (BLOG_AGENT_BIN, target/debug, the release build)"
        print(("FAIL " if args.require_agent else "skip ") + line)
        return 1 if args.require_agent else 0

    found = blocks(doc.read_text())
    work = Path(tempfile.mkdtemp(prefix="docs-commands."))
    try:
        repo, home, bin_dir = work / "repo", work / "home", work / "bin"
        for d in (repo, home, bin_dir):
            d.mkdir()
        for name in ("scripts", "packaging", "cloud-init"):
            (repo / name).symlink_to(ROOT / name)
        shutil.copy2(agent, bin_dir / "blog-agent")  # a stable copy: the build may be replaced meanwhile
        for m in sorted(set(re.findall(r"target/packages/blog-agent[-_][A-Za-z0-9._+-]+\.(?:rpm|deb)",
                                       doc.read_text()))):
            if (ROOT / m).is_file():
                (repo / m).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / m, repo / m)
            else:
                (repo / m).parent.mkdir(parents=True, exist_ok=True)
                (repo / m).write_text("stand-in package for scripts/check-docs-commands.py\n")
                print(f"stand-in {m}: a placeholder file (scripts/package.sh needs a release build)")

        script = ["set -euo pipefail"]
        ran, skipped = [], []
        for n, (line, code) in enumerate(found, 1):
            first = code.split("\n", 1)[0]
            m = SKIP.match(first)
            if m:
                skipped.append((n, line, m[1], m[2]))
                si = stand_in(code)
                if si:
                    script.append(si[1])
                continue
            ran.append((n, line, code))
            script += [f'echo "{MARK} start {n}"', code, f'echo "{MARK} done {n}"']

        env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}", AWS_PAGER="")
        before = stacks(env)
        (work / "page.sh").write_text("\n".join(script) + "\n")
        proc = subprocess.run(["bash", str(work / "page.sh")], cwd=repo, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        out = proc.stdout
        clean_up(env, stacks(env) - before)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # ---- report ---------------------------------------------------------------------------------
    if args.verbose:
        print(out)
    done = set(int(x) for x in re.findall(rf"^{MARK} done (\d+)$", out, re.M))
    started = [int(x) for x in re.findall(rf"^{MARK} start (\d+)$", out, re.M)]
    for s in re.findall(rf"^{MARK} stand-in (.*)$", out, re.M):
        print(f"stand-in {s}")
    failed, reported_tail = 0, False
    for n, line, code in ran:
        what = f"{rel}:{line} block {n}: " + next((x for x in code.split("\n") if x and not x.startswith("#")), "")[:90]
        if n in done:
            print(f"ok   {what}")
        elif started and n == started[-1]:
            failed += 1
            part = out.split(f"{MARK} start {n}\n", 1)[1]
            part = "\n".join(x for x in part.splitlines() if not x.startswith(MARK))
            print(f"FAIL {what} (exit {proc.returncode})")
            for x in part.splitlines()[-25:]:
                print(f"     {x}")
        else:
            failed += 1
            print(f"FAIL {what}: not reached")
            if not reported_tail:
                # What stopped the script between blocks: a stand-in, or a `cd`.
                tail = out.rsplit(f"{MARK} done {max(done)}\n", 1)[-1] if done else out
                for x in tail.splitlines()[-15:]:
                    print(f"     {x}")
        reported_tail = reported_tail or n not in done
    for n, line, kind, why in skipped:
        print(f"{'aws-only' if kind == 'AWS only' else 'offline '} {rel}:{line} block {n}: {why}")
    print(f"check-docs-commands: {len(ran)} block(s) run against moto, {len(ran) - failed} passed; "
          f"{len(skipped)} not run ({sum(1 for s in skipped if s[2] == 'AWS only')} AWS only)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
