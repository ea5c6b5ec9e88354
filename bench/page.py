"""One GET of a blog page on 127.0.0.1: the status and the version it names; and free ports for
the blogs under test. Shared by the benchmarks (bench.py's prober, fleet.py's fleet checks,
dockerd_restart.py); plain sockets, HTTP/1.0, so a probe costs one connection and nothing else."""
import re
import socket

VERSION_RE = re.compile(rb"version ([0-9a-f]{7,40})")


def get(port, timeout, user_agent):
    """(answered 200, the version the page names or None); (False, None) when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: {user_agent}\r\n\r\n".encode())
            data = b""
            while len(data) < 8192:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False, None
    ok = data.startswith(b"HTTP/1.") and data.split(b" ", 2)[1:2] == [b"200"]
    m = VERSION_RE.search(data)
    return ok, (m.group(1).decode() if m else None)


def free_ports(n):
    """n free ports below the kernel's ephemeral range: a port from that range can be taken by
    any outgoing connection (an agent's to moto) between this check and Docker's bind."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = []
    for port in range(max(1024, low - 20000), low):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"fewer than {n} free ports below {low}")
