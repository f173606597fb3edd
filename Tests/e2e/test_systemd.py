"""systemd integration: readiness/status/stopping notifications and socket activation."""

from __future__ import annotations

import email.utils
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import JWT_SECRET, Server, create_session, free_port, post_json, register


@pytest.fixture
def notify_socket():
    """An AF_UNIX datagram socket the server reports to (a short path: sun_path is 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="cb-notify-"))
    path = directory / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def receive(sock: socket.socket, until: str, deadline: float, seen: list[str]) -> str:
    """Reads datagrams into `seen` until one has a line equal to `until`; returns that datagram."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no datagram with {until!r} arrived; got {seen!r}")
        sock.settimeout(remaining)
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            continue
        seen.append(data)
        if until in data.split("\n"):
            return data


def test_notify_ready_status_stopping(bin_path, tmp_path, notify_socket):
    sock, path = notify_socket
    server = Server(bin_path, tmp_path / "srv", env={"NOTIFY_SOCKET": str(path)})
    server.start(wait=False)
    try:
        seen: list[str] = []
        ready = receive(sock, "READY=1", time.monotonic() + 15, seen)

        # READY=1 means the listener accepts: connect and ask right now, no retry.
        with socket.create_connection(("127.0.0.1", server.port), timeout=2):
            pass
        r = requests.get(server.url("/health"), timeout=2)
        assert r.status_code == 200 and r.json()["status"] == "ok"

        statuses = [line for d in seen for line in d.split("\n") if line.startswith("STATUS=")]
        assert statuses, f"no STATUS= line before READY=1: {seen!r}"
        ready_status = [line for line in ready.split("\n") if line.startswith("STATUS=")]
        assert ready_status and str(server.port) in ready_status[0], ready
        # Storage is opened (and migrated) before readiness is announced.
        assert any("migration" in s.lower() or "storage" in s.lower() for s in statuses[:-1]), statuses

        server.proc.send_signal(signal.SIGTERM)
        stopping = receive(sock, "STOPPING=1", time.monotonic() + 15, seen)
        assert "STOPPING=1" in stopping
        # The store closes last, once the server and every service using it have stopped.
        flushing = receive(sock, "STATUS=Flushing writes and checkpointing", time.monotonic() + 15, seen)
        assert seen.index(flushing) > seen.index(stopping)
        assert server.proc.wait(timeout=15) == 0, server.logs()
        assert "stopped cleanly" in server.logs(), server.logs()
    finally:
        server.stop()


