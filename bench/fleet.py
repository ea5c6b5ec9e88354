"""bench/fleet.py OUT_JSON: a fleet of N real `blog-agent run` processes on one machine, checked
against the 1,000-host model in docs/fleet.md.

Run through bench/fleet.sh, which starts the local stack and this script's venv and renders the
"Simulation at scale" section of docs/fleet.md from OUT_JSON (`bench/fleet.py --report OUT_JSON
DOC`).

Every host is its own container name, host port on 127.0.0.1, state dir, container label and
EC2 instance id (answered by its own port of the instance metadata stand-in in this process);
all read one release key in one bucket and pull one repository. The stages:

1. launch: every agent starts on a good release G1; time until each port serves it, ECR token
   calls against the model (at most one per host).
2. idle: S3 requests per second over the metrics textfiles against N / interval, and how moto
   answered them (304).
3. rollout: a good release G2 with `[rollout] spread`: when each host creates its first
   container of G2 (`docker events`) against its wave, published_at + seed x spread; the fleet
   finishes within spread + one interval; applies per minute against N / spread.
4. halt: a crashing release B with the same spread: how many hosts created a container of B
   against (halt_after - 1) + N x (detection + interval) / spread; the hosts' votes under
   `staging/halted/<B>/` (halted once `[rollout] halt_after`, the default 2, hosts voted), no
   operator's marker; every port still serves G2.

Everything talks to 127.0.0.1 only. Containers carry the label blog-agent-bench=fleet; the
agents' pids are written to WORK/agents.pid so bench/fleet.sh can stop them whatever happens
here. All waits are bounded.
"""

import hashlib
import http.server
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time

import page  # bench/page.py, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL = "blog-agent-bench"
LABEL_VALUE = "fleet"
HOST_LABEL = "blog-agent-bench-host"
REPO_NAME = "blog-fleet-bench"
BUCKET = "blog-fleet-bench"
KEY = "staging/stagebuild.txt"
HALT_PREFIX = "staging/halted/"
# `[rollout] halt_after`, the agent's default (the bench's config does not set it): distinct
# hosts' votes that halt a release.
HALT_AFTER = 2
IMDS_TOKEN = "fleet-bench-imds-token"
METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def log(*args):
    print(time.strftime("%H:%M:%S"), "fleet:", *args, file=sys.stderr, flush=True)


def seconds(text):
    """"5s", "2m", "90" -> seconds."""
    text = text.strip()
    unit = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    return float(text[:-1]) * unit if unit else float(text)


def seed(identity):
    """src/fleet/rollout.rs `seed`: first 8 bytes of SHA-256 big-endian, top 53 bits / 2^53."""
    first = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big")
    return (first >> 11) / float(1 << 53)


def wait_until(what, timeout, check, every=0.5):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() >= deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


# ---------------------------------------------------------------------------------------------
# Instance metadata: IMDSv2, one port per host, each answering its own instance id


class ImdsHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body="", extra=None):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        if self.path != "/latest/api/token":
            self.answer(404)
        elif ttl is None:
            self.answer(400)
        else:
            self.answer(200, IMDS_TOKEN, {"X-aws-ec2-metadata-token-ttl-seconds": ttl})

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
            self.answer(401)
        elif self.path == "/latest/meta-data/instance-id":
            self.answer(200, self.server.instance_id)
        else:
            self.answer(404)


def start_imds(instance_id):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImdsHandler)
    server.daemon_threads = True
    server.instance_id = instance_id
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---------------------------------------------------------------------------------------------
# The page each port serves, the metrics each agent writes


def served(port, timeout=5.0):
    """The version 127.0.0.1:PORT serves (a 200 naming a SHA), else None."""
    ok, version = page.get(port, timeout, "fleet-bench")
    return version if ok else None


def read_metrics(path):
    """{'name{labels}': value} from a textfile; {} when there is none yet."""
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


