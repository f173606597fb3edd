"""Fake agent back ends the agent tests start on loopback: a signed webhook and an OpenAI-compatible server that
streams its answer as server-sent events. Each records what it received; behaviour follows the user's text."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer_redirect(handler: BaseHTTPRequestHandler, location: str) -> None:
    """Answers 301 to `location`, with no body."""
    handler.send_response(301)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def calls_for(self, content: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r.get("content") == content]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class WebhookServer(_Server):
    """POST / with `{session, message, recentMessages}`. Checks `X-Chat-Signature` (HMAC-SHA256 of
    `<X-Chat-Timestamp>.<body>`) and answers 401 when it is wrong. By the message text:
    `fail` → 503, `slow` → answers after `slow_seconds`, `garbage` → not JSON, `to human` → handoff to humans,
    `close it` → resolve, `silent` → 204, `redirect` → 301 to a GET that would answer (recorded in `followed`),
    anything else → `{"reply": "hook: <text>"}`."""

    def __init__(self, secret: str, slow_seconds: float = 3.0):
        self.secret = secret.encode()
        self.slow_seconds = slow_seconds
        self.followed: list[str] = []
        super().__init__(_WebhookHandler)


class _WebhookHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        fake: WebhookServer = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        timestamp = self.headers.get("X-Chat-Timestamp", "")
        expected = "sha256=" + hmac.new(fake.secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(expected, self.headers.get("X-Chat-Signature", ""))
        payload = json.loads(body) if body else {}
        content = payload.get("message", {}).get("content")
        fake.record({"content": content, "payload": payload, "signed": signed, "timestamp": timestamp,
                     "request_id": self.headers.get("X-Request-Id")})
        if not signed:
            return self._answer(401, {"error": "bad signature"})
        if abs(time.time() - int(timestamp)) > 300:
            return self._answer(401, {"error": "stale timestamp"})
        if content == "fail":
            return self._answer(503, {"error": "down"})
        if content == "slow":
            time.sleep(fake.slow_seconds)
            return self._answer(200, {"reply": "too late"})
        if content == "garbage":
            return self._raw(200, b"<html>oops</html>", "text/html")
        if content == "to human":
            return self._answer(200, {"reply": "A person will take over.", "handoff": "human"})
        if content == "close it":
            return self._answer(200, {"reply": "Closing this conversation.", "resolve": True, "metadata": {"ticket": 42}})
        if content == "silent":
            return self._raw(204, b"", None)
        if content == "redirect":
            return answer_redirect(self, f"{fake.url}/elsewhere")
        return self._answer(200, {"reply": f"hook: {content}", "metadata": {"seen": len(payload.get("recentMessages", []))}})

    def do_GET(self):
        self.server.fake.followed.append(self.path)
        self._answer(200, {"reply": "followed a redirect"})

    def _answer(self, status: int, body: dict):
        self._raw(status, json.dumps(body).encode(), "application/json")

    def _raw(self, status: int, data: bytes, content_type: str | None):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class OpenAIServer(_Server):
    """POST /v1/chat/completions, streamed: the reply `Echoing: <text>` in word-sized chunks, `chunk_delay`
    apart, then `[DONE]`. Requires `Authorization: Bearer <api_key>`. Text `fail` → 500 (before streaming); `hold` →
    answers after 3 s; `flood` → 2000 pieces `x` at once; `nul` → `a`, NUL, `b`; `cr` → lines ended by CR alone;
    `cut` → three pieces, then the stream ends (no finish reason, no `[DONE]`); `drop` → three pieces, then an error."""

    def __init__(self, api_key: str, chunk_delay: float = 0.05):
        self.api_key = api_key
        self.chunk_delay = chunk_delay
        super().__init__(_OpenAIHandler)


class _OpenAIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        fake: OpenAIServer = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        content = body["messages"][-1]["content"]
        fake.record({"content": content, "path": self.path, "body": body, "authorization": self.headers.get("Authorization")})
        if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            return self._json(401, {"error": {"message": "bad key or path"}})
        if content == "fail":
            return self._json(500, {"error": {"message": "overloaded"}})
        if content == "hold":
            time.sleep(3)
        words = f"Echoing: {content}".split(" ")
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        delay, end, newline = fake.chunk_delay, "stop", "\n"
        if content == "flood":
            pieces, delay = ["x"] * 2000, 0
        elif content == "nul":
            pieces = ["a", "\u0000", "b"]
        elif content == "cr":
            newline = "\r"
        elif content in ("cut", "drop"):
            pieces, end = ["one ", "two ", "three"], content
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, piece in enumerate(pieces):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [{"index": 0, "delta": ({"role": "assistant"} if i == 0 else {}) | {"content": piece},
                                  "finish_reason": None}]}
            self._chunk(f"data: {json.dumps(chunk)}{newline}{newline}".encode())
            if delay:
                time.sleep(delay)
        if end == "drop":
            self._chunk(f"data: {json.dumps({'error': {'message': 'the model went away'}})}\n\n".encode())
        elif end == "stop":
            done = {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self._chunk(f"data: {json.dumps(done)}{newline}{newline}data: [DONE]{newline}{newline}".encode())
        self._chunk(b"")

    def _chunk(self, data: bytes):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
