#!/usr/bin/env python3
"""IMDSv2 stand-in for scripts/boot-e2e.sh (the Python twin of tests/common/imds.rs).

    imds.py PORT_FILE LOG_FILE KEY=VALUE...

Binds 127.0.0.1 on a free port, writes the port to PORT_FILE once it listens, and serves:
  PUT /latest/api/token            token (needs X-aws-ec2-metadata-token-ttl-seconds, else 400)
  GET /latest/meta-data/tags/instance/KEY   the tag's value (401 without the token, 404 if absent)
anything else 404 (401 without a token). One line per request goes to LOG_FILE, so the test
can prove the environment came from the instance tag over IMDSv2.
"""
import http.server
import os
import sys

TOKEN = "boot-e2e-imds-token"
TAG_PREFIX = "/latest/meta-data/tags/instance/"


def main():
    port_file, log_file = sys.argv[1], sys.argv[2]
    tags = dict(arg.split("=", 1) for arg in sys.argv[3:])
    log = open(log_file, "a", buffering=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like IMDS; every answer has a length

        def answer(self, status, body="", headers=()):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def drain(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)

        def do_PUT(self):
            self.drain()
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            if self.path == "/latest/api/token" and ttl:
                self.answer(200, TOKEN, [("X-aws-ec2-metadata-token-ttl-seconds", ttl)])
            elif self.path == "/latest/api/token":
                self.answer(400)
            else:
                self.answer(404)

        def do_GET(self):
            self.drain()
            if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                self.answer(401)
            elif self.path.startswith(TAG_PREFIX) and self.path[len(TAG_PREFIX):] in tags:
                self.answer(200, tags[self.path[len(TAG_PREFIX):]])
            else:
                self.answer(404)

        def log_message(self, fmt, *args):
            token = "token" if self.headers.get("X-aws-ec2-metadata-token") == TOKEN else "no-token"
            log.write("%s %s %s\n" % (fmt % args, token, self.client_address[0]))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, port_file)  # atomic: the reader never sees a half-written port
    server.serve_forever()


if __name__ == "__main__":
    main()