class Host:
    def __init__(self, i, work, agent, interval, spread):
        self.i = i
        self.name = f"bench-fleet-{i}"
        self.instance_id = "i-0" + hashlib.sha256(f"{BUCKET}-{i}".encode()).hexdigest()[:16]
        self.seed = seed(self.instance_id)
        self.dir = os.path.join(work, f"host-{i}")
        os.makedirs(os.path.join(self.dir, "metrics"), exist_ok=True)
        self.config = os.path.join(self.dir, "config.toml")
        self.metrics_path = os.path.join(self.dir, "metrics", "blog_agent.prom")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.agent = agent
        self.interval = interval
        self.spread = spread
        self.port = None
        self.imds = None
        self.proc = None
        # The credentials of this host's instance-profile session (`<role>:<instance id>`): a
        # vote is keyed by its writer's AWS caller identity, so hosts sharing one set of
        # credentials would share one vote.
        self.credentials = None

    def write_config(self, registry):
        with open(self.config, "w") as f:
            f.write(f"""[environment]
allowed = ["staging"]
[release]
bucket = "{BUCKET}"
[image]
repository = "{registry}/{REPO_NAME}"
[container]
name = "{self.name}"
ports = ["127.0.0.1:{self.port}:80"]
labels = {{ "{LABEL}" = "{LABEL_VALUE}", "{HOST_LABEL}" = "{self.i}" }}
stop_timeout = "1s"
[health]
url = "http://127.0.0.1:{self.port}/"
timeout = "30s"
[agent]
state_dir = "{os.path.join(self.dir, 'state')}"
[reconcile]
interval = "{self.interval:g}s"
[traffic]
mode = "publish"
[rollout]
spread = "{self.spread:g}s"
[metrics]
textfile = "{self.metrics_path}"
""")

    def start(self):
        env = dict(os.environ)
        for k in ("AWS_EC2_METADATA_DISABLED", "AWS_PROFILE", "RUST_LOG", "JOURNAL_STREAM", "NOTIFY_SOCKET"):
            env.pop(k, None)
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = f"http://127.0.0.1:{self.imds.server_address[1]}"
        env["AWS_ACCESS_KEY_ID"] = self.credentials["AccessKeyId"]
        env["AWS_SECRET_ACCESS_KEY"] = self.credentials["SecretAccessKey"]
        env["AWS_SESSION_TOKEN"] = self.credentials["SessionToken"]
        self.proc = subprocess.Popen(
            [self.agent, "--config", self.config, "--env", "staging", "run"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"), env=env,
        )

    def metrics(self):
        return read_metrics(self.metrics_path)

    def log_text(self):
        try:
            return open(self.log_path, errors="replace").read()
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------
# Docker events (container creations of the fleet, image pulls), machine load


class Events:
    """`docker events` from now on, as JSON lines in a file."""

    def __init__(self, path, filters):
        self.path = path
        since = str(int(time.time()) - 1)
        args = ["docker", "events", "--since", since, "--format", "{{json .}}"]
        for f in filters:
            args += ["--filter", f]
        self.proc = subprocess.Popen(args, stdout=open(path, "w"), stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def all(self):
        out = []
        for line in open(self.path):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            actor = e.get("Actor", {})
            out.append((e.get("timeNano", 0) / 1e9, {**actor.get("Attributes", {}), "id": actor.get("ID", "")}))
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cpu_ticks(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def rss_kb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def find_pids(pattern):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if re.search(pattern, cmd):
                pids.append(int(d))
    return pids


def machine_busy():
    """(busy, total) jiffies of all CPUs."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Load(threading.Thread):
    """Samples load average and available memory every 2 s; CPU per group at marks."""

    def __init__(self, agent_pids):
        super().__init__(daemon=True)
        self.agent_pids = agent_pids
        self.samples = []
        self.stop_flag = threading.Event()
        self.hz = os.sysconf("SC_CLK_TCK")
        self.groups = {
            "moto": find_pids(r"moto_server"),
            "dockerd+containerd": find_pids(r"^(dockerd|containerd)( |$)|^/usr/bin/containerd "),
            "registry": find_pids(r"^docker-registry serve"),
        }

    def run(self):
        while not self.stop_flag.is_set():
            load1 = float(open("/proc/loadavg").read().split()[0])
            avail = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemAvailable:"))
            self.samples.append((time.time(), load1, avail))
            self.stop_flag.wait(2)

    def mark(self):
        out = {"t": time.time(), "machine": machine_busy(), "agents": sum(cpu_ticks(p) for p in self.agent_pids())}
        for name, pids in self.groups.items():
            out[name] = sum(cpu_ticks(p) for p in pids)
        return out

    def cores(self, a, b):
        """CPU used between two marks, in cores."""
        wall = b["t"] - a["t"]
        out = {}
        for k in a:
            if k in ("t", "machine"):
                continue
            out[k] = round((b[k] - a[k]) / self.hz / wall, 3)
        busy = b["machine"][0] - a["machine"][0]
        total = b["machine"][1] - a["machine"][1]
        out["machine"] = round(busy / total * os.cpu_count(), 3) if total else None
        return out

    def between(self, t0, t1):
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:
            return {}
        return {"load1_max": max(x[1] for x in s), "mem_available_min_mib": round(min(x[2] for x in s) / 1024)}


# ---------------------------------------------------------------------------------------------
# The run


class Fleet:
    def __init__(self, out):
        self.out = out
        self.work = os.environ["FLEET_WORK"]
        self.agent = os.environ["FLEET_AGENT"]
        self.n = int(os.environ.get("FLEET_N", "120"))
        self.interval = seconds(os.environ.get("FLEET_INTERVAL", "5s"))
        self.spread = seconds(os.environ.get("FLEET_SPREAD", "60s"))
        self.idle = seconds(os.environ.get("FLEET_IDLE", "60s"))
        self.registry = os.environ["BLOG_AGENT_TEST_REGISTRY"]
        self.moto_log = os.path.join(os.environ["BLOG_AGENT_STACK_DIR"], "moto.log")
        import boto3

        self.s3 = boto3.client("s3")
        self.sts = boto3.client("sts")
        self.iam = boto3.client("iam")
        self.hosts = []
        self.results = {
            "n": self.n,
            "interval_s": self.interval,
            "spread_s": self.spread,
            "idle_s": self.idle,
            "cores": os.cpu_count(),
            "mem_total_gib": round(
                next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:")) / 1024 / 1024, 1),
            "load_before": open("/proc/loadavg").read().split()[:3],
            "agent_version": subprocess.run([self.agent, "--version"], capture_output=True, text=True).stdout.strip(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    # -- reading the fleet

    def sums(self):
        total = {"s3": 0.0, "ecr": 0.0, "ok": 0.0, "failed": 0.0, "rollbacks": 0.0}
        for h in self.hosts:
            m = h.metrics()
            total["s3"] += m.get("blog_agent_s3_requests_total", 0)
            total["ecr"] += m.get("blog_agent_ecr_calls_total", 0)
            total["ok"] += m.get('blog_agent_deploys_total{result="success"}', 0)
            total["failed"] += m.get('blog_agent_deploys_total{result="failure"}', 0)
            total["rollbacks"] += m.get("blog_agent_rollbacks_total", 0)
        return total

    def instance_profile(self, instance_id):
        """Credentials of a session of the hosts' role named `instance_id`, as EC2 gives an
        instance profile (the role is created first: moto names an unknown role's session with a
        new role id on every call)."""
        role = "bench-fleet-host"
        try:
            self.iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                        "Principal": {"Service": "ec2.amazonaws.com"}}]}))
        except self.iam.exceptions.EntityAlreadyExistsException:
            pass
        arn = f"arn:aws:iam::123456789012:role/{role}"
        return self.sts.assume_role(RoleArn=arn, RoleSessionName=instance_id)["Credentials"]

    def put_release(self, sha):
        self.s3.put_object(Bucket=BUCKET, Key=KEY, Body=(sha + "\n").encode(), ServerSideEncryption="aws:kms",
                           SSEKMSKeyId="ec0a605d-17e9-4ac8-a2e3-e299c1ee1a93")
        return self.s3.head_object(Bucket=BUCKET, Key=KEY)["LastModified"].timestamp()

    def marker(self, sha):
        """An operator's decisive marker `<prefix><sha>` (hosts never write one), or None."""
        try:
            body = self.s3.get_object(Bucket=BUCKET, Key=HALT_PREFIX + sha)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def vote_keys(self, sha):
        """The keys of the hosts' votes to halt sha, `<prefix><sha>/<caller identity>`: one listing
        (what the bench polls, so it adds one request per poll to moto's load, as the marker GET
        did)."""
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{HALT_PREFIX}{sha}/").get("Contents", [])
        return [o["Key"] for o in listed]

    def votes(self, sha):
        """The hosts' votes to halt sha, read."""
        return [json.loads(self.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in self.vote_keys(sha)]

    def halted(self, sha):
        return self.marker(sha) is not None or len(self.vote_keys(sha)) >= HALT_AFTER

    def publish(self, kind):
        sha = secrets.token_hex(20)
        subprocess.run(["bash", "scripts/publish-image.sh", sha, kind, self.registry, REPO_NAME], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
        return sha

    def wait_serving(self, sha, deadline):
        """{host index: first time its port served sha}; polls every port about once a second."""
        first = {}
        while len(first) < len(self.hosts) and time.time() < deadline:
            if self.halted(sha):
                raise RuntimeError(f"{sha} was halted: {self.marker(sha) or self.votes(sha)}")
            for h in self.hosts:
                if h.i not in first and served(h.port, timeout=3) == sha:
                    first[h.i] = time.time()
            for h in self.hosts:
                if h.proc.poll() is not None:
                    raise RuntimeError(f"{h.name}: agent exited with {h.proc.returncode}:\n{h.log_text()[-2000:]}")
            if len(first) < len(self.hosts):
                time.sleep(1)
        return first

    def first_creations(self, sha):
        """{host index: time of its first container creation of sha}, and all creations."""
        first, count = {}, 0
        for t, attrs in self.creations.all():
            if attrs.get("io.blog-agent.sha") != sha or attrs.get(LABEL) != LABEL_VALUE:
                continue
            count += 1
            i = int(attrs.get(HOST_LABEL, "-1"))
            first[i] = min(first.get(i, t), t)
        return first, count

    def pulls(self, sha):
        return [t for t, attrs in self.image_events.all() if attrs["id"].endswith(f"/{REPO_NAME}:{sha}")]

    def moto_offset(self):
        try:
            return os.path.getsize(self.moto_log)
        except OSError:
            return None

    def moto_statuses(self, start, end):
        """Status codes moto logged for the release key between two offsets of its log."""
        if start is None or end is None:
            return None
        counts = {}
        with open(self.moto_log, "rb") as f:
            f.seek(start)
            text = f.read(end - start).decode(errors="replace")
        for line in text.splitlines():
            if f"/{BUCKET}/{KEY}" in line:
                status = line.rsplit('"', 1)[-1].split()[0] if '"' in line else "?"
                counts[status] = counts.get(status, 0) + 1
        return counts

    # -- stages

    def setup(self):
        try:
            self.s3.head_bucket(Bucket=BUCKET)
        except Exception:
            self.s3.create_bucket(Bucket=BUCKET)
        for listing in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in listing.get("Contents", []):
                self.s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
        log("publishing three releases (good, good, crash)")
        self.g1, self.g2, self.bad = self.publish("good"), self.publish("good"), self.publish("crash")
        self.results["releases"] = {"g1": self.g1, "g2": self.g2, "bad": self.bad}
        self.put_release(self.g1)
        self.creations = Events(os.path.join(self.work, "creations.jsonl"), [
            "type=container", "event=create", f"label={LABEL}={LABEL_VALUE}"])
        self.image_events = Events(os.path.join(self.work, "pulls.jsonl"), ["type=image", "event=pull"])
        ports = page.free_ports(self.n)
        for i in range(self.n):
            h = Host(i, self.work, self.agent, self.interval, self.spread)
            h.port = ports[i]
            h.imds = start_imds(h.instance_id)
            h.credentials = self.instance_profile(h.instance_id)
            h.write_config(self.registry)
            self.hosts.append(h)
        self.load = Load(lambda: [h.proc.pid for h in self.hosts if h.proc])
        self.load.start()

    def stage_launch(self):
        log(f"1. launch: {self.n} agents on {self.g1[:12]}")
        mark = self.load.mark()
        t0 = time.time()
        with open(os.path.join(self.work, "agents.pid"), "w") as pidfile:
            for h in self.hosts:
                h.start()
                pidfile.write(f"{h.proc.pid}\n")
                pidfile.flush()
        first = self.wait_serving(self.g1, t0 + 300)
        t1 = time.time()
        if len(first) < self.n:
            raise RuntimeError(f"only {len(first)} of {self.n} hosts serve {self.g1} after 300 s")
        # Every agent's identity is its instance id (not this machine's id, the same for all).
        wait_until("every agent to log its rollout identity", 60, lambda: all(
            f"instance id {h.instance_id} (seed {h.seed:.3f})" in h.log_text() for h in self.hosts))
        wait_until("every agent's metrics to count its deploy", 120,
                   lambda: self.sums()["ok"] >= self.n and all(h.metrics() for h in self.hosts))
        sums = self.sums()
        times = [t - t0 for t in first.values()]
        self.results["launch"] = {
            "all_serving_s": round(max(times), 1),
            "first_serving_s": round(min(times), 1),
            "median_serving_s": round(percentile(times, 50), 1),
            "ecr_calls": sums["ecr"],
            "ecr_model_max": self.n,
            "pulls": len(self.pulls(self.g1)),
            "deploys_ok": sums["ok"],
            "deploys_failed": sums["failed"],
            "cpu_cores": self.load.cores(mark, self.load.mark()),
            **self.load.between(t0, t1),
        }
        log("   ", json.dumps(self.results["launch"]))

    def stage_idle(self):
        log(f"2. idle: {self.idle:.0f} s")
        time.sleep(2 * self.interval)  # the launch's last passes settle
        rss = [rss_kb(h.proc.pid) for h in self.hosts]
        a, mark, off, t0 = self.sums(), self.load.mark(), self.moto_offset(), time.time()
        time.sleep(self.idle)
        b, mark2, off2, t1 = self.sums(), self.load.mark(), self.moto_offset(), time.time()
        wall = t1 - t0
        statuses = self.moto_statuses(off, off2)
        self.results["idle"] = {
            "window_s": round(wall, 1),
            "s3_requests": b["s3"] - a["s3"],
            "s3_per_s": round((b["s3"] - a["s3"]) / wall, 2),
            "s3_per_s_model": round(self.n / self.interval, 2),
            "moto_statuses": statuses,
            "ecr_calls": b["ecr"] - a["ecr"],
            "deploys": (b["ok"] + b["failed"]) - (a["ok"] + a["failed"]),
            "agent_rss_mib_total": round(sum(rss) / 1024),
            "agent_rss_mib_max": round(max(rss) / 1024, 1),
            "cpu_cores": self.load.cores(mark, mark2),
            **self.load.between(t0, t1),
        }
        log("   ", json.dumps(self.results["idle"]))

    def stage_rollout(self):
        log(f"3. rollout: {self.g2[:12]} over {self.spread:.0f} s")
        a, mark = self.sums(), self.load.mark()
        t_pub = self.put_release(self.g2)
        t_put = time.time()
        deadline = t_pub + self.spread + self.interval + 120
        first = self.wait_serving(self.g2, deadline)
        t1 = time.time()
        time.sleep(2)
        created, creations = self.first_creations(self.g2)
        b = self.sums()
        late = {}
        for h in self.hosts:
            if h.i in created:
                late[h.i] = created[h.i] - (t_pub + h.seed * self.spread)
        early = [i for i, d in late.items() if d < -0.2]
        serve_after_pub = [t - t_pub for t in first.values()]
        # Applies (a real host's pull) per 15 s bin from publication, as a per-minute rate.
        bins = {}
        for t in created.values():
            k = int((t - t_pub) // 15)
            bins[k] = bins.get(k, 0) + 1
        per_minute = [bins.get(k, 0) * 4 for k in range(0, max(bins) + 1)] if bins else []
        polls = (t1 - t_put) / self.interval * self.n
        self.results["rollout"] = {
            "published_at": t_pub,
            "hosts_serving": len(first),
            "hosts_created": len(created),
            "creations": creations,
            "fleet_done_s": round(max(serve_after_pub), 1) if serve_after_pub else None,
            "fleet_done_model_s": self.spread + self.interval,
            "first_apply_s": round(min(created.values()) - t_pub, 1) if created else None,
            "late_s": {"min": round(min(late.values()), 2), "median": round(percentile(list(late.values()), 50), 2),
                       "p95": round(percentile(list(late.values()), 95), 2), "max": round(max(late.values()), 2)},
            "before_wave": len(early),
            "order_kendall": order_agreement(self.hosts, created),
            "applies_per_minute_15s_bins": per_minute,
            "applies_per_minute_model": round(self.n / self.spread * 60, 1),
            "pulls": len(self.pulls(self.g2)),
            "ecr_calls": b["ecr"] - a["ecr"],
            "s3_requests": b["s3"] - a["s3"],
            "s3_requests_model": round(polls + 2 * self.n),
            "deploys_ok": b["ok"] - a["ok"],
            "deploys_failed": b["failed"] - a["failed"],
            "cpu_cores": self.load.cores(mark, self.load.mark()),
            **self.load.between(t_put, t1),
        }
        if len(first) < self.n:
            raise RuntimeError(f"only {len(first)} of {self.n} hosts serve {self.g2}: {self.results['rollout']}")
        log("   ", json.dumps(self.results["rollout"]))

    def stage_halt(self):
        log(f"4. halt: crashing {self.bad[:12]} over {self.spread:.0f} s")
        a, mark = self.sums(), self.load.mark()
        prober = SiteProber(self.hosts, self.g2)
        prober.start()
        t_pub = self.put_release(self.bad)
        t_put = time.time()
        # When the first vote appeared, and when the halt_after-th did (the release is halted).
        seen = {}

        def count_votes():
            for k in range(1, len(self.vote_keys(self.bad)) + 1):
                seen.setdefault(k, time.time())
            return seen.get(HALT_AFTER)

        halted_at = wait_until(f"{HALT_AFTER} hosts' halt votes", self.spread + self.interval + 120, count_votes,
                               every=0.25)
        first_vote = seen[1]
        # Every wave opens, plus one interval and a margin for the host's read of the votes.
        last_wave = t_pub + max(h.seed for h in self.hosts) * self.spread
        wait_until("every wave to open", self.spread + 60, lambda: time.time() >= last_wave + self.interval + 5)
        halted_key = f'blog_agent_halted{{sha="{self.bad}"}}'
        know = wait_until("every host to know the release is halted", 120,
                          lambda: sum(1 for h in self.hosts if h.metrics().get(halted_key) == 1) == self.n and self.n)
        t1 = time.time()
        prober.stop()
        created, creations = self.first_creations(self.bad)
        b = self.sums()
        tried = sorted(created, key=lambda i: created[i])
        first_try = created[tried[0]] if tried else None
        detection = first_vote - first_try if first_try else None
        first_wave = t_pub + min(h.seed for h in self.hosts) * self.spread
        waves = sorted(t_pub + h.seed * self.spread for h in self.hosts)
        model = (HALT_AFTER - 1 + self.n * (detection + self.interval) / self.spread
                 if detection is not None else None)
        votes = self.votes(self.bad)
        self.results["halt"] = {
            "published_at": t_pub,
            "hosts_tried": len(tried),
            "creations": creations,
            "tried_seeds": [round(next(h.seed for h in self.hosts if h.i == i), 4) for i in tried],
            "detection_s": round(detection, 1) if detection is not None else None,
            "halt_after": HALT_AFTER,
            "halted_after_first_wave_s": round(halted_at - first_wave, 1),
            "halted_after_first_vote_s": round(halted_at - first_vote, 1),
            "model_hosts": round(model, 1) if model is not None else None,
            "waves_open_before_halt": sum(1 for w in waves if w < halted_at),
            "waves_open_before_halt_minus_interval": sum(1 for w in waves if w < halted_at - self.interval),
            "votes": [{k: v.get(k) for k in ("instance_id", "verdict", "rolled_back_to", "evidence")} for v in votes],
            "voters_tried_it": all(any(h.instance_id == v.get("instance_id") and h.i in created for h in self.hosts)
                                   for v in votes),
            "votes_rolled_back_to_g2": bool(votes) and all(v.get("rolled_back_to") == self.g2 for v in votes),
            "operator_marker": self.marker(self.bad) is not None,
            "hosts_knowing_halt": know,
            "probe_rounds": prober.rounds,
            "probe_requests": prober.requests,
            "probe_failures": prober.failures,
            "probe_failure_examples": prober.examples[:5],
            "deploys_failed": b["failed"] - a["failed"],
            "rollbacks": b["rollbacks"] - a["rollbacks"],
            "ecr_calls": b["ecr"] - a["ecr"],
            "pulls": len(self.pulls(self.bad)),
            "cpu_cores": self.load.cores(mark, self.load.mark()),
            **self.load.between(t_put, t1),
        }
        serving = {h.i: served(h.port) for h in self.hosts}
        self.results["final"] = {
            "serving_g2": sum(1 for v in serving.values() if v == self.g2),
            "not_serving_g2": {self.hosts[i].name: v for i, v in serving.items() if v != self.g2},
        }
        log("   ", json.dumps(self.results["halt"]))
        log("   ", json.dumps(self.results["final"]))

    def run(self):
        try:
            self.setup()
            self.stage_launch()
            self.stage_idle()
            self.stage_rollout()
            self.stage_halt()
            self.results["ok"] = True
            record_trial(os.environ.get("FLEET_TRIALS"), self.results)
        except Exception as e:
            self.results["ok"] = False
            self.results["error"] = str(e)
            raise
        finally:
            self.results["load_after"] = open("/proc/loadavg").read().split()[:3]
            if hasattr(self, "load"):
                self.load.stop_flag.set()
                s = self.load.samples
                if s:
                    self.results["load1_max"] = max(x[1] for x in s)
                    self.results["mem_available_min_mib"] = round(min(x[2] for x in s) / 1024)
            self.stop_agents()
            for ev in (getattr(self, "creations", None), getattr(self, "image_events", None)):
                if ev:
                    ev.stop()
            self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.out, "w") as f:
                json.dump(self.results, f, indent=2)
            log(f"results in {self.out}")

    def stop_agents(self):
        procs = [h.proc for h in self.hosts if h.proc and h.proc.poll() is None]
        for p in procs:
            p.terminate()
        deadline = time.time() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        warnings = []
        for h in self.hosts:
            for line in h.log_text().splitlines():
                if " ERROR " in line or "panicked" in line:
                    warnings.append(f"{h.name}: {line.strip()[:300]}")
        self.results["agent_errors"] = warnings[:20]
        self.results["agent_error_count"] = len(warnings)


def trial_summary(r):
    """The figures that show how much of this machine a fleet of r["n"] hosts takes."""
    roll = r["rollout"]
    return {
        "n": r["n"], "interval_s": r["interval_s"], "spread_s": r["spread_s"], "started": r["started"],
        "launch_all_serving_s": r["launch"]["all_serving_s"],
        "launch_load1_max": r["launch"].get("load1_max"),
        "idle_cpu_cores": r["idle"]["cpu_cores"]["machine"],
        "idle_moto_cores": r["idle"]["cpu_cores"]["moto"],
        "idle_s3_per_s": r["idle"]["s3_per_s"],
        "agent_rss_mib_total": r["idle"]["agent_rss_mib_total"],
        "rollout_cpu_cores": roll["cpu_cores"]["machine"],
        "rollout_done_s": roll["fleet_done_s"],
        "rollout_done_model_s": roll["fleet_done_model_s"],
        "rollout_late_max_s": roll["late_s"]["max"],
        "rollout_s3": roll["s3_requests"], "rollout_s3_model": roll["s3_requests_model"],
        "halt_hosts_tried": r["halt"]["hosts_tried"],
    }


def record_trial(path, r):
    """Keeps the last summary of each fleet size in `path` (JSON), for the section's sizing table."""
    if not path:
        return
    try:
        trials = json.load(open(path))
    except (OSError, ValueError):
        trials = {}
    trials[str(r["n"])] = trial_summary(r)
    with open(path, "w") as f:
        json.dump(trials, f, indent=2)


def order_agreement(hosts, created):
    """Share of host pairs whose apply order follows their seed order (1.0: all of them)."""
    seeds = {h.i: h.seed for h in hosts if h.i in created}
    keys = list(seeds)
    agree = total = 0
    for x in range(len(keys)):
        for y in range(x + 1, len(keys)):
            i, j = keys[x], keys[y]
            total += 1
            agree += (seeds[i] < seeds[j]) == (created[i] < created[j])
    return round(agree / total, 3) if total else None


class SiteProber(threading.Thread):
    """GETs every port in turn for as long as it runs: each must serve `sha`."""

    def __init__(self, hosts, sha):
        super().__init__(daemon=True)
        self.hosts, self.sha = hosts, sha
        self.stop_flag = threading.Event()
        self.rounds = self.requests = self.failures = 0
        self.examples = []

    def run(self):
        while not self.stop_flag.is_set():
            for h in self.hosts:
                got = served(h.port)
                self.requests += 1
                if got != self.sha:
                    self.failures += 1
                    self.examples.append(f"{time.strftime('%H:%M:%S')} {h.name}: {got}")
            self.rounds += 1
            self.stop_flag.wait(0.5)

    def stop(self):
        self.stop_flag.set()
        self.join(30)


# ---------------------------------------------------------------------------------------------
# The docs section

SECTION = "## Simulation at scale"


def render(r, trials=None):
    launch, idle, roll, halt, final = r["launch"], r["idle"], r["rollout"], r["halt"], r["final"]
    n, interval, spread = r["n"], r["interval_s"], r["spread_s"]
    statuses = idle.get("moto_statuses") or {}
    answered = sum(statuses.values())
    ratio = lambda m, s: f"{m:g} / {s:g}"  # noqa: E731
    per_min = roll["applies_per_minute_15s_bins"]
    spread_bins = per_min[: max(1, int(spread // 15))]
    lines = [
        f"`bash bench/fleet.sh` runs **{n} hosts** of the real static binary on this machine, the way",
        "`tests/fleet_rollout.rs` runs six: each its own `blog-agent run` process, container name, host",
        "port on 127.0.0.1, state dir and container label, and its own EC2 instance id (so its own seed)",
        "through its own port of an instance metadata stand-in; all read one release key in one bucket",
        "(moto) and pull one repository (the local registry, with moto's ECR token).",
        f"`[reconcile] interval = \"{interval:g}s\"`, `[rollout] spread = \"{spread:g}s\"`, publish mode, a",
        f"{r['idle_s']:g} s idle window. Machine: {r['cores']} cores, {r['mem_total_gib']:g} GiB; load average",
        f"{' / '.join(r['load_before'])} before, peak 1-minute load {r.get('load1_max')}, at least",
        f"{r.get('mem_available_min_mib')} MiB available throughout ({r['agent_version']}, {r['started']}).",
        "",
        f"| what | model ({n} hosts) | measured |",
        "|---|---|---|",
        f"| launch on G1: every port serves it | (pull + probe, all at once) | first {launch['first_serving_s']} s, "
        f"median {launch['median_serving_s']} s, all {launch['all_serving_s']} s |",
        f"| launch: ECR `GetAuthorizationToken` calls | at most 1 per host: ≤ {n} | {launch['ecr_calls']:g} |",
        f"| idle: S3 requests per second (sum of `blog_agent_s3_requests_total`) | N / interval = "
        f"{ratio(n, interval)} = {idle['s3_per_s_model']:g} | {idle['s3_per_s']:g} ({idle['s3_requests']:g} in "
        f"{idle['window_s']:g} s) |",
        "| idle: how moto answered the release key | all 304 | "
        + (", ".join(f"{v} x {k}" for k, v in sorted(statuses.items())) if answered else "(moto log not read)")
        + " |",
        f"| idle: ECR calls, deploys | 0, 0 | {idle['ecr_calls']:g}, {idle['deploys']:g} |",
        f"| rollout of G2: hosts that apply it | {n} | {roll['hosts_created']} (all serve it: "
        f"{roll['hosts_serving']}) |",
        f"| rollout: applied before its wave (published_at + seed x spread) | 0 | {roll['before_wave']} |",
        f"| rollout: first container of G2 after its wave | within one interval ({interval:g} s) | min "
        f"{roll['late_s']['min']} s, median {roll['late_s']['median']} s, p95 {roll['late_s']['p95']} s, max "
        f"{roll['late_s']['max']} s |",
        f"| rollout: pairs of hosts applying in seed order | 1.0 | {roll['order_kendall']} |",
        f"| rollout: the whole fleet serves G2 (seen at the page: a round of GETs and a publish-mode swap take "
        f"about a second each) | within spread + one interval = {roll['fleet_done_model_s']:g} s "
        f"| {roll['fleet_done_s']} s |",
        f"| rollout: applies (a real host's pulls) per minute, 15 s bins | N / spread = "
        f"{roll['applies_per_minute_model']:g} | {', '.join(str(x) for x in spread_bins)}"
        + (f" (then {', '.join(str(x) for x in per_min[len(spread_bins):])})" if per_min[len(spread_bins):] else "")
        + " |",
        f"| rollout: S3 requests | polls + 2 halt reads (one listing each) per host = {roll['s3_requests_model']} | "
        f"{roll['s3_requests']:g} |",
        f"| rollout: ECR calls, image pulls from the registry | ≤ {n} (one dockerd here: see below) | "
        f"{roll['ecr_calls']:g}, {roll['pulls']} |",
        f"| crashing release B: hosts that created a container of it | (halt_after - 1) + N x (detection + "
        f"interval) / spread = {halt['halt_after'] - 1} + {n} x ({halt['detection_s']} + {interval:g}) / {spread:g} "
        f"= {halt['model_hosts']} | **{halt['hosts_tried']}** (seed {', '.join(f'{s:.4f}' for s in halt['tried_seeds'])}) |",
        f"| B: detection: its first container to the first vote | 10-40 s on EC2 (pull + probe) | "
        f"{halt['detection_s']} s |",
        f"| B: halted ({halt['halt_after']} votes): after the first vote (after the first wave) | the next voter's wave "
        f"+ detection | {halt['halted_after_first_vote_s']} s ({halt['halted_after_first_wave_s']} s) |",
        f"| B: waves open before it was halted (bounds on who can try it) | | "
        f"{halt['waves_open_before_halt_minus_interval']}-{halt['waves_open_before_halt']} |",
        f"| B: votes `staging/halted/<sha>/<caller identity>` | ≥ {halt['halt_after']}, each by a host that tried it, "
        f"rolled back to G2; no operator's marker | {len(halt['votes'])} "
        f"({', '.join(sorted({v['verdict'] for v in halt['votes']}))}), by hosts that tried it: "
        f"{'yes' if halt['voters_tried_it'] else 'no'}, rolled back to G2: "
        f"{'yes' if halt['votes_rolled_back_to_g2'] else 'no'}; marker: "
        f"{'yes' if halt['operator_marker'] else 'none'} |",
        f"| B: hosts that know it is halted (`blog_agent_halted`) | {n} | {halt['hosts_knowing_halt']} |",
        f"| B: GETs of every port during B's rollout not answered by G2 | 0 | {halt['probe_failures']} of "
        f"{halt['probe_requests']} |",
        f"| after B: ports serving G2 | {n} | {final['serving_g2']} |",
        "",
        f"CPU in cores (of {r['cores']}) by stage, the whole machine (the agents, moto, dockerd and containerd):",
        *(f"{name} {c.get('machine')} ({c.get('agents')}, {c.get('moto')}, {c.get('dockerd+containerd')});"
          for name, c in (("launch", launch["cpu_cores"]), ("idle", idle["cpu_cores"]),
                          ("rollout", roll["cpu_cores"]), ("halt", halt["cpu_cores"]))),
        f"the rest is runc, the container shims and Docker's port proxies. The {n} agents hold",
        f"{idle['agent_rss_mib_total']} MiB resident in all (at most {idle['agent_rss_mib_max']} MiB each).",
        "",
        f"The crashing release reached {halt['hosts_tried']} host{'' if halt['hosts_tried'] == 1 else 's'} "
        f"where the model's formula says {halt['model_hosts']}. It is halted by the vote of the",
        f"{halt['halt_after']} hosts `halt_after` asks for, so only hosts whose wave opened before that last "
        "vote can try it:",
        f"the {halt['halt_after'] - 1} before the last voter, and N x (the last voter's wait for its next poll +",
        f"detection) / spread more, {halt['waves_open_before_halt']} waves here. Of those, a host tries it only "
        "if its own first poll after its",
        "wave also comes before the halt. So the formula, which adds a whole interval for every host, is",
        f"an upper bound. Detection is {halt['detection_s']} s here because the image is on local disk and "
        "the container",
        "exits at once. On EC2, with 10-40 s of detection, proportionally more hosts try it.",
        "",
        "All hosts share one dockerd: the first host to apply a release pulls it, the others find the",
        "image on disk and skip the pull and the token (so the registry saw "
        f"{roll['pulls']} pull(s) of G2 and ECR {roll['ecr_calls']:g} call(s)).",
        "On a fleet every host pulls once, at the moment it applies: the applies per minute above are",
        f"the pulls per minute of a real fleet. At launch the {launch['pulls']} hosts that got to the pull "
        "before the image",
        f"was on disk pulled it, and took {launch['ecr_calls']:g} token(s): one each, as the model says.",
    ]
    if trials:
        lines += [
            "",
            "**What limits N here.** The last run of each size (same interval and spread unless shown):",
            "",
            "| hosts | launch: all serve | idle: machine CPU (moto) | idle: S3/s | agents' RSS | rollout: machine "
            "CPU | rollout: fleet done (model) | rollout: latest apply after wave | rollout: S3 requests (model) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for t in sorted(trials.values(), key=lambda t: t["n"]):
            params = "" if (t["interval_s"], t["spread_s"]) == (interval, spread) else \
                f" ({t['interval_s']:g} s / {t['spread_s']:g} s)"
            lines.append(
                f"| {t['n']}{params} | {t['launch_all_serving_s']} s | {t['idle_cpu_cores']} cores "
                f"({t['idle_moto_cores']}) | {t['idle_s3_per_s']} | {t['agent_rss_mib_total']} MiB | "
                f"{t['rollout_cpu_cores']} of {r['cores']} cores | {t['rollout_done_s']} s "
                f"({t['rollout_done_model_s']:g} s) | {t['rollout_late_max_s']} s | {t['rollout_s3']:g} "
                f"({t['rollout_s3_model']}) |")
        lines += [
            "",
            "Memory (about 8 MiB per agent) and moto (one Python process, "
            f"{idle['cpu_cores']['moto']} of a core for {idle['s3_per_s']:g} conditional GETs a second)",
            "are far from their limits. The limit is CPU during a rollout: every apply is a container",
            "created, started and probed twice (candidate, then the published one), which on 2 cores is",
            "what the rollout CPU column shows. Where it reaches the machine's cores the passes stretch: the",
            "fleet finishes later than spread + one interval and the agents poll less often than the",
            "interval (the S3 column falls short of the model). The default N is the largest size that",
            "stays clear of that; a longer spread carries more hosts (the apply rate is N / spread).",
        ]
    return "\n".join(lines) + "\n"


def write_doc(results_path, doc, trials_path=None):
    r = json.load(open(results_path))
    try:
        trials = json.load(open(trials_path)) if trials_path else None
    except (OSError, ValueError):
        trials = None
    if not r.get("ok"):
        raise SystemExit(f"fleet: the last run failed ({r.get('error')}); not rendering {doc}")
    text = open(doc).read()
    body = render(r, trials)
    start = text.find(f"\n{SECTION}\n")
    if start >= 0:
        rest = text.find("\n## ", start + 1)
        text = text[: start + 1] + f"{SECTION}\n\n{body}" + (text[rest:] if rest >= 0 else "")
    else:
        gate = text.find("\n## Launch gate\n")
        if gate < 0:
            raise SystemExit(f"fleet: no '## Launch gate' section in {doc} to put the section before")
        text = text[: gate + 1] + f"{SECTION}\n\n{body}" + text[gate:]
    open(doc, "w").write(text)
    log(f"wrote the '{SECTION}' section of {doc}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:
        write_doc(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        Fleet(sys.argv[1]).run()
