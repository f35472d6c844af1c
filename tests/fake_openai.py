"""A small real OpenAI-compatible HTTP server for fault tests: it streams completions the way vLLM
does (``min_tokens``/``ignore_eos`` taken, usage in the last chunk), and misbehaves on request.

    python tests/fake_openai.py PORT [--fail-every K] [--stall-every K] [--die-after N] [--not-openai]
                                     [--mark-after N PATH]

--fail-every K: every K-th completion answers HTTP 503. --stall-every K: every K-th sends one
token and then nothing (until the client gives up). --die-after N: the process exits (code 17)
when the N-th completion arrives. --not-openai: /v1/models answers 404 (a web server, not an API). --mark-after N PATH: when the
N-th completion arrives, its process id is written to PATH (an event a test can wait on).
Each token costs a little real CPU work, so the server's process shows CPU time to attribute.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake-model"
counter = itertools.count(1)
lock = threading.Lock()
options = argparse.Namespace()


def burn(seconds: float) -> None:
    """Real CPU work for about ``seconds`` of CPU time: what a model's forward pass would use."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += sum(range(200))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if options.not_openai or self.path.rstrip("/") not in ("/v1/models", "/health"):
            data = b"<html>not here</html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with lock:
            number = next(counter)
        if options.mark_after and number == int(options.mark_after[0]):
            with open(options.mark_after[1] + ".tmp", "w") as mark:
                mark.write(str(os.getpid()))
            os.replace(options.mark_after[1] + ".tmp", options.mark_after[1])
        if options.die_after and number >= options.die_after:
            os._exit(17)
        if options.fail_every and number % options.fail_every == 0:
            self._json(503, {"error": "overloaded"})
            return
        unknown = set(body) - {"model", "prompt", "messages", "max_tokens", "stream", "stream_options",
                               "temperature", "min_tokens", "ignore_eos"}
        if unknown:
            self._json(400, {"error": f"unknown fields {sorted(unknown)}"})
            return
        tokens = int(body.get("max_tokens") or 16)
        if not body.get("ignore_eos"):
            tokens = max(1, tokens // 2)  # without the length fields it "stops at EOS" early
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        stall = options.stall_every and number % options.stall_every == 0
        try:
            for i in range(tokens):
                burn(0.002)
                self._event({"choices": [{"index": 0, "text": f" w{i}"}]})
                if stall:
                    time.sleep(3600)
            self._event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
            self._event({"choices": [], "usage": {"prompt_tokens": len(str(body.get("prompt", "")).split()),
                                                  "completion_tokens": tokens}})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _event(self, chunk: dict) -> None:
        self.wfile.write(f"data: {json.dumps({'object': 'text_completion', 'model': MODEL, **chunk})}\n\n".encode())
        self.wfile.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--stall-every", type=int, default=0)
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--not-openai", action="store_true")
    parser.add_argument("--mark-after", nargs=2, metavar=("N", "PATH"), type=str, default=None)
    parser.parse_args(namespace=options)
    server = ThreadingHTTPServer((options.host, options.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
