"""bench/bench.py OUT_JSON: measures blog-agent against the user-data baseline (bench/baseline.sh).

Run through bench/run.sh, which starts the local stack, the counting proxy and this script's
venv, and renders docs/BENCHMARKS.md from OUT_JSON with bench/report.py.

Everything here talks to 127.0.0.1 only (the agent itself also probes its candidate over the
Docker bridge, by design). Every container it creates carries the label blog-agent-bench=1
and is removed by that label at the start and at the end; images live in a repository of their
own (127.0.0.1:5000/blog-bench) and are removed at the end too. All loops are bounded.
"""

import base64
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import threading
import time

import boto3

import page  # noqa: E402  (bench/page.py, beside this file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.environ.get("BENCH_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-musl/release/blog-agent"))
BASELINE = os.path.join(ROOT, "bench/baseline.sh")
WORK = os.environ["BENCH_WORK"]  # scratch dir (configs, state, logs), owned by this run
PROXY_PORT = int(os.environ["BENCH_PROXY_PORT"])
PROXY_LOG = os.environ["BENCH_PROXY_LOG"]
MOTO = os.environ["AWS_ENDPOINT_URL"]  # the real moto (setup writes go straight there)
REGISTRY = os.environ.get("BLOG_AGENT_TEST_REGISTRY", "127.0.0.1:5000")
REPO = f"{REGISTRY}/blog-bench"
REG_USER = os.environ.get("ECR_TOKEN_USER", "AWS")
REG_PASSWORD = os.environ.get("ECR_TOKEN_PASSWORD", "123456789012-auth-token")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
IDLE_SECONDS = int(os.environ.get("BENCH_IDLE_SECONDS", "300"))
LABEL = "blog-agent-bench"
RUN_ID = f"{int(time.time()) % 100000:05d}"
BUCKET = "blog-bench"
PROBE_EVERY = 0.010  # the HTTP prober's cadence
PROBE_TIMEOUT = 3.0  # longer than one TCP SYN retransmit (1 s): such a request is slow, not failed
DOCKER_SOCK = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Docker Engine API over the unix socket (no CLI process in the measured "raw" path)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, timeout):
        super().__init__("localhost", timeout=timeout)

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(DOCKER_SOCK)
        self.sock = s


def docker(method, path, body=None, headers=None, timeout=120):
    conn = UnixHTTPConnection(timeout)
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def q(obj):
    return urlquote(json.dumps(obj))


def urlquote(s):
    from urllib.parse import quote

    return quote(s, safe="")


def containers(label=LABEL):
    status, data = docker("GET", f"/containers/json?all=1&filters={q({'label': [f'{label}=1']})}")
    assert status == 200, data
    return json.loads(data)


def remove_container(ident):
    status, data = docker("DELETE", f"/containers/{urlquote(ident)}?force=1")
    if status not in (204, 404):
        raise RuntimeError(f"remove container {ident}: {status} {data[:200]!r}")


def image_present(ref):
    return docker("GET", f"/images/{ref}/json")[0] == 200


def remove_image(ref):
    status, data = docker("DELETE", f"/images/{ref}")
    if status not in (200, 404):
        raise RuntimeError(f"remove image {ref}: {status} {data[:200]!r}")
    assert not image_present(ref), ref


def registry_auth():
    auth = {"username": REG_USER, "password": REG_PASSWORD, "serveraddress": REGISTRY}
    return base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()


def raw_pull(ref):
    repo, tag = ref.rsplit(":", 1)
    conn = UnixHTTPConnection(300)
    conn.request(
        "POST",
        f"/images/create?fromImage={urlquote(repo)}&tag={tag}",
        headers={"X-Registry-Auth": registry_auth()},
    )
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    conn.close()
    if resp.status != 200 or '"error"' in body:
        raise RuntimeError(f"pull {ref}: {resp.status} {body[-300:]}")


def raw_run(name, ref, port, labels):
    body = {
        "Image": ref,
        "ExposedPorts": {"80/tcp": {}},
        "Labels": labels,
        "HostConfig": {
            "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]},
            "RestartPolicy": {"Name": "unless-stopped"},
        },
    }
    status, data = docker("POST", f"/containers/create?name={name}", body)
    if status != 201:
        raise RuntimeError(f"create {name}: {status} {data[:300]!r}")
    ident = json.loads(data)["Id"]
    t_created = time.monotonic()
    status, data = docker("POST", f"/containers/{ident}/start")
    if status != 204:
        raise RuntimeError(f"start {name}: {status} {data[:300]!r}")
    return t_created


def cleanup_docker():
    for c in containers():
        remove_container(c["Id"])
    status, data = docker("GET", f"/images/json?filters={q({'reference': [REPO]})}")
    for img in json.loads(data) if status == 200 else []:
        docker("DELETE", f"/images/{img['Id']}?force=1")


def free_port():
    return page.free_ports(1)[0]


# ---------------------------------------------------------------------------------------------
# HTTP prober: GET / every 10 ms on 127.0.0.1:PORT, recording status and the version served

def probe_once(port):
    return page.get(port, PROBE_TIMEOUT, "bench-prober")


