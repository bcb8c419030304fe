#!/usr/bin/env python3
"""A receiver for Corral's integration webhooks, Python standard library only.

It checks each request's X-Corral-Signature (HMAC-SHA256 over "timestamp.body" with the
integration's signing secret) and X-Corral-Timestamp (within --tolerance seconds of now), answers
401 to anything that fails, and 200 to a verified batch, which it prints as one JSON line per event
(to --events too, when given). Events it has seen before, by id, are acknowledged and not printed
again: delivery is at least once.

    python3 receiver.py --port 9000 --secret-file hook.secret
    corral integration create erp --url http://127.0.0.1:9000/corral --kind data \\
        --signing-secret-file hook.secret

--port 0 takes a free port; the first line on standard output says which.
"""

import argparse
import hashlib
import hmac
import http.server
import json
import sys
import threading
import time

MAX_BODY = 16 * 1024 * 1024  # Corral's batches are far smaller; refuse anything huge unread.
SEEN_MAX = 100_000  # ids remembered for deduplication; a real receiver keeps them in its database


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, tolerance_s: float) -> str:
    """Returns "" when the request is Corral's, else why not. The timestamp is inside the MAC, so
    checking its age stops a captured request from being replayed later."""
    if not timestamp or not signature:
        return "missing X-Corral-Timestamp or X-Corral-Signature"
    try:
        ts = int(timestamp)
    except ValueError:
        return "bad timestamp"
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    # compare_digest: a plain == leaks through its timing how much of a forgery was right.
    if not hmac.compare_digest("sha256=" + mac, signature):
        return "bad signature"
    if abs(time.time() - ts) > tolerance_s:
        return "timestamp outside the tolerance"
    return ""


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "corral-webhook-example"

    def do_POST(self):
        cfg = self.server.cfg
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self.answer(411, "length required")
        if not 0 <= length <= MAX_BODY:
            return self.answer(413, "too large")
        # The MAC is over the raw bytes: verify before parsing, and never re-serialize first.
        body = self.rfile.read(length)
        why = verify(cfg.secret, self.headers.get("X-Corral-Timestamp", ""),
                     self.headers.get("X-Corral-Signature", ""), body, cfg.tolerance)
        if why:
            self.log_message("refused: %s", why)
            return self.answer(401, why)
        try:
            events = json.loads(body)
        except ValueError:
            # Signed but unreadable: a 4xx sends it to Corral's dead letters rather than retrying.
            return self.answer(400, "not JSON")
        with self.server.lock:
            for event in events if isinstance(events, list) else [events]:
                event_id = event.get("id") if isinstance(event, dict) else None
                if event_id in self.server.seen:
                    continue
                if event_id is not None:
                    self.server.seen[event_id] = None
                    if len(self.server.seen) > SEEN_MAX:
                        self.server.seen.pop(next(iter(self.server.seen)))
                line = json.dumps(event, separators=(",", ":"))
                print(line, flush=True)
                if cfg.events:
                    with open(cfg.events, "a") as f:
                        f.write(line + "\n")
        self.answer(200, "ok")

    def answer(self, status, text):
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        # Requests go to stderr, so standard output holds the "listening on" line, then events.
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=9000, help="port to listen on (0: any free one)")
    p.add_argument("--secret-file", required=True,
                   help="the integration's signing secret, as given to --signing-secret-file")
    p.add_argument("--tolerance", type=float, default=300, help="seconds a timestamp may be off")
    p.add_argument("--events", help="also append each new event, as a JSON line, to this file")
    cfg = p.parse_args()
    with open(cfg.secret_file, "rb") as f:
        # Read as `corral integration create --signing-secret-file` reads it: whitespace around
        # the secret (an editor's final newline) is not part of it.
        cfg.secret = f.read().strip()

    server = http.server.ThreadingHTTPServer((cfg.host, cfg.port), Handler)
    server.cfg = cfg
    server.lock = threading.Lock()
    server.seen = {}  # insertion-ordered: the oldest id goes first when full
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
