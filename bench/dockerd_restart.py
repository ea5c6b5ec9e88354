"""bench/dockerd_restart.py WORK_DIR: failed requests while dockerd restarts under `blog-agent run`
(`[traffic] mode = "switch"`), without and with dockerd's live-restore. Run through
bench/dockerd-restart.sh, which starts the local stack, picks the binary and puts the plain dockerd
back at the end, however this script ends.

For each mode (live-restore off, then on): dockerd is restarted into that mode, the agent deploys a
busybox blog (not measured) and keeps running; then, BENCH_RUNS times: the load client
(bench/swap_client.py: a GET every 10 ms on 127.0.0.1, each on a new connection, 1 s timeout)
starts, dockerd gets SIGTERM (its pid file), the next dockerd starts once the old one has exited
(scripts/stack-up.sh, the same flags), and the client runs until the agent has reconnected and
passed converged, plus 2 s. A restart is what a `dnf upgrade docker` or unattended-upgrades does.

What it touches: containers labelled blog-agent-bench=1 with the name blogbench-dr-*, tags of
127.0.0.1:5000/blog-bench-dr, the S3 bucket blog-bench-dr (moto), netfilter chains BENCH-DR-*
(removed by name at the end), dockerd itself. Traffic goes only to 127.0.0.1 (and the agent's
probes to the container's bridge address). Every wait is bounded.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import page  # bench/page.py, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.environ["BENCH_AGENT"]
WORK = sys.argv[1]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
STACK = os.environ["BLOG_AGENT_STACK_DIR"]
REGISTRY = os.environ.get("BLOG_AGENT_TEST_REGISTRY", "127.0.0.1:5000")
REPO = "blog-bench-dr"
BUCKET = "blog-bench-dr"
KEY = "bench/dockerd-restart.txt"
CHAINS = "BENCH-DR"
LABEL = "blog-agent-bench"
NAME = f"blogbench-dr-{os.getpid()}"
CLIENT = os.path.join(ROOT, "bench/swap_client.py")
PID_FILE = "/var/run/docker.pid"
EVERY, TIMEOUT = 0.010, 1.0


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def sh(*argv, check=True, timeout=120, env=None):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


def wait_until(what, seconds, check):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {seconds} s waiting for {what}")


def docker_answers():
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def live_restore():
    return sh("docker", "info", "-f", "{{.LiveRestoreEnabled}}") == "true"


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_dockerd():
    """SIGTERM to dockerd's pid, then wait until it has exited. Returns seconds taken."""
    with open(PID_FILE) as f:
        pid = int(f.read().strip())
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_until("dockerd to exit", 90, lambda: not alive(pid))
    return time.monotonic() - t0


def start_dockerd(flags):
    env = dict(os.environ, BLOG_AGENT_DOCKERD_FLAGS=flags)
    sh("bash", os.path.join(ROOT, "scripts/stack-up.sh"), env=env, timeout=180)


def publish():
    sha = os.urandom(20).hex()
    sh("bash", os.path.join(ROOT, "scripts/publish-image.sh"), sha, "good", REGISTRY, REPO, timeout=300)
    put = [os.path.join(STACK, "venv/bin/python"), os.path.join(ROOT, "scripts/put-release.py"), BUCKET, KEY, sha]
    sh(*put)
    return sha


def config(port):
    path = os.path.join(WORK, "config.toml")
    with open(path, "w") as f:
        f.write("\n".join([
            "[environment]", 'name = "bench"', 'allowed = ["bench"]',
            "[release]", f'bucket = "{BUCKET}"', "[release.keys]", f'bench = "{KEY}"',
            "[image]", f'repository = "{REGISTRY}/{REPO}"',
            "[container]", f'name = "{NAME}"', f'ports = ["127.0.0.1:{port}:80"]',
            f'labels = {{ "{LABEL}" = "1" }}', 'stop_timeout = "3s"',
            "[health]", f'url = "http://127.0.0.1:{port}/"', 'timeout = "30s"',
            "[agent]", f'state_dir = "{os.path.join(WORK, "state")}"',
            # A long poll: what the agent does after a restart comes from reconnecting.
            "[reconcile]", 'interval = "5m"', 'jitter = "0s"',
            "[traffic]", 'mode = "switch"', f'chains = "{CHAINS}"',
        ]) + "\n")
    return path


def last_success():
    try:
        with open(os.path.join(WORK, "state", "last-pass.json")) as f:
            return json.load(f).get("last_success") or 0
    except (OSError, ValueError):
        return 0


def container():
    out = sh("docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}", NAME, check=False)
    return out or None


def dnat():
    return sh("iptables", "-w", "5", "-t", "nat", "-S", f"{CHAINS}-DNAT", check=False)


def cleanup():
    ids = sh("docker", "ps", "-aq", "--filter", f"label={LABEL}=1", "--filter", "name=blogbench-dr-", check=False)
    if ids:
        sh("docker", "rm", "-f", *ids.split(), check=False)
    for table in ("nat", "filter"):
        rules = sh("iptables", "-w", "5", "-t", table, "-S", check=False).splitlines()
        for line in rules:
            words = line.split()
            if len(words) > 2 and words[0] == "-A" and not words[1].startswith(CHAINS) \
                    and any(w.startswith(CHAINS + "-") for w in words[2:]):
                sh("iptables", "-w", "5", "-t", table, "-D", *words[1:], check=False)
        chains = [w[1] for w in (line.split() for line in rules) if len(w) == 2 and w[0] == "-N"
                  and w[1].startswith(CHAINS + "-")]
        for c in chains:
            sh("iptables", "-w", "5", "-t", table, "-F", c, check=False)
        for c in chains:
            sh("iptables", "-w", "5", "-t", table, "-X", c, check=False)