class Prober(threading.Thread):
    """Starts one GET every PROBE_EVERY, each in its own thread, whether or not earlier ones have
    answered: a request stuck in a TCP SYN retransmit (1 s) must not hide the requests after it.
    Samples: (start, ok, version, end), in start order."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.samples = []
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.seen_ok = threading.Event()
        self.inflight = []

    def _one(self, idx, t):
        ok, version = probe_once(self.port)
        end = time.monotonic()
        with self.lock:
            self.samples[idx] = (t, ok, version, end)
        if ok:
            self.seen_ok.set()

    def run(self):
        nxt = time.monotonic()
        deadline = nxt + 600  # bounded, whatever happens
        while not self.halt.is_set() and time.monotonic() < deadline:
            t = time.monotonic()
            with self.lock:
                idx = len(self.samples)
                self.samples.append(None)
            th = threading.Thread(target=self._one, args=(idx, t), daemon=True)
            th.start()
            self.inflight.append(th)
            if len(self.inflight) > 64:
                self.inflight = [x for x in self.inflight if x.is_alive()]
            nxt += PROBE_EVERY
            self.halt.wait(max(0.0, nxt - time.monotonic()))

    def stop(self):
        self.halt.set()
        self.join(5)
        for th in self.inflight:
            th.join(PROBE_TIMEOUT + 1)
        with self.lock:
            return [s for s in self.samples if s is not None]

    def done_ok(self, t0, version=None):
        with self.lock:
            return first_ok_after([s for s in self.samples if s is not None], t0, version)


def first_ok_after(samples, t0, version=None):
    """When the first HTTP 200 (of `version`, if given) arrived, among requests started at or after t0."""
    ends = [end for t, ok, v, end in samples if t >= t0 and ok and (version is None or v == version)]
    return min(ends) if ends else None


SLOW = 0.2  # a 200 that took longer than this was not a prompt answer (here: a ~1 s SYN retransmit)


def failure_runs(samples, bad):
    """Runs of consecutive requests (in start order) for which bad(sample) holds:
    [(first bad start, start of the next good request or None, count)]."""
    runs, start, count = [], None, 0
    for sample in samples:
        if bad(sample):
            if start is None:
                start, count = sample[0], 0
            count += 1
        elif start is not None:
            runs.append((start, sample[0], count))
            start = None
    if start is not None:
        runs.append((start, None, count))
    return runs


def longest(runs, t_end):
    best = (0.0, 0, True)
    for start, end, count in runs:
        length = (end if end is not None else t_end) - start
        if length >= best[0]:
            best = (length, count, end is not None)
    return best


def gap_summary(samples, t_end):
    """The gap: the longest run of requests that got no prompt 200 (failed, or answered after more
    than SLOW). Also the longest run of outright failures, for comparison."""
    gap, gap_count, recovered = longest(failure_runs(samples, lambda s: not s[1] or s[3] - s[0] > SLOW), t_end)
    fail_run, _, _ = longest(failure_runs(samples, lambda s: not s[1]), t_end)
    latencies = [end - t for t, ok, _, end in samples if ok]
    return {"failed_requests": sum(1 for s in samples if not s[1]), "requests": len(samples),
            "longest_gap_s": gap, "longest_gap_requests": gap_count, "recovered": recovered,
            "longest_failure_run_s": fail_run,
            "slow_requests": sum(1 for x in latencies if x > SLOW),
            "max_latency_s": max(latencies, default=None)}


def timeline(samples, t0, old, new):
    """Compact per-request series for the plot: (start since t0, state, latency)."""
    out = []
    for t, ok, v, end in samples:
        state = "fail" if not ok else ("new" if v == new else ("old" if v == old else "other"))
        out.append((round(t - t0, 4), state, round(end - t, 4)))
    return out


# ---------------------------------------------------------------------------------------------
# Running the tools


def proxy_endpoint():
    return f"http://127.0.0.1:{PROXY_PORT}"


def tool_env(extra=None):
    env = dict(os.environ)
    env["AWS_ENDPOINT_URL"] = proxy_endpoint()  # both tools go through the counting proxy
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # loopback only: never fall back to IMDS
    env["DOCKER_CONFIG"] = os.path.join(WORK, "docker-config")  # the baseline's own login
    env.pop("BLOG_AGENT_CONFIG", None)
    env.update(extra or {})
    return env


class Proc:
    """A child process whose exit time and rusage are recorded exactly (wait4 in a thread)."""

    def __init__(self, argv, log_path, env, track_mem=False):
        self.t_start = time.monotonic()
        self.log = open(log_path, "ab")
        self.log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        self.log.flush()
        self.popen = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid
        self.t_exit = self.code = self.rusage = None
        self.done = threading.Event()
        self.hwm_kb = None
        threading.Thread(target=self._wait, daemon=True).start()
        if track_mem:
            threading.Thread(target=self._track_mem, args=(os.path.basename(argv[0]),), daemon=True).start()

    def _track_mem(self, name):
        """Peak RSS (VmHWM) of the program itself. rusage's ru_maxrss would also count the
        forked Python before exec, so the high-water mark is read from /proc until exit."""
        while not self.done.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    st = dict(line.split(":", 1) for line in f if ":" in line)
                if st["Name"].strip() == name[:15] and "VmHWM" in st:
                    self.hwm_kb = max(self.hwm_kb or 0, int(st["VmHWM"].split()[0]))
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.002)

    def _wait(self):
        _, status, rusage = os.wait4(self.pid, 0)
        self.t_exit = time.monotonic()
        self.code = os.waitstatus_to_exitcode(status)
        self.rusage = rusage
        self.popen.returncode = self.code  # so Popen does not wait again
        self.log.close()
        self.done.set()

    def wait(self, timeout):
        if not self.done.wait(timeout):
            self.popen.kill()
            self.done.wait(10)
            raise RuntimeError(f"{self.popen.args} did not finish within {timeout}s")
        return self

    @property
    def wall(self):
        return self.t_exit - self.t_start

    @property
    def cpu(self):
        return self.rusage.ru_utime + self.rusage.ru_stime


# The agent's traffic mode. Unset: "switch", the default (host ports DNATed by the agent's own
# chains, prefix CHAINS, removed by name at the end); "publish": Docker publishes the ports.
CHAINS = "BENCH-RUN"
PUB_CHAINS = "BENCH-RUNPUB"  # publish mode creates no chains; a prefix of its own all the same


def agent_config(name, port, key, stop_timeout=None, interval="5s", mode="switch"):
    path = os.path.join(WORK, f"{name}.toml")
    state = os.path.join(WORK, "state", name)
    lines = [
        "[environment]", 'name = "bench"', 'allowed = ["bench"]',
        "[release]", f'bucket = "{BUCKET}"',
        "[release.keys]", f'bench = "{key}"',
        "[image]", f'repository = "{REPO}"',
        "[container]", f'name = "{name}"', f'ports = ["127.0.0.1:{port}:80"]',
        f'labels = {{ "{LABEL}" = "1", "{LABEL}-run" = "{RUN_ID}" }}',
    ]
    if stop_timeout is not None:
        lines.append(f'stop_timeout = "{stop_timeout}"')
    lines += ["[health]", f'url = "http://127.0.0.1:{port}/"', 'timeout = "30s"',
              "[agent]", f'state_dir = "{state}"',
              "[reconcile]", f'interval = "{interval}"',
              "[traffic]", f'mode = "{mode}"', f'chains = "{CHAINS if mode == "switch" else PUB_CHAINS}"']
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"path": path, "state": state, "name": name, "port": port, "key": key}


def baseline_env(name, port, key):
    return {"BLOG_BUCKET": BUCKET, "BLOG_KEY": key, "BLOG_REPOSITORY": REPO, "BLOG_NAME": name,
            "BLOG_PORTS": f"127.0.0.1:{port}:80", "BLOG_LABELS": f"{LABEL}=1 {LABEL}-run={RUN_ID}"}


def start_agent_sync(cfg, logname):
    return Proc([AGENT, "--config", cfg["path"], "sync"], os.path.join(WORK, logname), tool_env(), track_mem=True)


def start_baseline(benv, logname):
    return Proc(["bash", BASELINE], os.path.join(WORK, logname), tool_env(benv))


S3 = None


def put_release(key, sha):
    S3.put_object(Bucket=BUCKET, Key=key, Body=(sha + "\n").encode(), ServerSideEncryption="aws:kms",
                  SSEKMSKeyId="ec0a605d-17e9-4ac8-a2e3-e299c1ee1a93")


def wait_until(what, secs, fn, every=0.05):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(every)
    raise RuntimeError(f"{what}: not within {secs}s")


def serving(port):
    ok, version = probe_once(port)
    return version if ok else None


def rotated(items, i):
    i %= len(items)
    return items[i:] + items[:i]


PUBLISHED = []


def publish(kind="good"):
    sha = os.urandom(20).hex()
    PUBLISHED.append(sha)
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts/publish-image.sh"), sha, kind, REGISTRY, "blog-bench"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"publish {kind} {sha}: {out.stderr}")
    return sha


def unpublish():
    """Deletes this run's tags from the registry (its storage has delete enabled)."""
    import urllib.request

    auth = "Basic " + base64.b64encode(f"{REG_USER}:{REG_PASSWORD}".encode()).decode()
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    for sha in PUBLISHED:
        url = f"http://{REGISTRY}/v2/blog-bench/manifests/"
        try:
            head = urllib.request.Request(url + sha, method="HEAD", headers={"Authorization": auth, "Accept": accept})
            digest = urllib.request.urlopen(head, timeout=10).headers["Docker-Content-Digest"]
            delete = urllib.request.Request(url + digest, method="DELETE", headers={"Authorization": auth})
            urllib.request.urlopen(delete, timeout=10)
        except Exception as e:  # noqa: BLE001
            log(f"could not delete {REPO}:{sha} from the registry: {e}")


