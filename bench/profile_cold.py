"""bench/profile_cold.py: where blog-agent's cold `sync` spends its time.

Run through bench/profile-cold.sh. Each run starts from an empty Docker (container removed, image
deleted) like the cold benchmark, with the agent's Docker socket going through
bench/dockertrace.py and its AWS calls through the counting proxy, so every Engine API call and
every S3/ECR request is timed. Prints each run's timeline (milliseconds since the process
started) and a per-phase summary over the runs (median).
"""

import datetime
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

RUNS = int(os.environ.get("PROFILE_RUNS", "5"))


def entries(path, wall0, wall1, pred=lambda e: True):
    out = []
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if wall0 <= e["t"] <= wall1 and pred(e):
                out.append(e)
    return out


def short(path):
    path, _, query = path.partition("?")
    keep = "?" + query if query.startswith("name=") else ""
    for prefix in ("/v1.41", "/v1.4", "/v1.3"):
        if path.startswith(prefix):
            path = "/" + path.split("/", 2)[2]
    parts = path.split("/")
    return "/".join(p[:12] if len(p) == 64 else p for p in parts) + keep


def phase_of(e, name):
    m, p = e["method"], e["path"]
    if "images/create" in p:
        return "pull (POST /images/create)"
    if m == "POST" and "containers/create" in p:
        return "candidate: create" if "candidate" in p else "serving: create"
    return None


def main():
    B.setup_s3()
    summary = {}
    with B.docker_traced() as (trace_sock, trace_log):
        sha = B.publish()
        key = "bench/profile.txt"
        B.put_release(key, sha)
        port = B.free_port()
        cfg = B.agent_config(f"blogbench-{B.RUN_ID}-profile", port, key)
        for i in range(RUNS):
            for c in B.containers():
                B.remove_container(c["Id"])
            B.remove_image(B.ref(sha))
            shutil.rmtree(cfg["state"], ignore_errors=True)
            prober = B.Prober(port)
            wall0 = time.time()
            t0 = time.monotonic()
            prober.start()
            env = B.tool_env({"DOCKER_HOST": f"unix://{trace_sock}"})
            p = B.Proc([B.AGENT, "--config", cfg["path"], "--debug", "--log-format", "json", "sync"],
                       os.path.join(B.WORK, f"profile-{i}.log"), env)
            p.wait(120)
            samples = prober.stop()
            wall1 = time.time()
            if p.code != 0:
                raise RuntimeError(f"sync exited {p.code}: see {p.log.name}")
            t_ok = B.first_ok_after(samples, t0)
            ms = lambda wall: (wall - wall0) * 1000  # noqa: E731
            events = []
            for e in entries(trace_log, wall0, wall1):
                events.append((ms(e["t"]), ms(e.get("t_done", e["t_head"])) - ms(e["t"]),
                               f"docker {e['method']} {short(e['path'])} -> {e['status']}"))
            for e in entries(B.PROXY_LOG, wall0, wall1, lambda e: e["user_agent"].startswith("aws-sdk-rust")):
                what = e["amz_target"].split(".")[-1] if e["amz_target"] else f"S3 {e['method']} {e['path'].split('?')[0]}"
                events.append((ms(e["t"]), ms(e["t_head"]) - ms(e["t"]), f"aws {what} -> {e['status']}"))
            with open(p.log.name) as f:
                for line in f:
                    if line.startswith("{"):
                        j = json.loads(line)
                        ts = j.get("timestamp")
                        msg = j.get("message") or j.get("fields", {}).get("message", "")
                        if ts and msg:
                            wall = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
                            events.append((ms(wall), None, f"log: {msg}"))
            events.append(((t_ok - t0) * 1000, None, "prober: first HTTP 200"))
            events.append(((p.t_exit - t0) * 1000, None, "process exited"))
            events.sort()
            print(f"\n== run {i + 1}: first 200 at {(t_ok - t0) * 1000:.0f} ms, exit at {(p.t_exit - t0) * 1000:.0f} ms")
            for at, dur, what in events:
                print(f"  {at:8.1f} ms  {'' if dur is None else f'{dur:7.1f} ms'}  {what}" if dur is not None
                      else f"  {at:8.1f} ms             {what}")
            # Phases, from the calls themselves.
            calls = [(at, dur, what) for at, dur, what in events if dur is not None]
            def first(pred):
                return next((c for c in calls if pred(c[2])), None)
            first_call = calls[0][0]
            pull = first(lambda w: "/images/create" in w)
            cand_create = first(lambda w: "POST /containers/create" in w and "candidate" in w)
            serve_create = first(lambda w: "POST /containers/create" in w and "candidate" not in w)
            pull_end = pull[0] + pull[1]
            phases = {
                "process start -> first request": first_call,
                "before the pull (S3, inspect, ECR)": pull[0] - first_call,
                "pull": pull[1],
                # 0 when the agent runs no candidate (nothing was serving).
                "candidate: create -> serving create (start, probe, remove)":
                    serve_create[0] - cand_create[0] if cand_create else 0.0,
                "other (pull end -> serving create, minus the candidate)":
                    (cand_create[0] if cand_create else serve_create[0]) - pull_end,
                "serving: create -> first HTTP 200": (t_ok - t0) * 1000 - serve_create[0],
                "first HTTP 200 -> exit": (p.t_exit - t_ok) * 1000,
                "total: first HTTP 200": (t_ok - t0) * 1000,
            }
            for k, v in phases.items():
                summary.setdefault(k, []).append(v)
        print(f"\n== phases, median of {RUNS} runs (min-max), ms")
        for k, v in summary.items():
            print(f"  {k:62s} {statistics.median(v):7.0f}  ({min(v):.0f}-{max(v):.0f})")


if __name__ == "__main__":
    main()
