"""bench/proxy.py UPSTREAM_PORT LOG_FILE PORT_FILE [FAULTS_FILE]: a counting HTTP/1.1 proxy on
127.0.0.1.

The Python twin of tests/common/services.rs `CountingProxy`: pointing AWS_ENDPOINT_URL at it
shows exactly which S3 and ECR calls a client makes. Each request/response pair is forwarded
unchanged and logged as one JSON line: wall time, method, path, the headers that matter
(User-Agent, If-None-Match, X-Amz-Target), the caller's access key id (from the SigV4
Authorization header: which host called) and the response status. Binds 127.0.0.1 only,
writes its port to PORT_FILE, and runs until killed.

FAULTS_FILE, when given, is read before every request: a JSON list of faults, each
{"until": UNIX_TIME, "status": 503, "code": "SlowDown", "path": "SUBSTRING"} (S3's XML answer
for requests whose path contains SUBSTRING) or {"until": ..., "status": 400, "code":
"ThrottlingException", "target": "SUBSTRING"} (a JSON service's answer for requests whose
X-Amz-Target contains SUBSTRING). The first that matches, and has not expired, answers instead
of the upstream; the log entry says `"injected": true`. A missing or unreadable file injects
nothing.
"""

import json
import socket
import sys
import threading
import time

LOG_LOCK = threading.Lock()


def read_head(f):
    """Reads a start line and headers; returns (start_line, raw_bytes, headers) or None at EOF."""
    first = f.readline()
    if not first:
        return None
    raw = [first]
    headers = {}
    while True:
        line = f.readline()
        if not line:
            return None
        raw.append(line)
        if line in (b"\r\n", b"\n"):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return first.decode("latin-1").strip(), b"".join(raw), headers


def copy_body(src, dst, headers, no_body=False):
    """Forwards a message body (Content-Length or chunked). Returns False when the body is
    delimited by the connection closing (copied to EOF)."""
    if no_body:
        return True
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = src.readline()
            dst.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers up to the empty line
                    line = src.readline()
                    dst.sendall(line)
                    if line in (b"\r\n", b"\n", b""):
                        return True
            dst.sendall(src.read(size + 2))
    if "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            chunk = src.read(min(remaining, 65536))
            if not chunk:
                break
            dst.sendall(chunk)
            remaining -= len(chunk)
        return True
    return None  # no framing: caller decides (requests: no body; responses: until close)


def load_faults(path):
    if not path:
        return []
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return []


def injected_answer(faults, path, headers):
    """The bytes of the first live fault matching this request, or None."""
    now = time.time()
    for fault in faults:
        if fault.get("until", 0) <= now:
            continue
        if "path" in fault and fault["path"] not in path:
            continue
        if "target" in fault and fault["target"] not in headers.get("x-amz-target", ""):
            continue
        if "target" in fault:
            body = json.dumps({"__type": fault["code"], "message": "Rate exceeded (injected)"})
            kind = "application/x-amz-json-1.1"
            extra = f"x-amzn-ErrorType: {fault['code']}\r\n"
        else:
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault["code"]}</Code>'
                    "<Message>injected</Message></Error>")
            kind, extra = "application/xml", ""
        data = body.encode()
        head = (f"HTTP/1.1 {fault['status']} Injected\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(data)}\r\n{extra}\r\n")
        return fault["status"], head.encode() + data
    return None


def key_id(headers):
    """The access key id of a SigV4-signed request (`Credential=KEY/...`), or None."""
    auth = headers.get("authorization", "")
    _, found, rest = auth.partition("Credential=")
    return rest.split("/", 1)[0] if found else None


def serve(client, connect_upstream, log, faults_path=None):
    """Forwards one client connection, request by request, logging each exchange to `log`."""
    try:
        upstream = connect_upstream()
    except OSError:
        client.close()
        return
    cin, uin = client.makefile("rb"), upstream.makefile("rb")
    try:
        while True:
            head = read_head(cin)
            if head is None:
                return
            request_line, raw, headers = head
            seen = time.time()
            method, path = (request_line.split(" ") + ["", ""])[:2]
            fault = injected_answer(load_faults(faults_path), path, headers)
            if fault is not None:
                copy_body(cin, _Sink(), headers)
                client.sendall(fault[1])
                log({"t": seen, "method": method, "path": path, "status": fault[0], "injected": True,
                     "amz_target": headers.get("x-amz-target"), "key_id": key_id(headers)})
                continue
            upstream.sendall(raw)
            copy_body(cin, upstream, headers)
            status = None
            while True:  # skip 1xx interim answers
                resp = read_head(uin)
                if resp is None:
                    break
                status_line, rraw, rheaders = resp
                client.sendall(rraw)
                status = int(status_line.split(" ")[1])
                if status >= 200:
                    break
            t_head = time.time()
            entry = {
                "t": seen,
                "t_head": t_head,
                "method": method,
                "path": path,
                "status": status,
                "user_agent": headers.get("user-agent", ""),
                "if_none_match": headers.get("if-none-match"),
                "amz_target": headers.get("x-amz-target"),
                "key_id": key_id(headers),
            }
            if resp is None:
                log(entry)
                return
            no_body = method == "HEAD" or status in (204, 304) or status < 200
            framed = copy_body(uin, client, rheaders, no_body)
            if framed is None:
                while chunk := uin.read1(65536):
                    client.sendall(chunk)
            entry["t_done"] = time.time()
            log(entry)
            if framed is None:
                return
    except (OSError, ValueError, IndexError):
        return
    finally:
        for s in (client, upstream):
            try:
                s.close()
            except OSError:
                pass


def jsonl_logger(path):
    out = open(path, "a", buffering=1)

    def log(entry):
        with LOG_LOCK:
            out.write(json.dumps(entry) + "\n")

    return log


class _Sink:
    """Where the body of a request answered by an injected fault goes."""

    def sendall(self, data):
        pass


def accept_forever(listener, connect_upstream, log, faults_path=None):
    while True:
        client, _ = listener.accept()
        args = (client, connect_upstream, log, faults_path)
        threading.Thread(target=serve, args=args, daemon=True).start()


def main():
    upstream_port, log_path, port_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    faults_path = sys.argv[4] if len(sys.argv) > 4 else None
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    with open(port_file, "w") as f:
        f.write(str(listener.getsockname()[1]))
    connect = lambda: socket.create_connection(("127.0.0.1", upstream_port))  # noqa: E731
    accept_forever(listener, connect, jsonl_logger(log_path), faults_path)


if __name__ == "__main__":
    main()