def ref(sha):
    return f"{REPO}:{sha}"


def proxy_requests(t_from, t_to, ua_prefix):
    """Requests the proxy saw between two wall-clock times from clients whose User-Agent starts
    with ua_prefix."""
    out = []
    with open(PROXY_LOG) as f:
        for line in f:
            e = json.loads(line)
            if t_from <= e["t"] <= t_to and e["user_agent"].startswith(ua_prefix):
                out.append(e)
    return out


def classify(reqs):
    s3 = [r for r in reqs if not r["amz_target"]]
    ecr = [r for r in reqs if r["amz_target"] and "ContainerRegistry" in r["amz_target"]]
    return {"s3": len(s3), "s3_conditional": sum(1 for r in s3 if r["if_none_match"]),
            "s3_304": sum(1 for r in s3 if r["status"] == 304), "ecr": len(ecr),
            "s3_calls": sorted({f"{r['method']} {r['status']}{' If-None-Match' if r['if_none_match'] else ''}" for r in s3}),
            "ecr_calls": sorted({r["amz_target"].split(".")[-1] for r in ecr})}


WALL_OFFSET = time.time() - time.monotonic()  # proxy log (wall) <-> monotonic


# ---------------------------------------------------------------------------------------------
# Stages


def stage_cold(results):
    """Empty Docker (no container, image not local), image in the registry -> first HTTP 200."""
    log("cold time-to-serve")
    sha = publish()
    key = "bench/cold.txt"
    put_release(key, sha)
    ports = {t: free_port() for t in ("agent", "baseline", "raw")}
    cfg = agent_config(f"blogbench-{RUN_ID}-cold-agent", ports["agent"], key)
    benv = baseline_env(f"blogbench-{RUN_ID}-cold-base", ports["baseline"], key)
    raw_name = f"blogbench-{RUN_ID}-cold-raw"
    runs = {"agent": [], "baseline": [], "raw": []}
    for i in range(RUNS):
        for tool in rotated(["agent", "baseline", "raw"], i):
            for c in containers():  # empty Docker: no container of ours, image not on disk
                remove_container(c["Id"])
            remove_image(ref(sha))
            shutil.rmtree(cfg["state"], ignore_errors=True)
            prober = Prober(ports[tool])
            wall0 = time.time()
            t0 = time.monotonic()
            prober.start()
            rec = {}
            if tool == "agent":
                p = start_agent_sync(cfg, "cold-agent.log")
            elif tool == "baseline":
                p = start_baseline(benv, "cold-baseline.log")
            else:
                p = None
                raw_pull(ref(sha))
                rec["pulled_s"] = time.monotonic() - t0
                t_created = raw_run(raw_name, ref(sha), ports["raw"], {LABEL: "1", f"{LABEL}-run": RUN_ID})
                rec["created_s"] = t_created - t0
                rec["started_s"] = time.monotonic() - t0
            if not prober.seen_ok.wait(120):
                raise RuntimeError(f"cold {tool}: no HTTP 200 within 120s")
            if p:
                p.wait(120)
                if p.code != 0:
                    raise RuntimeError(f"cold {tool} exited {p.code}; see {p.log.name}")
                rec.update(exit_s=p.t_exit - t0, cpu_s=p.cpu, peak_rss_kb=p.hwm_kb)
            samples = prober.stop()
            t_ok = first_ok_after(samples, t0)
            version = next(v for t, ok, v, _ in samples if ok)
            assert version == sha, (tool, version, sha)
            rec["tts_s"] = t_ok - t0
            if tool != "raw":
                rec["requests"] = classify(proxy_requests(wall0, time.time(), "aws-sdk-rust" if tool == "agent" else "aws-cli"))
            runs[tool].append(rec)
            log(f"  cold {tool} run {i + 1}: {rec['tts_s']:.3f}s")
    results["cold"] = runs
    results["cold_sha"] = sha
    return sha, cfg, benv


