"""bench/swap.py RESULTS_DIR [--cases A,B] [--runs N] | --cleanup: the release swap under load,
blog-agent `[traffic] mode = "switch"` against `mode = "publish"` and the user-data script
(bench/baseline.sh). Run through bench/swap.sh, which sets up the stack, the venv and the
counting proxy, and renders the results with bench/swap_report.py.

Each case is an image and a traffic path; each run of a case swaps every tool once (tools
interleaved, rotated run by run): the host serves version A (deployed by the tool itself, alone
among the benchmark containers, not measured), the load client starts (bench/swap_client.py), a
new SHA B (not on the host: the swap includes its pull) is written to S3 and the tool runs at
once (blog-agent: `sync`; the script: the whole script). Results go to RESULTS_DIR/swap-CASE.json.

What it may touch, and how it is cleaned up (also by --cleanup, which bench/swap.sh runs on exit):
- containers labelled blog-agent-bench=1 and images/tags of 127.0.0.1:5000/blog-bench (bench.py's);
- netfilter chains with the prefix BENCH-SW (the switch-mode agent's `[traffic] chains`): the jumps
  into them from the built-in chains and DOCKER-USER are deleted, then the chains;
- network namespaces `bench-sw-*` and veth links `bsw*h`, with a private /30 in 10.214.0.0/16 that
  no interface or route on the host uses;
- docker0's ARP retransmit time (set to the packaged 100 ms, or the kernel's 1000 ms for the
  arp1000 case) and route_localnet (the agent sets it to 1 in switch mode): both put back to what
  was found at the start (route_localnet only if no other loopback masquerade out of docker0
  remains, as the agent's own removal does).
Traffic goes only to 127.0.0.1, to the veth address inside the namespace path, and (the agent's
probes) to the containers' bridge addresses. Every loop is bounded.
"""

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402  (needs BENCH_WORK, BENCH_PROXY_PORT, BENCH_PROXY_LOG, BENCH_AGENT)

CHAINS = "BENCH-SW"  # the switch-mode agent's chain prefix: BENCH-SW-DNAT, -POST, -FWD, -IN
PUB_CHAINS = "BENCH-SWPUB"  # publish mode never creates chains; a prefix of its own all the same
NS_PREFIX, LINK_PREFIX = "bench-sw-", "bsw"
CLIENT = os.path.join(HERE, "swap_client.py")
PYTHON = "/usr/bin/python3"  # the client needs only the standard library
EVERY, TIMEOUT = 0.010, 1.0  # the client: a GET every 10 ms, 1 s timeout
LATE = 0.100  # a 200 more than this slower than the median is "late" (the measure)
STATE = os.path.join(B.WORK, "swap-host-state.json")  # what the host had before: put back by cleanup
APACHE_BASE = "blog-agent-test/apache:latest"
ARP_SYSCTL = B.ARP_SYSCTL
ROUTE_LOCALNET = "/proc/sys/net/ipv4/conf/docker0/route_localnet"
TOOLS = ("switch", "publish", "script")

# case: image, path, tools, loads, docker0 ARP (None: as packaged)
CASES = {
    "busybox-loopback": {"image": "busybox", "path": "loopback", "tools": TOOLS, "loads": ["newconn"]},
    "busybox-loopback-arp1000": {"image": "busybox", "path": "loopback", "tools": ("switch",), "loads": ["newconn"],
                                 "arp_ms": 1000},
    "busybox-loopback-stop10s": {"image": "busybox", "path": "loopback", "tools": ("switch",), "loads": ["newconn"],
                                 "stop_timeout": "10s"},
    "apache-loopback": {"image": "apache", "path": "loopback", "tools": TOOLS, "loads": ["newconn", "keepalive", "slow"]},
    "apache-loopback-noslow": {"image": "apache", "path": "loopback", "tools": TOOLS, "loads": ["newconn", "keepalive"]},
    "busybox-veth": {"image": "busybox", "path": "veth", "tools": TOOLS, "loads": ["newconn"]},
    "apache-veth": {"image": "apache", "path": "veth", "tools": TOOLS, "loads": ["newconn", "keepalive", "slow"]},
}