def test_watchdog_pings_at_half_the_interval(bin_path, tmp_path, notify_socket):
    """With WATCHDOG_USEC set (WatchdogSec=), WATCHDOG=1 arrives about every half interval."""
    sock, path = notify_socket
    server = Server(bin_path, tmp_path / "srv", env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    server.start(wait=False)
    try:
        seen: list[str] = []
        receive(sock, "READY=1", time.monotonic() + 15, seen)
        start = time.monotonic()
        pings = 0
        while time.monotonic() - start < 1.5:
            receive(sock, "WATCHDOG=1", time.monotonic() + 1, seen)
            pings += 1
        # 1.5 s at one ping per 0.2 s is about 7; allow for scheduling.
        assert 4 <= pings <= 12, pings
    finally:
        server.stop()


def test_no_notify_socket_still_serves(start_server):
    """Outside systemd (no NOTIFY_SOCKET) notifications are no-ops and the server just runs."""
    server = start_server()
    assert requests.get(server.url("/api/health"), timeout=5).json()["storage"]["status"] == "up"


@pytest.fixture
def activation(tmp_path):
    """systemd-socket-activate, a state directory and a free port, for a socket-activated server."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package 'systemd')")
    directory = tmp_path / "activated"
    directory.mkdir()
    return activate, directory, free_port()


def response_shape(base: str, token: str) -> dict[str, list[str]]:
    """The header names (values vary) of a few kinds of response: a probe, a 404, an API answer,
    a preflight-less error with a body, and a request id passed by the client."""
    auth = {"Authorization": f"Bearer {token}"}
    probes = {
        "health": requests.get(base + "/health", timeout=10),
        "not found": requests.get(base + "/api/nope", timeout=10),
        "sessions": requests.get(base + "/api/sessions", headers=auth, timeout=10),
        "unauthenticated": requests.get(base + "/api/sessions", timeout=10),
        "request id": requests.get(base + "/health", headers={"X-Request-Id": "shape-1"}, timeout=10),
    }
    shape = {name: sorted(h.lower() for h in r.headers) for name, r in probes.items()}
    assert probes["request id"].headers.get("X-Request-Id") == "shape-1"
    for name, r in probes.items():
        assert "date" in shape[name] and "x-request-id" in shape[name], (name, r.headers)
        sent = email.utils.parsedate_to_datetime(r.headers["Date"])  # RFC 9110 IMF-fixdate
        assert r.headers["Date"].endswith(" GMT") and abs(sent.timestamp() - time.time()) < 5, r.headers["Date"]
    return shape


def test_socket_activation(bin_path, activation, start_server):
    activate, directory, port = activation
    # The configured port is a different, unused one: the server must use the passed socket, not bind its own.
    unused_port = free_port()
    env_pass = {
        "JWT_SECRET": JWT_SECRET,
        "STATE_DIRECTORY": str(directory),
        "CHAT_BACKEND_CONFIG": "/dev/null",
        "RATE_LIMIT_API": "off",
        "RATE_LIMIT_AUTH": "off",
        "RATE_LIMIT_MESSAGES": "off",
        "LOG_LEVEL": "info",
    }
    command = [activate, "-l", f"127.0.0.1:{port}"]
    for key, value in env_pass.items():
        command += ["-E", f"{key}={value}"]
    command += [bin_path, "serve", "--host", "127.0.0.1", "--port", str(unused_port),
                "--database-url", f"sqlite://{directory}/chat.db"]

    server = Server(bin_path, directory, port=port)
    server.start(command=command, wait=False)
    try:
        deadline = time.monotonic() + 10
        while f"Listening on 127.0.0.1:{port}" not in server.stderr():
            assert server.proc.poll() is None, f"systemd-socket-activate exited early:\n{server.logs()}"
            assert time.monotonic() < deadline, f"systemd-socket-activate did not listen:\n{server.logs()}"
            time.sleep(0.02)
        assert "Execing" not in server.stderr(), "the server must start only on the first connection"
        # systemd-socket-activate starts the server on the first connection; that request must be answered.
        r = requests.get(server.url("/health"), timeout=15)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok"

        user = register(server)
        session = create_session(server, user["accessToken"])
        r = post_json(server.url(f"/api/sessions/{session['sessionId']}/messages"),
                      {"content": "over an inherited socket", "clientMessageId": "sa-1"}, token=user["accessToken"])
        assert r.status_code == 201, r.text
        message = r.json()
        r = requests.get(server.url(f"/api/sessions/{session['sessionId']}/messages"),
                         headers={"Authorization": f"Bearer {user['accessToken']}"}, timeout=10)
        assert r.status_code == 200, r.text
        assert [m["id"] for m in r.json()["messages"]] == [message["id"]]

        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{unused_port}/health", timeout=2)

        logs = server.stdout() + server.stderr()
        assert "the socket passed by systemd" in logs, server.logs()
        assert f"127.0.0.1:{unused_port}" not in logs, server.logs()

        # The same responses, header for header, as from a server on its own listener.
        normal = start_server(env={"RATE_LIMIT_API": "off", "RATE_LIMIT_AUTH": "off"})
        other = register(normal)
        assert response_shape(server.url(""), user["accessToken"]) == response_shape(normal.url(""), other["accessToken"])
    finally:
        server.stop()



def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes the connection; (data, closed within timeout)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except socket.timeout:
        return data, False
    return data, True


def test_socket_activation_shutdown_and_connections_accepted_before_it(bin_path, activation):
    """Connections the server accepted just before SIGTERM, their requests not yet sent.

    Under socket activation, connections arriving during a restart wait in systemd's socket, but
    those the old process already accepted are its to handle: one that sends its request after
    shutdown began is answered and then closed, one that stays silent is closed, and the process
    exits promptly, well within systemd's stop timeout.
    """
    activate, directory, port = activation
    command = [activate, "-l", f"127.0.0.1:{port}", "-E", f"JWT_SECRET={JWT_SECRET}",
               "-E", f"STATE_DIRECTORY={directory}", "-E", "CHAT_BACKEND_CONFIG=/dev/null",
               bin_path, "serve", "--database-url", f"sqlite://{directory}/chat.db"]
    server = Server(bin_path, directory, port=port)
    server.start(command=command, wait=False)
    try:
        server.wait_healthy()  # the first connection starts the server
        late = socket.create_connection(("127.0.0.1", port), timeout=10)
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        time.sleep(0.5)  # both accepted
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # shutdown has begun
        late.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer, closed = read_until_closed(late, timeout=10)
        assert answer.startswith(b"HTTP/1.1 200"), f"{answer!r}\n{server.logs()}"
        assert closed, "the answered connection must be closed, not kept alive, during shutdown"
        _, closed = read_until_closed(silent, timeout=10)
        assert closed, "a connection that sends nothing must not hold up shutdown"
        assert server.proc.wait(timeout=10) == 0, server.logs()
        late.close()
        silent.close()
    finally:
        server.stop()