def stage_warm(results, sha, cfg, benv):
    """Everything converged -> the command exits. The baseline's equivalent is running the
    user-data script again."""
    log("warm sync, nothing to do")
    for c in containers():
        if c["Names"][0].endswith("-raw"):
            remove_container(c["Id"])
    for starter, port in ((lambda: start_agent_sync(cfg, "warm-agent.log"), cfg["port"]),
                          (lambda: start_baseline(benv, "warm-baseline.log"), int(benv["BLOG_PORTS"].split(":")[1]))):
        if serving(port) != sha:
            starter().wait(120)
        wait_until("converged before the warm runs", 30, lambda: serving(port) == sha)
    runs = {"agent": [], "baseline": []}
    bport = int(benv["BLOG_PORTS"].split(":")[1])
    for i in range(RUNS):
        for tool in rotated(["agent", "baseline"], i):
            port = cfg["port"] if tool == "agent" else bport
            prober = Prober(port)
            prober.start()
            time.sleep(0.2)
            wall0 = time.time()
            p = start_agent_sync(cfg, "warm-agent.log") if tool == "agent" else start_baseline(benv, "warm-baseline.log")
            p.wait(120)
            if p.code != 0:
                raise RuntimeError(f"warm {tool} exited {p.code}")
            wait_until("serving after warm run", 30, lambda: prober.seen_ok.is_set() and serving(port) == sha)
            time.sleep(0.3)
            samples = prober.stop()
            rec = {"wall_s": p.wall, "cpu_s": p.cpu, "peak_rss_kb": p.hwm_kb}
            rec.update(gap_summary(samples, time.monotonic()))
            rec["requests"] = classify(proxy_requests(wall0, time.time(), "aws-sdk-rust" if tool == "agent" else "aws-cli"))
            runs[tool].append(rec)
            log(f"  warm {tool} run {i + 1}: {rec['wall_s']:.3f}s, {rec['failed_requests']} failed requests")
    results["warm"] = runs


