"""bench/arp_stall.py: the ~1 s stall of a container swap, without any deploy tool.

Run through bench/arp-stall.sh. Swaps two containers of the same image on one published port
straight through the Engine API (stop the old one with no grace, start a pre-created new one)
while the HTTP prober runs, PROFILE_RUNS times (default 5) for each of:
  - the container alone on docker0 (a blog host) or beside another one that keeps docker0 up;
  - net.ipv4.neigh.docker0.retrans_time_ms at the kernel default (1000) or as packaged.
Prints, per case, the longest run of failed requests, the longest gap counting late (> 200 ms)
answers as missing, and the number of late answers. Puts the ARP setting it found back.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

RUNS = int(os.environ.get("PROFILE_RUNS", "5"))


def create(name, ref, port):
    body = {"Image": ref, "ExposedPorts": {"80/tcp": {}}, "Labels": {B.LABEL: "1", f"{B.LABEL}-run": B.RUN_ID},
            "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}}}
    status, data = B.docker("POST", f"/containers/create?name={name}", body)
    assert status == 201, data
    return json.loads(data)["Id"]


def start(ident):
    status, data = B.docker("POST", f"/containers/{ident}/start")
    assert status == 204, data


def one_swap(ref, port):
    old = create(f"blogbench-{B.RUN_ID}-arp-old", ref, port)
    start(old)
    B.wait_until("old serving", 30, lambda: B.serving(port) is not None)
    new = create(f"blogbench-{B.RUN_ID}-arp-new", ref, port)
    prober = B.Prober(port)
    prober.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    B.docker("POST", f"/containers/{old}/stop?t=0")
    start(new)
    t_started = time.monotonic()
    B.wait_until("new serving", 30, lambda: prober.done_ok(t_started))
    time.sleep(1.5)
    samples = prober.stop()
    B.remove_container(old)
    B.remove_container(new)
    return B.gap_summary([s for s in samples if s[0] >= t0], time.monotonic())


def main():
    ref = B.ref(B.publish())
    B.raw_pull(ref)
    with open(B.ARP_SYSCTL) as f:
        found = int(f.read())
    cases = [(alone, arp) for alone in (True, False) for arp in (B.KERNEL_ARP_MS, B.packaged_arp_ms())]
    results = {c: [] for c in cases}
    try:
        for c in B.containers():
            B.remove_container(c["Id"])
        for i in range(RUNS):
            for alone, arp in B.rotated(cases, i):
                B.set_arp_ms(arp)
                neighbour = None
                if not alone:
                    neighbour = create(f"blogbench-{B.RUN_ID}-arp-neighbour", ref, B.free_port())
                    start(neighbour)
                    time.sleep(0.5)
                rec = one_swap(ref, B.free_port())
                if neighbour:
                    B.remove_container(neighbour)
                results[(alone, arp)].append(rec)
                B.log(f"  {'alone' if alone else 'with a neighbour'}, ARP {arp} ms: failed run "
                      f"{rec['longest_failure_run_s'] * 1000:.0f} ms, gap {rec['longest_gap_s'] * 1000:.0f} ms, "
                      f"{rec['slow_requests']} late")
    finally:
        B.set_arp_ms(found)
        for c in B.containers():
            B.remove_container(c["Id"])
        B.unpublish()

    def med(recs, key, scale=1000):
        return f"{statistics.median(r[key] for r in recs) * scale:.0f}"

    print(f"\nRaw Engine API swap (stop t=0, start), median of {RUNS}:\n")
    print("| container on docker0 | retrans_time_ms | longest run of failed requests, ms | longest gap incl. late 200s, ms | late 200s |")
    print("|---|---|---|---|---|")
    for (alone, arp), recs in results.items():
        print(f"| {'alone' if alone else 'beside another'} | {arp} | {med(recs, 'longest_failure_run_s')} | "
              f"{med(recs, 'longest_gap_s')} | {med(recs, 'slow_requests', 1)} |")


if __name__ == "__main__":
    main()
