"""bench/profile_swap.py [STOP_TIMEOUT...]: where a release swap's gap goes.

Run through bench/profile-swap.sh. For each [container] stop_timeout given (default: 3s 0s),
deploys version A with `blog-agent sync`, then swaps A -> B -> A (PROFILE_RUNS swaps, default 2)
with the HTTP prober running and the agent's Docker socket going through bench/dockertrace.py,
and prints, per swap, the cut-over's Engine API calls (stop, rename, start, remove) next to
when the prober saw the old version stop answering and the new one answer.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

RUNS = int(os.environ.get("PROFILE_RUNS", "2"))


def main():
    settings = sys.argv[1:] or ["3s", "0s"]
    B.setup_s3()
    with B.docker_traced() as (sock, tlog):
        for stop in settings:
            a, b = B.publish(), B.publish()
            key, port = f"bench/profile-swap-{stop}.txt", B.free_port()
            cfg = B.agent_config(f"blogbench-{B.RUN_ID}-pswap-{stop}", port, key, stop_timeout=stop)
            B.put_release(key, a)
            B.start_agent_sync(cfg, "profile-swap.log").wait(120)
            B.wait_until("first version served", 30, lambda: B.serving(port) == a)
            old = a
            for i in range(RUNS):
                new = b if old == a else a
                B.remove_image(B.ref(new))
                prober = B.Prober(port)
                prober.start()
                time.sleep(0.3)
                B.put_release(key, new)
                wall0, t0 = time.time(), time.monotonic()
                p = B.Proc([B.AGENT, "--config", cfg["path"], "sync"], os.path.join(B.WORK, "profile-swap.log"),
                           B.tool_env({"DOCKER_HOST": f"unix://{sock}"}))
                p.wait(120)
                time.sleep(1.5)
                samples = [s for s in prober.stop() if s[0] >= t0]
                gap = B.gap_summary(samples, time.monotonic())
                events = []
                with open(tlog) as f:
                    for line in f:
                        e = json.loads(line)
                        path = e["path"].split("?")[0]
                        if e["t"] >= wall0 and (e["method"] == "DELETE" or path.rsplit("/", 1)[-1] in ("stop", "start", "rename")):
                            took = (e.get("t_done", e["t_head"]) - e["t"]) * 1000
                            what = f"{e['method']} .../{path.rsplit('/', 2)[-2][:12]}/{path.rsplit('/', 1)[-1]}" if e["method"] != "DELETE" \
                                else f"DELETE .../{path.rsplit('/', 1)[-1][:12]}"
                            events.append(((e["t"] - wall0) * 1000, f"{what}  (took {took:.0f} ms, returned at {(e.get('t_done', e['t_head']) - wall0) * 1000:.0f} ms)"))
                fails = [t for t, ok, _, _ in samples if not ok]
                if fails:
                    events.append(((fails[0] - t0) * 1000, "prober: first failed request (old version gone)"))
                t_new = B.first_ok_after(samples, t0, new)
                if t_new:
                    events.append(((t_new - t0) * 1000, "prober: first 200 from the new version"))
                print(f"\n== stop_timeout {stop}, swap {i + 1}: gap {gap['longest_gap_s'] * 1000:.0f} ms "
                      f"(outright failures {gap['longest_failure_run_s'] * 1000:.0f} ms, {gap['slow_requests']} slow 200s)")
                for at, what in sorted(events):
                    print(f"  {at:8.0f} ms  {what}")
                old = new


if __name__ == "__main__":
    main()