def swap_run(kind, start, port, key, old, new, settle_after_exit, expect_code):
    """One release change while the prober runs. `start` launches the tool."""
    remove_image(ref(new))  # a new release is not on the host yet: the swap includes its pull
    prober = Prober(port)
    prober.start()
    time.sleep(0.3)
    put_release(key, new)
    t0 = time.monotonic()
    p = start()
    p.wait(180)
    if p.code != expect_code:
        raise RuntimeError(f"swap {kind} exited {p.code}, expected {expect_code}; see {p.log.name}")
    if expect_code == 0 and settle_after_exit is None:
        t_new = wait_until("new version served", 30, lambda: prober.done_ok(t0, new))
        time.sleep(max(0.0, t_new + 0.5 - time.monotonic()))
    else:
        time.sleep(settle_after_exit)
    t_end = time.monotonic()
    samples = prober.stop()
    rec = {"exit_s": p.t_exit - t0, "code": p.code, "cpu_s": p.cpu}
    rec.update(gap_summary([s for s in samples if s[0] >= t0], t_end))
    t_new = first_ok_after(samples, t0, new)
    rec["new_served_s"] = None if t_new is None else t_new - t0
    rec["old_served_after_exit"] = any(ok and v == old for t, ok, v, _ in samples if t > p.t_exit)
    rec["timeline"] = timeline(samples, t0, old, new)
    return rec


ARP_SYSCTL = "/proc/sys/net/ipv4/neigh/docker0/retrans_time_ms"
PACKAGED_SYSCTL = os.path.join(ROOT, "packaging/sysctl/60-blog-agent.conf")


def packaged_arp_ms():
    """docker0's ARP retransmit time as the package sets it (packaging/sysctl/60-blog-agent.conf)."""
    with open(PACKAGED_SYSCTL) as f:
        for line in f:
            key, _, value = line.partition("=")
            if key.strip() == "net.ipv4.neigh.docker0.retrans_time_ms":
                return int(value)
    raise RuntimeError(f"{PACKAGED_SYSCTL} does not set docker0's retrans_time_ms")


def set_arp_ms(ms):
    with open(ARP_SYSCTL, "w") as f:
        f.write(str(ms))


ROUTE_LOCALNET = "/proc/sys/net/ipv4/conf/docker0/route_localnet"


def iptables(*args):
    out = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {out.stderr.strip()[:300]}")
    return out.stdout


def remove_chains(prefix):
    """Deletes every jump into chains named PREFIX* (from PREROUTING, OUTPUT, POSTROUTING,
    DOCKER-USER, INPUT, wherever), then flushes and deletes those chains; nat first."""
    for table in ("nat", "filter"):
        rules = iptables("-t", table, "-S")
        for line in rules.splitlines():
            words = line.split()
            if len(words) > 2 and words[0] == "-A" and not words[1].startswith(prefix) and \
                    any(w.startswith(prefix) for w in words[2:]):
                iptables("-t", table, "-D", *words[1:])
        chains = [w[1] for w in (line.split() for line in rules.splitlines())
                  if len(w) == 2 and w[0] == "-N" and w[1].startswith(prefix)]
        for c in chains:
            iptables("-t", table, "-F", c)
        for c in chains:
            iptables("-t", table, "-X", c)


def restore_route_localnet(found):
    """The agent in switch mode sets docker0's route_localnet to 1. Put 0 back if that is what was
    found and no other loopback masquerade out of docker0 remains (another agent's, the demo's,
    dockerd's userland-proxy=false), as the agent's own removal does."""
    with open(ROUTE_LOCALNET) as f:
        now = int(f.read())
    if found != 0 or now == 0:
        return
    others = [line for line in iptables("-t", "nat", "-S").splitlines() if "-o docker0" in line
              and line.endswith("-j MASQUERADE") and ("-s 127.0.0.0/8" in line or "--src-type LOCAL" in line)]
    if others:
        log(f"route_localnet left at 1: other loopback masquerades out of docker0 remain: {others}")
        return
    with open(ROUTE_LOCALNET, "w") as f:
        f.write("0")


# Each swap configuration: (tool, [container] stop_timeout, docker0 ARP retransmit time, traffic
# mode). The blog-agent rows are `[traffic] mode = "publish"` (Docker's published ports, a
# stop-then-start swap: what the ARP setting is about), plus one in the default switch mode; the
# switch against publish against the script under load is bench/swap.sh's. The
# kernel's default (1000 ms) is what a host without the package has; the packaged value is what
# blog-agent's package installs (the baseline script ships nothing, but it is measured under the
# same host setting too, so the tools are compared on identical hosts).
KERNEL_ARP_MS = 1000


def swap_configs():
    packaged = packaged_arp_ms()
    return {
        "baseline_arp1000": ("baseline", None, KERNEL_ARP_MS, None),
        "agent_stop3s_arp1000": ("agent", "3s", KERNEL_ARP_MS, "publish"),  # 3s: the default stop_timeout
        "baseline": ("baseline", None, packaged, None),
        "agent_stop3s": ("agent", "3s", packaged, "publish"),
        "agent_stop0s": ("agent", "0s", packaged, "publish"),  # busybox httpd (PID 1) ignores SIGTERM
        "agent_switch": ("agent", "3s", packaged, "switch"),
    }