def log(*args):
    B.log(*args)


def sh(*argv, check=True, timeout=60, input=None):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()[:300]}")
    return out.stdout


def read_int(path):
    with open(path) as f:
        return int(f.read().strip())


def write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


# ---------------------------------------------------------------------------------------------
# Host state: saved once, put back by cleanup


def save_host_state():
    if os.path.exists(STATE):  # an interrupted earlier run: its saved values are the host's
        return
    with open(STATE, "w") as f:
        json.dump({"arp_ms": read_int(ARP_SYSCTL), "route_localnet": read_int(ROUTE_LOCALNET)}, f)


def remove_chains():
    """Deletes every jump into BENCH-SW* chains, then flushes and deletes the chains (nat first)."""
    B.remove_chains(CHAINS)


def remove_namespaces():
    for line in sh("ip", "-o", "link", "show", "type", "veth").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(LINK_PREFIX) and name.endswith("h"):
            sh("ip", "link", "del", name, check=False)
    for line in sh("ip", "netns", "list").splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(NS_PREFIX):
            sh("ip", "netns", "del", ns, check=False)


def restore_host_state():
    if not os.path.exists(STATE):
        return
    with open(STATE) as f:
        st = json.load(f)
    write(ARP_SYSCTL, st["arp_ms"])
    B.restore_route_localnet(st["route_localnet"])
    os.remove(STATE)


def cleanup():
    errors = []
    for what, fn in (("containers and images", B.cleanup_docker), ("registry tags", B.unpublish),
                     ("chains", remove_chains), ("namespaces", remove_namespaces),
                     ("host settings", restore_host_state)):
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (clean up everything else all the same)
            errors.append(f"{what}: {e}")
            log(f"cleanup: {what}: {e}")
    leftovers = {
        "containers": [c["Names"][0] for c in B.containers()],
        "chains": [line for t in ("nat", "filter") for line in sh("iptables", "-w", "5", "-t", t, "-S").splitlines()
                   if CHAINS in line],
        "namespaces": [line for line in sh("ip", "netns", "list").splitlines() if line.startswith(NS_PREFIX)],
    }
    if any(leftovers.values()):
        errors.append(f"left over: {leftovers}")
        log(f"cleanup: LEFT OVER: {leftovers}")
    return errors


# ---------------------------------------------------------------------------------------------
# The namespace client path (b)


