"""bench/dockertrace.py LISTEN_SOCKET LOG_FILE: a Docker Engine API tracer.

Listens on the unix socket LISTEN_SOCKET and forwards every request to the real daemon
(DOCKER_HOST or /var/run/docker.sock), logging one JSON line per call: when the request arrived,
when the response head came back, when the body ended, method, path and status. Run a client
with DOCKER_HOST=unix://LISTEN_SOCKET to see where its time goes. Used by bench/profile-cold.sh.
"""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy import accept_forever, jsonl_logger  # noqa: E402

UPSTREAM = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")


def connect_upstream():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(UPSTREAM)
    return s


def main():
    path, log_path = sys.argv[1], sys.argv[2]
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    accept_forever(listener, connect_upstream, jsonl_logger(log_path))


if __name__ == "__main__":
    main()