def stage_swap(results):
    """A new SHA in S3 while an HTTP prober hits the port every 10 ms."""
    log("release swap gap")
    configs = swap_configs()
    results["swap_configs"] = {k: {"tool": t, "stop_timeout": st, "arp_ms": arp, "mode": mode}
                               for k, (t, st, arp, mode) in configs.items()}
    try:
        return swap_stages(results, configs)
    finally:
        set_arp_ms(packaged_arp_ms())


def alone_serving(kind, s, version):
    """Removes every benchmark container, then has the tool deploy `version` (not measured).

    A host runs one blog container, so at cut-over docker0 loses its only port and goes down; with
    other containers on the bridge it stays up and the kernel's neighbour handling differs (the
    ~1 s ARP stall of a swap shows only on a lone container). Each measured swap therefore starts
    from a host where the tool's container is the only one."""
    for c in containers():
        remove_container(c["Id"])
    put_release(s["key"], version)
    s["start"]().wait(120)
    wait_until(f"{kind} serving {version}", 30, lambda: serving(s["port"]) == version)
    s["current"] = version


def swap_stages(results, configs):
    state = {}
    for kind, (tool, stop, arp_ms, mode) in configs.items():
        a, b = publish(), publish()
        port, key = free_port(), f"bench/swap-{kind}.txt"
        name = f"blogbench-{RUN_ID}-swap-{kind.replace('_', '-')}"
        if tool == "baseline":
            benv = baseline_env(name, port, key)
            start = (lambda benv=benv, kind=kind: start_baseline(benv, f"swap-{kind}.log"))
        else:
            cfg = agent_config(name, port, key, stop_timeout=stop, mode=mode)
            start = (lambda cfg=cfg, kind=kind: start_agent_sync(cfg, f"swap-{kind}.log"))
        state[kind] = {"start": start, "port": port, "key": key, "pair": (a, b), "current": a, "name": name,
                       "arp_ms": arp_ms}
    runs = {k: [] for k in configs}
    for i in range(RUNS):
        for kind in rotated(list(configs), i):
            s = state[kind]
            set_arp_ms(s["arp_ms"])
            old = s["pair"][1] if s["current"] == s["pair"][0] else s["pair"][0]
            alone_serving(kind, s, old)
            new = s["pair"][1] if old == s["pair"][0] else s["pair"][0]
            rec = swap_run(kind, s["start"], s["port"], s["key"], old, new, None, 0)
            s["current"] = new
            runs[kind].append(rec)
            log(f"  swap {kind} run {i + 1}: longest gap {rec['longest_gap_s'] * 1000:.0f} ms "
                f"({rec['failed_requests']} failed), new version after {rec['new_served_s']:.2f}s")
    results["swap"] = runs

    log("release that fails its health probe")
    crash = {"baseline": publish("crash"), "agent_stop3s": publish("crash"), "agent_switch": publish("crash")}
    cruns = {k: [] for k in crash}
    for i in range(RUNS):
        for kind in rotated(list(crash), i):
            s = state[kind]
            set_arp_ms(s["arp_ms"])
            good = s["current"]
            alone_serving(kind, s, good)
            # The agent refuses the release (exit 1); the baseline installs it (exit 0) and the site
            # stays down: observe 3 s after the script exits, then put the good version back.
            rec = swap_run(f"crash-{kind}", s["start"], s["port"], s["key"], good, crash[kind],
                           1.0 if kind != "baseline" else 3.0, 1 if kind != "baseline" else 0)
            cruns[kind].append(rec)
            log(f"  crash {kind} run {i + 1}: {rec['failed_requests']} failed requests, "
                f"old version still served: {rec['old_served_after_exit']}")
            if kind != "baseline":
                remove_image(ref(crash[kind]))
    results["crash"] = cruns
    return state


def read_proc(pid):
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/schedstat") as f:
        cpu_ns = int(f.read().split()[0])  # main thread, nanoseconds
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime of all threads, clock ticks
    child_ticks = int(fields[13]) + int(fields[14])  # cutime + cstime: its reaped children (iptables)
    kb = lambda k: int(st[k].split()[0])  # noqa: E731
    return {"rss_kb": kb("VmRSS"), "hwm_kb": kb("VmHWM"), "threads": int(st["Threads"]), "cpu_ns": cpu_ns,
            "cpu_ticks_s": ticks / os.sysconf("SC_CLK_TCK"), "cpu_children_s": child_ticks / os.sysconf("SC_CLK_TCK")}