class Namespace:
    """A network namespace with a veth pair to the host; the host end has a /30 address in
    10.214.0.0/16 that no interface or route on this host uses."""

    def __init__(self):
        self.ns = f"{NS_PREFIX}{B.RUN_ID}"
        self.link = f"{LINK_PREFIX}{B.RUN_ID}h"
        used = sh("ip", "-4", "addr") + sh("ip", "-4", "route")
        k = next(k for k in range(10, 250) if f"10.214.{k}." not in used)
        self.host, self.client = f"10.214.{k}.1", f"10.214.{k}.2"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host}/30", "dev", self.link)
        sh("ip", "link", "set", self.link, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{self.client}/30", "dev", "eth0")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "route", "add", "default", "via", self.host)
        log(f"namespace {self.ns}: client {self.client} -> host {self.host} over {self.link}")

    def remove(self):
        sh("ip", "link", "del", self.link, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


# ---------------------------------------------------------------------------------------------
# Images


def publish(image):
    if image == "busybox":
        return B.publish()
    sha = os.urandom(20).hex()
    B.PUBLISHED.append(sha)
    ref = B.ref(sha)
    ctx = os.path.join(B.WORK, f"apache-{sha[:12]}")
    os.makedirs(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(f"FROM {APACHE_BASE}\nENV BLOG_VERSION={sha}\n")
    sh("docker", "login", "-u", B.REG_USER, "--password-stdin", B.REGISTRY, input=B.REG_PASSWORD)
    sh("docker", "build", "-q", "-t", ref, ctx, timeout=300)
    sh("docker", "push", "-q", ref, timeout=300)
    sh("docker", "rmi", ref)
    return sha


# ---------------------------------------------------------------------------------------------
# The tools


def agent_config(name, ports, health_port, key, mode, stop_timeout):
    path = os.path.join(B.WORK, f"{name}.toml")
    state = os.path.join(B.WORK, "state", name)
    lines = [
        "[environment]", 'name = "bench"', 'allowed = ["bench"]',
        "[release]", f'bucket = "{B.BUCKET}"',
        "[release.keys]", f'bench = "{key}"',
        "[image]", f'repository = "{B.REPO}"',
        "[container]", f'name = "{name}"', "ports = [" + ", ".join(f'"{p}"' for p in ports) + "]",
        f'labels = {{ "{B.LABEL}" = "1", "{B.LABEL}-run" = "{B.RUN_ID}" }}',
        f'stop_timeout = "{stop_timeout}"',
        "[health]", f'url = "http://127.0.0.1:{health_port}/"', 'timeout = "30s"',
        "[agent]", f'state_dir = "{state}"',
        "[traffic]", f'mode = "{mode}"', f'chains = "{CHAINS if mode == "switch" else PUB_CHAINS}"',
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class Tool:
    def __init__(self, case_id, tool, case, ns):
        self.tool = tool
        self.port = B.free_port()
        self.key = f"bench/swapsw-{case_id}-{tool}.txt"
        self.name = f"blogbench-{B.RUN_ID}-{case_id}-{tool}"
        addrs = ["127.0.0.1"] + ([ns.host] if ns else [])
        self.ports = [f"{a}:{self.port}:80" for a in addrs]
        self.target = f"{ns.host if ns else '127.0.0.1'}:{self.port}"
        self.stop_timeout = case.get("stop_timeout", "3s")
        if tool == "script":
            self.env = {"BLOG_BUCKET": B.BUCKET, "BLOG_KEY": self.key, "BLOG_REPOSITORY": B.REPO,
                        "BLOG_NAME": self.name, "BLOG_PORTS": " ".join(self.ports),
                        "BLOG_LABELS": f"{B.LABEL}=1 {B.LABEL}-run={B.RUN_ID}"}
        else:
            self.config = agent_config(self.name, self.ports, self.port, self.key, tool, self.stop_timeout)
        self.pair = (publish(case["image"]), publish(case["image"]))
        self.current = None

    def start(self, logname):
        path = os.path.join(B.WORK, logname)
        if self.tool == "script":
            return B.Proc(["bash", B.BASELINE], path, B.tool_env(self.env))
        argv = [B.AGENT, "--config", self.config, "--log-format", "json", "--log-target", "stderr", "sync"]
        return B.Proc(argv, path, B.tool_env())


def alone_serving(tool, version, case_id):
    """Removes every benchmark container, then has the tool deploy `version` (not measured): its
    container is the only benchmark one on docker0 when the measured swap starts."""
    for c in B.containers():
        B.remove_container(c["Id"])
    B.put_release(tool.key, version)
    p = tool.start(f"swap-{case_id}-{tool.tool}-setup.log").wait(120)
    if p.code != 0:
        raise RuntimeError(f"{tool.tool}: deploying {version[:12]} exited {p.code}; see {p.log.name}")
    B.wait_until(f"{tool.tool} serving {version[:12]}", 30, lambda: B.serving(tool.port) == version)
    tool.current = version


# ---------------------------------------------------------------------------------------------
# One measured swap

TS_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z$")


def wall_of(ts):
    import calendar

    m = TS_RE.match(ts)
    if not m:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    return calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s))) + (float("0." + frac) if frac else 0.0)


def agent_events(log_path, wall_offset):
    """Monotonic times of the agent's "candidate answered" and "switched traffic" lines (JSON logs)."""
    out = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            if not line.startswith("{"):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            msg, wall = e.get("message", ""), wall_of(e.get("timestamp", ""))
            if wall is None:
                continue
            t = wall - wall_offset
            if msg == "candidate answered":
                out.setdefault("candidate_answered", t)
            elif msg.startswith("switched traffic"):
                out.setdefault("switched", t)
                out["switch_message"] = msg
    return out


def start_client(tool, case, ns, out_path, max_seconds):
    argv = [PYTHON, CLIENT, "--out", out_path, "--every", str(EVERY), "--timeout", str(TIMEOUT),
            "--max-seconds", str(max_seconds)]
    for load in case["loads"]:
        argv += [f"--{load}", tool.target]
    if ns:
        argv = ["ip", "netns", "exec", ns.ns] + argv
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(out_path + ".err", "w"), stdin=subprocess.DEVNULL)
    line = p.stdout.readline()  # "ready" (or EOF if it failed): the client bounds itself
    if line.strip() != b"ready":
        p.kill()
        raise RuntimeError(f"load client did not start: {open(out_path + '.err').read()[-300:]}")
    return p