def analyse(samples):
    """samples: [start, end, status, version, error] per request (swap_client's newconn)."""
    samples = sorted(samples, key=lambda s: s[0])
    failed = [s for s in samples if s[2] != 200]
    longest, run_start = 0.0, None
    for s in samples:
        if s[2] != 200:
            run_start = s[0] if run_start is None else run_start
        elif run_start is not None:
            longest = max(longest, s[0] - run_start)
            run_start = None
    if run_start is not None:
        longest = max(longest, samples[-1][0] - run_start)
    return len(samples), len(failed), longest


def one_restart(mode, flags, port, i):
    out = os.path.join(WORK, f"client-{mode}-{i}.json")
    argv = ["/usr/bin/python3", CLIENT, "--out", out, "--every", str(EVERY), "--timeout", str(TIMEOUT),
            "--max-seconds", "120", "--newconn", f"127.0.0.1:{port}"]
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(out + ".err", "w"), stdin=subprocess.DEVNULL)
    if client.stdout.readline().strip() != b"ready":
        client.kill()
        raise RuntimeError(f"load client did not start: {open(out + '.err').read()[-300:]}")
    before = (container(), dnat())
    time.sleep(1)
    t0 = time.monotonic()
    exited = stop_dockerd()
    start_dockerd(flags)
    up = time.monotonic() - t0
    up_wall = int(time.time())
    wait_until("the agent's converged pass after the restart", 90, lambda: last_success() >= up_wall)
    wait_until("the blog to serve again", 60, lambda: page.get(port, 2, "bench-dockerd-restart")[0])
    time.sleep(2)
    client.send_signal(signal.SIGTERM)
    client.wait(30)
    with open(out) as f:
        samples = json.load(f)["newconn"]
    requests, failed, longest = analyse(samples)
    after = (container(), dnat())
    same = before[0] is not None and after[0] is not None and before[0].split()[0] == after[0].split()[0]
    result = {
        "mode": mode, "run": i + 1, "requests": requests, "failed": failed, "longest_failed_ms": round(longest * 1000),
        "dockerd_exit_s": round(exited, 2), "dockerd_up_s": round(up, 2),
        "same_container": same, "container_restarted": before[0] != after[0], "rules_changed": before[1] != after[1],
    }
    log(json.dumps(result))
    return result


def measure(mode, flags):
    log(f"dockerd live-restore {mode}: restarting dockerd into it")
    stop_dockerd()
    start_dockerd(flags)
    assert live_restore() == (mode == "on"), f"dockerd should run with live-restore {mode}"
    cleanup()
    port = page.free_ports(1)[0]
    cfg = config(port)
    sha = publish()
    env = dict(os.environ, AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:9")
    agent_log = open(os.path.join(WORK, f"agent-{mode}.log"), "w")
    agent = subprocess.Popen([AGENT, "--config", cfg, "--log-format", "json", "run"], stdout=subprocess.DEVNULL,
                             stderr=agent_log, stdin=subprocess.DEVNULL, env=env)
    try:
        wait_until(f"{sha[:12]} served by the agent", 90,
                   lambda: page.get(port, 2, "bench-dockerd-restart") == (True, sha))
        wait_until("the agent's first converged pass", 60, last_success)
        return [one_restart(mode, flags, port, i) for i in range(RUNS)]
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(5)
        cleanup()
        sh("docker", "rmi", f"{REGISTRY}/{REPO}:{sha}", check=False)


def median_range(values):
    values = sorted(values)
    return f"**{statistics.median(values):g}** ({values[0]:g}–{values[-1]:g})"


def report(results):
    rows = [
        "| dockerd | runs | failed requests (of one every 10 ms) | longest run of failed requests, ms | "
        "dockerd stop (SIGTERM → exit), s | stop + start, s | same container | container restarted | "
        "rules changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, label in (("off", "without live-restore (Docker's default)"), ("on", "`\"live-restore\": true`")):
        rs = [r for r in results if r["mode"] == mode]
        if not rs:
            continue
        yes = lambda key: f"{sum(r[key] for r in rs)}/{len(rs)}"  # noqa: E731
        rows.append(
            f"| {label} | {len(rs)} | {median_range([r['failed'] for r in rs])} of "
            f"{median_range([r['requests'] for r in rs])} | {median_range([r['longest_failed_ms'] for r in rs])} | "
            f"{median_range([r['dockerd_exit_s'] for r in rs])} | {median_range([r['dockerd_up_s'] for r in rs])} | "
            f"{yes('same_container')} | {yes('container_restarted')} | {yes('rules_changed')} |"
        )
    return "\n".join(rows)


def main():
    os.makedirs(WORK, exist_ok=True)
    results = []
    for mode, flags in (("off", ""), ("on", "--live-restore")):
        results += measure(mode, flags)
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(report(results))


if __name__ == "__main__":
    main()