def stage_drift(results, sha):
    """`docker rm -f` of the serving container while `blog-agent run` is active."""
    log("drift repair")
    for c in containers():  # the blog container alone on docker0, as on a host
        remove_container(c["Id"])
    port, key = free_port(), "bench/run.txt"
    put_release(key, sha)
    cfg = agent_config(f"blogbench-{RUN_ID}-run", port, key, interval="5s")
    agent = Proc([AGENT, "--config", cfg["path"], "run"], os.path.join(WORK, "drift-run.log"), tool_env())
    try:
        wait_until("run converged", 120, lambda: serving(port) == sha)
        time.sleep(1.0)
        runs = []
        for i in range(RUNS):
            prober = Prober(port)
            prober.start()
            time.sleep(0.3)
            t0 = time.monotonic()
            remove_container(cfg["name"])  # docker rm -f, through the API
            t_rm = time.monotonic()
            wait_until("repaired", 30, lambda: prober.done_ok(t_rm))
            time.sleep(1.0)
            samples = prober.stop()
            rec = {"rm_s": t_rm - t0, "repair_s": first_ok_after(samples, t_rm) - t_rm,
                   "repair_from_rm_start_s": first_ok_after(samples, t_rm) - t0}
            rec.update(gap_summary([s for s in samples if s[0] >= t0], time.monotonic()))
            runs.append(rec)
            log(f"  drift run {i + 1}: HTTP 200 again {rec['repair_s']:.3f}s after rm -f returned")
            wait_until("stable before the next run", 30, lambda: serving(port) == sha)
            time.sleep(1.5)
        results["drift"] = {"agent": runs, "agent_run_process": read_proc(agent.pid)}
    finally:
        agent.popen.send_signal(signal.SIGTERM)
        agent.wait(30)
    return cfg


def stage_drift_baseline(state):
    log("drift, baseline (observed 10 s)")
    s = state["baseline"]
    alone_serving("baseline", s, s["current"])
    prober = Prober(s["port"])
    prober.start()
    time.sleep(0.3)
    remove_container(s["name"])
    t_rm = time.monotonic()
    time.sleep(10)
    samples = prober.stop()
    t_ok = first_ok_after(samples, t_rm)
    return {"observed_s": 10.0, "repaired_s": None if t_ok is None else t_ok - t_rm}


def fleet_features(cfg):
    """`cfg` with the fleet features on: a 15-minute staged rollout and the metrics textfile."""
    path = cfg["path"].replace(".toml", "-fleet.toml")
    textfile = os.path.join(WORK, "metrics", "blog_agent.prom")
    os.makedirs(os.path.dirname(textfile), exist_ok=True)
    with open(cfg["path"]) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text + f'[rollout]\nspread = "15m"\n[metrics]\ntextfile = "{textfile}"\n')
    return {**cfg, "path": path, "textfile": textfile}


def stage_idle(results, cfg, sha, key="idle"):
    """`blog-agent run` on a converged host for IDLE_SECONDS at a 5 s interval."""
    log(f"idle footprint ({IDLE_SECONDS}s, {key})")
    wait_until("converged before idle", 60, lambda: serving(cfg["port"]) == sha)
    wall0 = time.time()
    log_path = os.path.join(WORK, f"{key}-run.log")
    agent = Proc([AGENT, "--config", cfg["path"], "run"], log_path, tool_env())
    samples = []
    try:
        deadline = time.monotonic() + IDLE_SECONDS
        while time.monotonic() < deadline and not agent.done.is_set():
            s = read_proc(agent.pid)
            s["t"] = time.monotonic()
            s["load1"] = float(open("/proc/loadavg").read().split()[0])
            samples.append(s)
            time.sleep(0.1)
        final = read_proc(agent.pid)
        wall1 = time.time()
    finally:
        t_term = time.monotonic()
        agent.popen.send_signal(signal.SIGTERM)
        agent.wait(30)
    still_serving = serving(cfg["port"]) == sha
    reqs = proxy_requests(wall0, wall1, "aws-sdk-rust")
    # Halt-marker reads are not polls: the first pass reads the published SHA's marker once
    # (at start the agent does not know yet that the host runs that SHA).
    marker_reads = [r for r in reqs if not r["amz_target"] and "/halted/" in r["path"]]
    polls = [r for r in reqs if not r["amz_target"] and "/halted/" not in r["path"]]
    first, idle_polls = polls[:1], polls[1:]
    # CPU per poll: CPU between consecutive polls (all of the process's work in that cycle).
    cpu_at = lambda t: max((s["cpu_ns"] for s in samples if s["t"] <= t), default=samples[0]["cpu_ns"])  # noqa: E731
    cycles = []
    poll_times = [r["t"] - WALL_OFFSET for r in idle_polls]
    for a, b in zip(poll_times, poll_times[1:]):
        cycles.append((cpu_at(b - 0.05) - cpu_at(a - 0.05)) / 1e9)
    intervals = [b - a for a, b in zip(poll_times, poll_times[1:])]
    idle_cpu_total = (final["cpu_ns"] - cpu_at(poll_times[0] - 0.05)) / 1e9 if poll_times else None
    results[key] = {
        "metrics_textfile_written": os.path.exists(cfg.get("textfile", "")) if cfg.get("textfile") else None,
        "seconds": IDLE_SECONDS,
        "peak_rss_kb": final["hwm_kb"],
        "rss_end_kb": final["rss_kb"],
        "rss_max_sampled_kb": max(s["rss_kb"] for s in samples),
        "threads": final["threads"],
        "cpu_total_s": final["cpu_ns"] / 1e9,
        "cpu_total_all_threads_s": final["cpu_ticks_s"],
        "cpu_children_s": final["cpu_children_s"],  # switch mode: the rules check's iptables runs
        "load1_during": [min(s["load1"] for s in samples), statistics.median(s["load1"] for s in samples),
                         max(s["load1"] for s in samples)],
        "first_pass": classify(first),
        "halt_marker_reads": classify(marker_reads),
        "polls": len(idle_polls),
        "poll_requests": classify(idle_polls),
        "requests_total": classify(reqs),
        "cpu_per_poll_cycle_s": cycles,
        "cpu_idle_total_s": idle_cpu_total,
        "poll_interval_s": intervals,
        "sigterm_exit_s": agent.t_exit - t_term,
        "sigterm_exit_code": agent.code,
        "blog_still_serving_after_sigterm": still_serving,
        "agent_warnings": [line.strip()[:300] for line in open(log_path)
                           if " WARN " in line or " ERROR " in line],
    }
    log(f"  idle: peak RSS {final['hwm_kb'] / 1024:.1f} MiB, {len(idle_polls)} polls, "
        f"{classify(idle_polls)}, CPU {final['cpu_ns'] / 1e9:.3f}s total")