def stop_client(p, out_path):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
        raise RuntimeError("load client did not stop within 30 s")
    with open(out_path) as f:
        return json.load(f)


def longest_run(runs, t_end):
    """(length, count) of the longest of B.failure_runs' runs; the first of equal ones."""
    best = (0.0, 0)
    for start, end, n in runs:
        length = (end if end is not None else t_end) - start
        if length > best[0]:
            best = (length, n)
    return best


def analyze_newconn(samples, t0, t_end, old, new, ev):
    s = [x for x in samples if t0 <= x[0] <= t_end]
    ok = [x for x in s if x[2] == 200]
    lat = sorted(x[1] - x[0] for x in ok)
    med = statistics.median(lat) if lat else None
    late_at = (med or 0) + LATE
    fail_run, fail_n = longest_run(B.failure_runs(s, lambda x: x[2] != 200), t_end)
    gap, gap_n = longest_run(B.failure_runs(s, lambda x: x[2] != 200 or x[1] - x[0] > late_at), t_end)
    new_ok = [x[1] for x in s if x[2] == 200 and x[3] == new]
    t_new = min(new_ok) if new_ok else None
    rec = {
        "requests": len(s), "failed": len(s) - len(ok),
        "errors": sorted({(x[4] or "").split(":")[0] for x in s if x[2] != 200}),
        "non_200": sum(1 for x in s if x[2] not in (0, 200)),
        "median_ms": None if med is None else med * 1000,
        "slowest_ms": lat[-1] * 1000 if lat else None,
        "slowest_minus_median_ms": (lat[-1] - med) * 1000 if lat else None,
        "late": sum(1 for v in lat if v > late_at),
        "longest_failure_run_ms": fail_run * 1000, "longest_failure_run_requests": fail_n,
        "longest_gap_ms": gap * 1000, "longest_gap_requests": gap_n,
        "new_served_s": None if t_new is None else t_new - t0,
        "other_versions": sorted({x[3] for x in ok if x[3] not in (old, new)}),
    }
    if t_new is not None and "candidate_answered" in ev:
        rec["new_after_candidate_s"] = t_new - ev["candidate_answered"]
    if t_new is not None and "switched" in ev:
        rec["new_after_switch_s"] = t_new - ev["switched"]
        # New connections that still reached the old version after the switch (should be none
        # started 20 ms or more after it).
        rec["old_after_switch"] = sum(1 for x in ok if x[3] == old and x[0] > ev["switched"] + 0.020)
    return rec


