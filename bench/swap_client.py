"""bench/swap_client.py: the load a release swap is measured under (bench/swap.py starts it).

A separate process so that it can run inside a network namespace (`ip netns exec NS python3
bench/swap_client.py ...`, the path a load balancer's traffic takes) as well as on the host, and
so that the orchestrator's own work never delays a request. Times are CLOCK_MONOTONIC, which is
the same clock in every network namespace, so the orchestrator can line them up with its own.

Loads (any combination, all at once):
  --newconn HOST:PORT     GET / every --every seconds, each on a new connection (HTTP/1.0), each
                          in its own thread: a request stuck in a SYN retransmit does not hide the
                          ones after it. --timeout bounds each request (connect + answer).
  --keepalive HOST:PORT   GET / every --every seconds, one after the other, on one HTTP/1.1
                          connection kept open for as long as the server keeps it. A request that
                          fails on a reused connection (the server closed it) is recorded, then
                          retried once at once on a new connection (recorded too, retry=1), as
                          HTTP clients do for an idempotent request.
  --slow HOST:PORT        GET /cgi-bin/slow every --slow-every seconds on new connections (each
                          takes ~2 s: a request in flight across the switch), --slow-timeout.

Runs until SIGTERM/SIGINT or --max-seconds, whichever comes first; then waits for the requests in
flight (bounded by their timeouts) and writes JSON to --out:
  {"newconn": [[start, end, status, version, error], ...],
   "keepalive": [[start, end, status, version, error, connection, retry], ...],
   "slow": [[start, end, status, version, error], ...], "ready": t, "stopped": t}
status 0 means no HTTP answer (error says why). Prints "ready" on stdout once the loads run.
Bounded: --max-seconds (default 120) and at most 200 requests in flight per load.
"""

import argparse
import json
import re
import signal
import socket
import sys
import threading
import time

VERSION_RE = re.compile(rb"(?:version|slow) ([0-9a-f]{7,40})")
MAX_INFLIGHT = 200


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def parse(data):
    """(status, version) of a raw HTTP answer."""
    status = 0
    if data.startswith(b"HTTP/1."):
        parts = data.split(b" ", 2)
        if len(parts) > 1 and parts[1].isdigit():
            status = int(parts[1])
    m = VERSION_RE.search(data)
    return status, (m.group(1).decode() if m else None)