def dockerd_pid():
    try:
        with open("/var/run/docker.pid") as f:
            return f.read().strip()
    except OSError:
        return None


def meta():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception as e:  # noqa: BLE001
            return f"unknown ({e})"

    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    status, data = docker("GET", "/version")
    dv = json.loads(data) if status == 200 else {}
    st = os.stat(AGENT)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": sh("awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo"),
        "memory": mem,
        "kernel": sh("uname -sr"),
        "os": sh(". /etc/os-release && echo \"$PRETTY_NAME\""),
        "docker_engine": f"{dv.get('Version', '?')} (API {dv.get('ApiVersion', '?')})",
        "docker_cli": sh("docker version --format '{{.Client.Version}}'"),
        "awscli": sh("aws --version"),
        "agent_version": sh(f"{AGENT} --version"),
        "binary": AGENT,
        "build": os.environ.get("BENCH_BUILD_NOTE", ""),
        "commit": sh(f"git -C {ROOT} rev-parse --short=12 HEAD") + (" (dirty tree)" if sh(f"git -C {ROOT} status --porcelain -- src Cargo.toml Cargo.lock") else ""),
        "binary_bytes": st.st_size,
        "binary_file": sh(f"file -b {AGENT}"),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "dockerd_pid_start": dockerd_pid(),
        "runs": RUNS,
        "probe_every_ms": PROBE_EVERY * 1000,
        "probe_timeout_s": PROBE_TIMEOUT,
        "slow_s": SLOW,
    }


def setup_s3():
    """The S3 client for setup writes (straight to moto) and the benchmark bucket; the scratch
    Docker config dir the baseline script logs in with."""
    global S3
    os.makedirs(os.path.join(WORK, "docker-config"), exist_ok=True)
    S3 = boto3.client("s3", endpoint_url=MOTO)
    try:
        S3.head_bucket(Bucket=BUCKET)
    except Exception:  # noqa: BLE001
        S3.create_bucket(Bucket=BUCKET)


@contextlib.contextmanager
def docker_traced():
    """Runs bench/dockertrace.py for the block; yields (socket, log): a client with
    DOCKER_HOST=unix://socket has each Engine API call logged. On the way out, also removes this
    run's containers, images and registry tags."""
    sock, log_path = os.path.join(WORK, "docker.sock"), os.path.join(WORK, "docker-trace.log")
    open(log_path, "w").close()
    tracer = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "dockertrace.py"),
                               sock, log_path])
    try:
        wait_until("tracer socket", 10, lambda: os.path.exists(sock))
        cleanup_docker()
        yield sock, log_path
    finally:
        cleanup_docker()
        unpublish()
        tracer.terminate()
        tracer.wait(10)


def main():
    if sys.argv[1] == "--cleanup":  # bench/run.sh's exit trap: whatever a killed run left
        cleanup_docker()
        remove_chains(CHAINS)
        return
    out_path = sys.argv[1]
    setup_s3()
    t_start = time.monotonic()
    results = {"meta": meta()}
    cleanup_docker()
    random.seed()
    with open(ARP_SYSCTL) as f:
        arp_before = int(f.read())
    with open(ROUTE_LOCALNET) as f:
        route_localnet_before = int(f.read())
    remove_chains(CHAINS)
    # The host as blog-agent's package leaves it; the swap stage also measures the kernel default.
    set_arp_ms(packaged_arp_ms())
    results["meta"]["arp_ms"] = {"found": arp_before, "used": packaged_arp_ms()}
    try:
        sha, cfg, benv = stage_cold(results)
        stage_warm(results, sha, cfg, benv)
        state = stage_swap(results)
        drift_baseline = stage_drift_baseline(state)
        run_cfg = stage_drift(results, sha)  # its `run` container is the idle stage's host
        results["drift"]["baseline"] = drift_baseline
        stage_idle(results, run_cfg, sha)
        # The same host, the same window, with a staged rollout and the metrics textfile on: the
        # idle cost those features add (the published SHA is already applied, so no halt-marker
        # read; one textfile write per pass).
        stage_idle(results, fleet_features(run_cfg), sha, key="idle_fleet")
    finally:
        set_arp_ms(arp_before)
        cleanup_docker()
        unpublish()
        remove_chains(CHAINS)
        restore_route_localnet(route_localnet_before)
        results["meta"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        results["meta"]["dockerd_pid_end"] = dockerd_pid()
        results["meta"]["bench_seconds"] = time.monotonic() - t_start
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
        log(f"results: {out_path}")


if __name__ == "__main__":
    main()