def analyze_keepalive(samples, t0, t_end, old, new, ev):
    s = [x for x in samples if t0 <= x[0] <= t_end]
    # Logical requests: a request that failed on a reused connection is retried at once on a new
    # one (the next sample, retry=1); an HTTP client sees the retry's outcome. Both views count.
    logical = []  # (start, ok after retry, ok on its connection)
    for j, x in enumerate(s):
        if x[6]:
            continue
        nxt = s[j + 1] if j + 1 < len(s) and s[j + 1][6] else None
        logical.append((x[0], x[2] == 200 or (nxt is not None and nxt[2] == 200), x[2] == 200))
    ok = [x for x in s if x[2] == 200]
    lat = sorted(x[1] - x[0] for x in ok)
    med = statistics.median(lat) if lat else None
    conn_at_t0 = min((x[5] for x in s), default=None)
    first_start = {}
    for x in s:
        first_start.setdefault(x[5], x[0])
    t_sw = ev.get("switched")
    return {
        "requests": len(logical), "failed_on_connection": sum(1 for x in logical if not x[2]),
        "retried": sum(1 for x in s if x[6]), "failed_after_retry": sum(1 for x in logical if not x[1]),
        "connections": len(first_start),
        "errors": sorted({(x[4] or "").split(":")[0] for x in s if x[2] != 200}),
        "median_ms": None if med is None else med * 1000,
        "slowest_ms": lat[-1] * 1000 if lat else None,
        "late": sum(1 for v in lat if med is not None and v > med + LATE),
        "first_connection_versions": sorted({x[3] for x in s if x[5] == conn_at_t0 and x[2] == 200}),
        # Requests on a connection opened before the switch answered by the new version: conntrack
        # keeps an established connection on its old target, so there should be none.
        "new_on_pre_switch_connection": None if t_sw is None else sum(
            1 for x in ok if x[3] == new and first_start[x[5]] < t_sw - 0.005),
        "longest_failure_run_ms": longest_run(B.failure_runs(logical, lambda x: not x[1]), t_end)[0] * 1000,
    }


def analyze_slow(samples, t0, t_end, old, new, ev, t_first_new):
    """The ~2 s requests. "In flight at the switch": started before it and ended after it. The
    switch instant is known to a few ms only (the agent logs it after iptables-restore returns; the
    first new connection answered by the new version may start just before that line), so the
    requests started within that uncertainty are left out of the in-flight set."""
    s = [x for x in samples if x[0] >= t0 - 3.0 and x[0] <= t_end]  # started up to 3 s before the tool
    t_sw = ev.get("switched")
    inflight = []
    if t_sw is not None:
        lo = min(t_sw, t_first_new if t_first_new is not None else t_sw)
        hi = max(t_sw, t_first_new if t_first_new is not None else t_sw)
        inflight = [x for x in s if x[0] < lo - 0.005 and x[1] > hi]
    return {
        "requests": len(s), "failed": sum(1 for x in s if x[2] != 200),
        "errors": sorted({(x[4] or "").split(":")[0] for x in s if x[2] != 200}),
        "inflight_at_switch": len(inflight),
        "inflight_200_old": sum(1 for x in inflight if x[2] == 200 and x[3] == old),
        "inflight_other": [[round(x[1] - x[0], 3), x[2], x[3] == new, x[4]] for x in inflight
                           if not (x[2] == 200 and x[3] == old)],
        "longest_ms": max(((x[1] - x[0]) * 1000 for x in s if x[2] == 200), default=None),
    }


def timeline(samples, t0, old, new, t_end):
    out = []
    for t, end, status, v, _err in samples:
        if t0 - 0.3 <= t <= t_end:
            state = "fail" if status != 200 else ("new" if v == new else ("old" if v == old else "other"))
            out.append((round(t - t0, 4), state, round(end - t, 4)))
    return out