def one_get(target, path, timeout):
    """One GET on a new connection (HTTP/1.0: the server closes it). (status, version, error)."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection(target, timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: blog\r\nUser-Agent: bench-swap\r\n\r\n".encode())
            data = b""
            while len(data) < 65536:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("timed out")
                s.settimeout(left)
                chunk = s.recv(8192)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return 0, None, type(e).__name__ + (f": {e}" if str(e) else "")
    status, version = parse(data)
    return status, version, None if status else f"no HTTP answer ({len(data)} bytes)"


class Spaced(threading.Thread):
    """Starts `one(i)` in its own thread every `every` seconds until halted."""

    def __init__(self, every, one, halt, deadline):
        super().__init__(daemon=True)
        self.every, self.one, self.halt, self.deadline = every, one, halt, deadline
        self.threads = []

    def run(self):
        nxt, i = time.monotonic(), 0
        while not self.halt.is_set() and time.monotonic() < self.deadline:
            self.threads = [t for t in self.threads if t.is_alive()]
            if len(self.threads) < MAX_INFLIGHT:
                t = threading.Thread(target=self.one, args=(i,), daemon=True)
                t.start()
                self.threads.append(t)
                i += 1
            nxt += self.every
            self.halt.wait(max(0.0, nxt - time.monotonic()))

    def finish(self, timeout):
        self.join(5)
        for t in self.threads:
            t.join(timeout + 1)


def newconn_load(target, path, every, timeout, halt, deadline, out, lock):
    def one(_i):
        t = time.monotonic()
        status, version, err = one_get(target, path, timeout)
        end = time.monotonic()
        with lock:
            out.append([t, end, status, version, err])

    return Spaced(every, one, halt, deadline)


class KeepAlive(threading.Thread):
    """Sequential GETs on one HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, target, every, timeout, halt, deadline, out):
        super().__init__(daemon=True)
        self.target, self.every, self.timeout = target, every, timeout
        self.halt, self.deadline, self.out = halt, deadline, out
        self.sock, self.buf, self.conn, self.used = None, b"", 0, 0

    def _open(self):
        self.sock = socket.create_connection(self.target, timeout=self.timeout)
        self.buf, self.used = b"", 0
        self.conn += 1

    def _close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _recv_until(self, pred, deadline):
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            self.sock.settimeout(left)
            chunk = self.sock.recv(8192)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk

    def _request(self):
        """(status, version, close_after). Raises OSError on a failure."""
        deadline = time.monotonic() + self.timeout
        if self.sock is None:
            self._open()
        self.sock.settimeout(self.timeout)
        self.sock.sendall(b"GET / HTTP/1.1\r\nHost: blog\r\nUser-Agent: bench-swap-keepalive\r\n\r\n")
        self._recv_until(lambda: b"\r\n\r\n" in self.buf, deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        length, close = 0, False
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            k, v = k.strip().lower(), v.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v == b"close":
                close = True
            elif k == b"transfer-encoding":
                raise ConnectionError("chunked answers are not handled")
        self._recv_until(lambda: len(self.buf) >= length, deadline)
        body, self.buf = self.buf[:length], self.buf[length:]
        status, _ = parse(head)
        _, version = parse(body)
        self.used += 1
        return status, version, close

    def _one(self, retry):
        t = time.monotonic()
        reused = self.sock is not None and self.used > 0
        conn = self.conn + (0 if self.sock is not None else 1)
        try:
            status, version, close = self._request()
            err = None
            if close:
                self._close()
        except OSError as e:
            self._close()
            status, version, err = 0, None, type(e).__name__ + (f": {e}" if str(e) else "")
        self.out.append([t, time.monotonic(), status, version, err, conn, retry])
        return status == 0 and reused

    def run(self):
        nxt = time.monotonic()
        while not self.halt.is_set() and time.monotonic() < self.deadline:
            if self._one(0):
                self._one(1)  # the server closed a reused connection: retry once on a new one
            nxt += self.every
            self.halt.wait(max(0.0, nxt - time.monotonic()))
        self._close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--newconn", type=addr)
    ap.add_argument("--keepalive", type=addr)
    ap.add_argument("--slow", type=addr)
    ap.add_argument("--every", type=float, default=0.010)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--slow-every", type=float, default=0.2)
    ap.add_argument("--slow-timeout", type=float, default=6.0)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    a = ap.parse_args()

    halt = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: halt.set())
    signal.signal(signal.SIGINT, lambda *_: halt.set())
    deadline = time.monotonic() + min(a.max_seconds, 600.0)
    lock = threading.Lock()
    res = {"newconn": [], "keepalive": [], "slow": []}
    loads = []
    if a.newconn:
        loads.append((newconn_load(a.newconn, "/", a.every, a.timeout, halt, deadline, res["newconn"], lock), a.timeout))
    if a.slow:
        loads.append((newconn_load(a.slow, "/cgi-bin/slow", a.slow_every, a.slow_timeout, halt, deadline, res["slow"], lock),
                      a.slow_timeout))
    if a.keepalive:
        loads.append((KeepAlive(a.keepalive, a.every, a.timeout, halt, deadline, res["keepalive"]), a.timeout))
    for load, _ in loads:
        load.start()
    res["ready"] = time.monotonic()
    print("ready", flush=True)
    while not halt.is_set() and time.monotonic() < deadline:
        halt.wait(0.1)
    halt.set()
    res["stopped"] = time.monotonic()
    for load, timeout in loads:
        if isinstance(load, Spaced):
            load.finish(timeout)
        else:
            load.join(timeout * 2 + 5)
    with lock:
        for k in ("newconn", "slow"):
            res[k].sort()
    with open(a.out, "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
