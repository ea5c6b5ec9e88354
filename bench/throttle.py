"""bench/throttle.py AGENT WORK_DIR RESULTS_JSON: many agents through a throttling proxy.

Two groups of THROTTLE_N agents (default 20 each) run at once on this machine, each agent with
its own EC2 instance id (its own instance metadata stand-in, so its own jitter seed), access key
id (so the proxy's log names the host of every call), state dir and config, `[reconcile]
interval = THROTTLE_INTERVAL` (default 2s: the issue's worst case). Both go through
bench/proxy.py in front of moto, which injects, for THROTTLE_WINDOW seconds (default 180) from
the agents' start:

- group `ecr`: ECR `ThrottlingException` (400) on every ECR call, while a release none of them
  runs waits in S3 (each agent needs a registry token for its first pull);
- group `s3`: S3 `SlowDown` (503) on the release object of its bucket.

Then it stops the agents and counts, from the proxy's log, each host's ECR calls (group ecr) and
reads of the release object (group s3): in the issue's windows (40 s of ECR throttling, 30 s of
SlowDown), per minute of the throttle, and per host per minute over the whole window; and the
agents' log lines that hold an SDK Debug dump (`ServiceError(`, `Response {`). Writes the
figures to RESULTS_JSON and prints them. Everything on 127.0.0.1; touches only the buckets
blog-throttle-ecr and blog-throttle-s3 (in moto) and WORK_DIR.
"""

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import boto3

N = int(os.environ.get("THROTTLE_N", "20"))
INTERVAL = os.environ.get("THROTTLE_INTERVAL", "2s")
WINDOW = float(os.environ.get("THROTTLE_WINDOW", "180"))
KEY = "staging/stagebuild.txt"
# The IMDSv2 stand-in each agent asks for its instance id: fleet.py's (its own jitter seed).
from fleet import start_imds  # noqa: E402  (bench/fleet.py, beside this file)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    agent, work, results_path = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    moto_port = os.environ["MOTO_PORT"]
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    sha = secrets.token_hex(20)
    for group in ("ecr", "s3"):
        bucket = f"blog-throttle-{group}"
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        s3.put_object(Bucket=bucket, Key=KEY, Body=f"{sha}\n".encode())

    faults = os.path.join(work, "faults.json")
    log_path, port_file = os.path.join(work, "proxy.log"), os.path.join(work, "proxy.port")
    for path in (log_path, port_file):
        open(path, "w").close()
    proxy = subprocess.Popen([sys.executable, "bench/proxy.py", moto_port, log_path, port_file, faults],
                             stdin=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        if open(port_file).read().strip():
            break
        time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{open(port_file).read().strip()}"

    t0 = time.time()
    with open(faults, "w") as f:
        json.dump([
            {"until": t0 + WINDOW, "status": 400, "code": "ThrottlingException", "target": "AmazonEC2ContainerRegistry"},
            {"until": t0 + WINDOW, "status": 503, "code": "SlowDown", "path": f"/blog-throttle-s3/{KEY}"},
        ], f)
    agents = []
    for group in ("ecr", "s3"):
        for i in range(N):
            name = f"{group}-{i:03d}"
            instance_id = "i-0" + hashlib.sha256(f"throttle-{name}".encode()).hexdigest()[:16]
            imds = start_imds(instance_id)
            d = os.path.join(work, name)
            os.makedirs(os.path.join(d, "state"), exist_ok=True)
            port = free_port()
            config = os.path.join(d, "config.toml")
            with open(config, "w") as f:
                f.write(f"""[environment]
allowed = ["staging"]
[release]
bucket = "blog-throttle-{group}"
[image]
repository = "{os.environ['BLOG_AGENT_TEST_REGISTRY']}/blog-throttle-bench"
[container]
name = "blog-throttle-{name}"
ports = ["127.0.0.1:{port}:80"]
[health]
url = "http://127.0.0.1:{port}/"
[agent]
state_dir = "{os.path.join(d, 'state')}"
[reconcile]
interval = "{INTERVAL}"
jitter = "0s"
[traffic]
mode = "publish"
""")
            env = dict(os.environ)
            for k in ("AWS_EC2_METADATA_DISABLED", "AWS_PROFILE", "RUST_LOG", "JOURNAL_STREAM", "NOTIFY_SOCKET",
                      "AWS_SESSION_TOKEN"):
                env.pop(k, None)
            env.update({
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": name,
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{imds.server_address[1]}",
            })
            log = os.path.join(d, "agent.log")
            proc = subprocess.Popen([agent, "--config", config, "--env", "staging", "run"], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            agents.append((group, name, proc, log))
    try:
        time.sleep(max(0.0, t0 + WINDOW - time.time()))
    finally:
        for _, _, proc, _ in agents:
            proc.send_signal(signal.SIGTERM)
        for _, _, proc, _ in agents:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        os.killpg(proxy.pid, signal.SIGTERM)

    entries = [json.loads(line) for line in open(log_path) if line.strip()]

    def counted(group, entry):
        if group == "ecr":
            return "AmazonEC2ContainerRegistry" in (entry.get("amz_target") or "")
        return entry["method"] == "GET" and f"/blog-throttle-s3/{KEY}" in entry["path"]

    minutes = int(WINDOW // 60)
    results = {"hosts_per_group": N, "interval": INTERVAL, "window_s": WINDOW, "groups": {}}
    for group, first_window in (("ecr", 40), ("s3", 30)):
        per_host = {}
        for _, name, _, _ in (a for a in agents if a[0] == group):
            times = [e["t"] - t0 for e in entries if e.get("key_id") == name and counted(group, e)]
            times = [t for t in times if 0 <= t < WINDOW]
            per_host[name] = times
        in_first = [sum(t < first_window for t in ts) for ts in per_host.values()]
        per_minute = [
            sum(sum(60 * m <= t < 60 * (m + 1) for t in ts) for ts in per_host.values()) / N for m in range(minutes)
        ]
        total = [len(ts) for ts in per_host.values()]
        dumps = sum(
            sum(("ServiceError(" in line or "Response {" in line) for line in open(log, errors="replace"))
            for g, _, _, log in agents if g == group
        )
        results["groups"][group] = {
            "first_window_s": first_window,
            "calls_in_first_window": {"mean": sum(in_first) / N, "max": max(in_first)},
            "calls_per_host_per_minute": per_minute,
            "calls_per_host_per_minute_over_window": sum(total) / N / (WINDOW / 60),
            "max_calls_per_host_over_window": max(total),
            "debug_dump_lines": dumps,
        }
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
