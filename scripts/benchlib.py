"""Shared parts of the benchmark scripts: a release server on loopback with a fresh state directory."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

BIN = os.environ.get("CHAT_BACKEND_BIN", ".build/release/chat-backend")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, body=None, token=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


@contextlib.contextmanager
def running_server(**settings):
    """Starts `chat-backend serve` with rate limits off and `settings` as extra environment; yields
    (base URL, process, work directory) once /health answers, and stops it (SIGTERM) afterwards."""
    work = tempfile.mkdtemp(prefix="chat-bench-")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "STATE_DIRECTORY": work,
        "CHAT_BACKEND_CONFIG": "/dev/null",
        "JWT_SECRET": "bench-secret-bench-secret-bench-secret-0123",
        "RATE_LIMIT_API": "off",
        "RATE_LIMIT_AUTH": "off",
        "RATE_LIMIT_MESSAGES": "off",
        "LOG_LEVEL": "warning",
        **settings,
    }
    server = subprocess.Popen(
        [os.path.abspath(BIN), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                request("GET", base + "/health")
                break
            except Exception:
                time.sleep(0.1)
        yield base, server, work
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
