"""A webhook receiver for the tests: every request is verified with the Standard Webhooks
reference library (standardwebhooks, from PyPI), not with our own code.

Usage: webhook_receiver.py DIR [PORT]

DIR/secret holds the endpoint's whsec_ secret. Listens on 127.0.0.1 (PORT, or a free port) and
prints "listening PORT". Appends one JSON line per request to DIR/requests.jsonl, flushed at
once: {"id": webhook-id, "path": the request's path, "answer": status, "verified": bool, "error":
why not, "payload": the verified body}. Answers 204 to a verified request; the status code
written in DIR/answer while that file exists (e.g. 500, 410), whatever the request; 400 to a
request that fails verification. Stops when stdin is closed (the test is done).
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

DIR = sys.argv[1]
with open(os.path.join(DIR, "secret")) as f:
    WEBHOOK = Webhook(f.read().strip())
LOCK = threading.Lock()


def forced_answer():
    try:
        with open(os.path.join(DIR, "answer")) as f:
            return int(f.read().strip())
    except FileNotFoundError:
        return None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        record = {"id": self.headers.get("webhook-id"), "path": self.path, "verified": False, "error": None, "payload": None}
        try:
            record["payload"] = WEBHOOK.verify(body, dict(self.headers))
            record["verified"] = True
        except (WebhookVerificationError, ValueError) as e:
            record["error"] = repr(e)
        forced = forced_answer()
        record["answer"] = forced if forced is not None else (204 if record["verified"] else 400)
        with LOCK:
            with open(os.path.join(DIR, "requests.jsonl"), "a") as out:
                out.write(json.dumps(record) + "\n")
        self.send_response(record["answer"])
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass


def main():
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