def swap_once(case_id, case, tool, ns, i):
    old = tool.pair[1] if tool.current == tool.pair[0] else tool.pair[0]
    alone_serving(tool, old, case_id)
    new = tool.pair[1] if old == tool.pair[0] else tool.pair[0]
    B.remove_image(B.ref(new))  # a new release is not on the host yet: the swap includes its pull
    stem = f"swap-{case_id}-{tool.tool}-{i:02d}"
    out_path = os.path.join(B.WORK, f"{stem}-client.json")
    client = start_client(tool, case, ns, out_path, max_seconds=120)
    try:
        time.sleep(0.3)
        B.put_release(tool.key, new)
        wall_offset = time.time() - time.monotonic()
        t0 = time.monotonic()
        p = tool.start(f"{stem}.log")
        p.wait(180)
        if p.code != 0:
            raise RuntimeError(f"{tool.tool} swap exited {p.code}; see {p.log.name}")
        t_new = B.wait_until("new version served", 30, lambda: B.serving(tool.port) == new and time.monotonic())
        # Settle: 0.5 s of the new version, and the slow requests started before the swap done.
        time.sleep(max(0.0, t_new + 0.5 - time.monotonic()))
        t_end = time.monotonic()
    finally:
        res = stop_client(client, out_path)
    tool.current = new
    ev = agent_events(p.log.name, wall_offset) if tool.tool != "script" else {}
    rec = {"run": i, "tool": tool.tool, "old": old, "new": new, "exit_s": p.t_exit - t0, "code": p.code,
           "cpu_s": p.cpu, "load1": float(loadavg()[0])}
    for k in ("candidate_answered", "switched"):
        if k in ev:
            rec[f"{k}_s"] = ev[k] - t0
    if "switch_message" in ev:
        rec["switch_message"] = ev["switch_message"]
    rec["newconn"] = analyze_newconn(res["newconn"], t0, t_end, old, new, ev)
    if res["keepalive"]:
        rec["keepalive"] = analyze_keepalive(res["keepalive"], t0, t_end, old, new, ev)
    if res["slow"]:
        firsts = [x[0] for x in res["newconn"] if x[0] >= t0 and x[2] == 200 and x[3] == new]
        rec["slow"] = analyze_slow(res["slow"], t0, t_end, old, new, ev, min(firsts, default=None))
    rec["timeline"] = timeline(res["newconn"], t0, old, new, t_end)
    if res["keepalive"]:
        rec["timeline_keepalive"] = [(round(x[0] - t0, 4), "fail" if x[2] != 200 else
                                      ("new" if x[3] == new else "old"), round(x[1] - x[0], 4), x[5], x[6])
                                     for x in res["keepalive"] if t0 - 0.3 <= x[0] <= t_end]
    os.remove(out_path)  # large; the summary above is what is kept
    return rec


@contextlib.contextmanager
def netfilter_test_lock(wait_s=300):
    """The project's integration tests serialise their netfilter work on an abstract socket
    (tests/common netfilter_lock); holding it keeps them from switching rules on this host while
    a case is measured. Bounded wait; proceeds without it (and says so) if it cannot be had."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + wait_s
    held = False
    while time.monotonic() < deadline:
        try:
            s.bind(b"\0blog-agent-tests-netfilter")
            held = True
            break
        except OSError:
            time.sleep(0.5)
    if not held:
        log(f"the netfilter test lock was busy for {wait_s} s: measuring anyway")
    try:
        yield held
    finally:
        s.close()


def run_case(case_id, runs, out_dir):
    case = CASES[case_id]
    log(f"case {case_id}: {runs} runs of {', '.join(case['tools'])}")
    rec = {"case": case_id, "run_id": B.RUN_ID, "image": case["image"], "path": case["path"], "loads": case["loads"],
           "tools": list(case["tools"]), "runs": runs, "loadavg_start": loadavg(),
           "stop_timeout": case.get("stop_timeout", "3s"), "every_ms": EVERY * 1000, "timeout_s": TIMEOUT,
           "late_ms": LATE * 1000, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    arp = case.get("arp_ms") or B.packaged_arp_ms()
    rec["arp_ms"] = arp
    B.set_arp_ms(arp)
    ns = Namespace() if case["path"] == "veth" else None
    if ns:
        rec["client"], rec["host_addr"] = ns.client, ns.host
    # Other containers on docker0 (not the benchmark's): they change how docker0 behaves at a swap
    # (a lone container's bridge port goes down with it), so the report names them.
    rec["other_running_containers"] = sorted(c["Names"][0].lstrip("/") for c in
                                             json.loads(B.docker("GET", "/containers/json")[1])
                                             if c.get("Labels", {}).get(B.LABEL) != "1")
    t_case = time.monotonic()
    results = {t: [] for t in case["tools"]}
    try:
        with netfilter_test_lock() as held:
            rec["netfilter_test_lock_held"] = held
            tools = {t: Tool(case_id, t, case, ns) for t in case["tools"]}
            for i in range(runs):
                for t in B.rotated(list(case["tools"]), i):
                    r = swap_once(case_id, case, tools[t], ns, i)
                    results[t].append(r)
                    nc = r["newconn"]
                    extra = ""
                    if "keepalive" in r:
                        ka = r["keepalive"]
                        extra += f"; keep-alive {ka['failed_after_retry']} failed ({ka['retried']} retried)"
                    if "slow" in r:
                        sl = r["slow"]
                        extra += f"; slow {sl['failed']}/{sl['requests']} failed, {sl['inflight_200_old']}/{sl['inflight_at_switch']} in flight at the switch 200 old"
                    log(f"  {case_id} {t} run {i + 1}: {nc['failed']} failed, gap {nc['longest_gap_ms']:.0f} ms, "
                        f"slowest {nc['slowest_ms']:.0f} ms (median {nc['median_ms']:.1f}), new after "
                        f"{nc['new_served_s']:.2f} s" + (f" ({nc['new_after_candidate_s']:.3f} s after the candidate answered)"
                                                         if "new_after_candidate_s" in nc else "") + extra)
                # Rules of the switch-mode agent are removed between cases, not between runs: the
                # agent keeps them, as on a host.
    finally:
        if ns:
            ns.remove()
        for c in B.containers():
            B.remove_container(c["Id"])
        remove_chains()
        rec["loadavg_end"] = loadavg()
        rec["seconds"] = time.monotonic() - t_case
        rec["results"] = results
        path = os.path.join(out_dir, f"swap-{case_id}.json")
        with open(path, "w") as f:
            json.dump(rec, f)
        log(f"case {case_id}: {rec['seconds']:.0f} s, results in {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--cases", default="busybox-loopback")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cleanup", action="store_true")
    a = ap.parse_args()
    if a.cleanup:
        errors = cleanup()
        sys.exit(1 if errors else 0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(a.out_dir, exist_ok=True)
    B.setup_s3()
    save_host_state()
    meta = B.meta()
    meta["binary"] = B.AGENT
    meta["build"] = os.environ.get("BENCH_BUILD_NOTE", "")
    meta["arp_found"] = json.load(open(STATE))["arp_ms"]
    meta["route_localnet_found"] = json.load(open(STATE))["route_localnet"]
    meta["iptables"] = sh("iptables", "-V").strip()
    t_start = time.monotonic()
    try:
        B.cleanup_docker()
        remove_chains()
        for case_id in a.cases.split(","):
            if case_id not in CASES:
                raise SystemExit(f"unknown case {case_id}; known: {', '.join(CASES)}")
            run_case(case_id, a.runs, a.out_dir)
    finally:
        errors = cleanup()
        meta["loadavg_end"] = loadavg()
        meta["bench_seconds"] = time.monotonic() - t_start
        meta["cleanup_errors"] = errors
        meta["cases"] = a.cases.split(",")
        meta["runs_arg"] = a.runs
        meta["run_id"] = B.RUN_ID
        with open(os.path.join(a.out_dir, f"swap-meta-{B.RUN_ID}.json"), "w") as f:
            json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
