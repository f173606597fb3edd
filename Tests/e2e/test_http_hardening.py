"""The HTTP/1.1 connection layer under hostile or unusual clients: malformed requests, slow or silent clients
(HTTP_HEADER_TIMEOUT), a connection cap (MAX_CONNECTIONS), `Connection: close`, WebSocket upgrades on a
keep-alive connection, 405 answers and errors raised before the router.

Most of it is below what HTTP libraries let a client do, so requests are written on raw sockets and responses
parsed by hand (helpers shared with test_websocket_frames.py). Every read has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
import os
import select
import socket
import ssl
import time

import aiohttp
import pytest
import requests
import socketio

from conftest import assert_json_error, create_session, register
from test_websocket_frames import WS, RawSocket, accept_for, read_response, upgrade_request

RECV = 5.0
EOF_WAIT = 2.0        # after `Connection: close` (or an error answer) the server closes within this
HEADER_TIMEOUT = 2.0  # HTTP_HEADER_TIMEOUT given to the servers of the timeout tests
SLACK = 1.5           # how late after the header timeout a connection may be closed


def run(scenario, timeout: float = 30.0):
    async def bounded():
        return await asyncio.wait_for(scenario, timeout)
    return asyncio.run(bounded())


def raw(server, timeout: float = RECV) -> RawSocket:
    return RawSocket(server.port, timeout=timeout)


def get_health(conn: RawSocket, close: bool = False) -> None:
    conn.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")


def connection_tokens(r) -> list[str]:
    return [v.lower() for v in r.header_values("Connection")]


def assert_security_headers(r) -> None:
    """The headers every response of the server carries, error answers of the connection layer included."""
    assert r.header("X-Content-Type-Options") == "nosniff", r.headers
    assert r.header("X-Frame-Options") == "DENY", r.headers
    assert "default-src 'none'" in (r.header("Content-Security-Policy") or ""), r.headers
    assert r.header("Cache-Control") == "no-store", r.headers
    assert r.header("X-Request-Id"), r.headers


def assert_error_body(r, status: int, code: str | None) -> dict:
    """`status`, JSON content type, the security headers, and exactly {"error":{"code","message","details"}}."""
    assert r.status == status, f"expected {status}, got {r.status} {r.headers} {r.body[:300]!r}"
    assert (r.header("Content-Type") or "").startswith("application/json"), r.headers
    assert_security_headers(r)
    try:
        body = json.loads(r.body)
    except ValueError:
        raise AssertionError(f"the body is not JSON: {r.body[:300]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, body
    assert isinstance(error["message"], str) and error["message"], body
    if code is not None:
        assert error["code"] == code, body
    return error


def assert_closed_by_server(conn: RawSocket, timeout: float = EOF_WAIT, after: str = "the response") -> None:
    how, data = conn.wait_closed(timeout)
    assert how is not None, f"the server kept the connection open for {timeout}s after {after}"
    assert not data, f"the server sent more after {after}: {data[:200]!r}"


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello record)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:16]
    return hello


def server_fds(server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


# ---- H1 malformed requests ------------------------------------------------------------------------------------

MALFORMED = {
    "garbage-request-line": b"GARBAGE\r\n\r\n",
    "method-not-a-token": b"G@T /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "nul-in-header-value": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Test: a\x00b\r\n\r\n",
    "control-byte-in-header-value": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Test: a\x01b\r\n\r\n",
    "space-in-header-name": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX Test: value\r\n\r\n",
    "http-9.9": b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    # RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host, holding a host and port.
    "http11-without-host": b"GET /health HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: example.com\r\n\r\n",
    "host-with-a-space": b"GET /health HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host-with-userinfo-and-path": b"GET /health HTTP/1.1\r\nHost: user@example.com/x\r\n\r\n",
    "websocket-upgrade-without-host": None,  # built at run time
    "tls-client-hello": None,  # built at run time
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_gets_400_and_close(server, case):
    data = MALFORMED[case]
    if case == "tls-client-hello":
        data = client_hello()
    elif case == "websocket-upgrade-without-host":
        request, _ = upgrade_request("/ws")
        data = b"".join(line + b"\r\n" for line in request.split(b"\r\n") if not line.lower().startswith(b"host:"))
    conn = raw(server)
    try:
        conn.send(data)
        try:
            r = read_response(conn, timeout=3)
        except AssertionError as e:
            raise AssertionError(f"no 400 answer to a malformed request ({case}): {e}") from None
        assert_error_body(r, 400, "bad_request")
        assert r.body and json.loads(r.body)["error"]["details"] is None, r.body
        assert "close" in connection_tokens(r), f"a 400 for a malformed request must say Connection: close: {r.headers}"
        assert_closed_by_server(conn, after="the 400")
    finally:
        conn.close()
    assert requests.get(server.url("/health"), timeout=5).status_code == 200


# ---- H2 header timeout ----------------------------------------------------------------------------------------


@pytest.fixture
def timeout_server(start_server):
    return start_server(env={"HTTP_HEADER_TIMEOUT": f"{HEADER_TIMEOUT:g}s"})


def _assert_closed_in_window(conn: RawSocket, opened: float, what: str) -> float:
    how, data = conn.wait_closed(HEADER_TIMEOUT + SLACK - (time.monotonic() - opened) + 0.05)
    elapsed = time.monotonic() - opened
    assert how is not None, f"{what}: still open {elapsed:.2f}s after connecting (HTTP_HEADER_TIMEOUT={HEADER_TIMEOUT:g}s)"
    assert elapsed <= HEADER_TIMEOUT + SLACK, f"{what}: closed only after {elapsed:.2f}s"
    assert elapsed >= HEADER_TIMEOUT - 0.5, f"{what}: closed after {elapsed:.2f}s, before the header timeout"
    return elapsed


def test_header_timeout_closes_a_silent_connection(timeout_server):
    conn = raw(timeout_server)
    try:
        _assert_closed_in_window(conn, time.monotonic(), "a connection that sent nothing")
    finally:
        conn.close()


def test_header_timeout_closes_a_half_sent_head(timeout_server):
    conn = raw(timeout_server)
    opened = time.monotonic()
    try:
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        _assert_closed_in_window(conn, opened, "a connection that sent half a request head")
    finally:
        conn.close()


def test_header_timeout_is_not_reset_by_trickling(timeout_server):
    """One header line every 0.4 s: the timer runs from the connection's start, not from the last byte."""
    conn = raw(timeout_server)
    opened = time.monotonic()
    closed_at = None
    try:
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while time.monotonic() - opened < HEADER_TIMEOUT + SLACK + 0.5:
            readable, _, _ = select.select([conn.sock], [], [], 0.4)
            if readable:
                how, data = conn.wait_closed(0.05)
                if how is not None:
                    closed_at = time.monotonic()
                    break
            n += 1
            if not conn.try_send(f"X-Trickle-{n}: {n}\r\n".encode()):
                closed_at = time.monotonic()
                break
        assert closed_at is not None, \
            f"a head trickled one line every 0.4 s was still open {time.monotonic() - opened:.2f}s after connecting ({n} lines)"
        elapsed = closed_at - opened
        assert HEADER_TIMEOUT - 0.5 <= elapsed <= HEADER_TIMEOUT + SLACK, \
            f"the trickling connection was closed {elapsed:.2f}s after connecting; expected about {HEADER_TIMEOUT:g}s"
    finally:
        conn.close()


def test_idle_keepalive_connection_outlives_the_header_timeout(timeout_server):
    conn = raw(timeout_server)
    try:
        get_health(conn)
        r = read_response(conn)
        assert r.status == 200 and "close" not in connection_tokens(r), (r.status, r.headers)
        how, data = conn.wait_closed(HEADER_TIMEOUT + 2)
        assert how is None, f"an idle keep-alive connection was closed ({how}) within {HEADER_TIMEOUT + 2:g}s: the header " \
                            f"timeout must not apply between requests (idle keep-alive lasts 60 s); data {data[:200]!r}"
        get_health(conn, close=True)
        assert read_response(conn).status == 200
    finally:
        conn.close()


def _socket_state(sock: socket.socket) -> str:
    """"closed" when the peer closed (EOF or reset), else "open"; reads and drops anything pending."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed"
    except BlockingIOError:
        return "open"
    except (ConnectionResetError, ConnectionAbortedError):
        return "closed"


def _timed_health(port: int) -> float:
    started = time.monotonic()
    conn = RawSocket(port, timeout=2)
    try:
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = read_response(conn, timeout=2)
        assert r.status == 200, (r.status, r.body[:200])
    finally:
        conn.close()
    return time.monotonic() - started


def test_header_timeout_under_load(start_server):
    """500 stalled connections (half silent, half with a partial head) neither slow down other clients nor
    outlive the header timeout, and the server gives their descriptors back."""
    # MAX_CONNECTIONS well above the 500 so that a default cap cannot be what answers the fresh connections.
    server = start_server(env={"HTTP_HEADER_TIMEOUT": f"{HEADER_TIMEOUT:g}s", "MAX_CONNECTIONS": "2000"})
    port = server.port
    time.sleep(0.2)
    fds_before = server_fds(server)
    stalled: list[socket.socket] = []
    try:
        for i in range(500):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            stalled.append(s)
        opened = time.monotonic()

        # Meanwhile other clients are served at once.
        samples = []
        while time.monotonic() < opened + HEADER_TIMEOUT - 0.3 or len(samples) < 5:
            samples.append(_timed_health(port))
            time.sleep(0.2)
        slow = [round(t, 3) for t in samples if t >= 1.0]
        assert not slow, f"/health took {slow} s on fresh connections while 500 connections were stalled (all: {samples})"

        time.sleep(max(0.0, opened + HEADER_TIMEOUT + 2 - time.monotonic()))
        states = [_socket_state(s) for s in stalled]
        still_open = [i for i, state in enumerate(states) if state == "open"]
        assert not still_open, (f"{len(still_open)} of 500 stalled connections were still open {HEADER_TIMEOUT + 2:g}s after "
                                f"they were opened (silent: {sum(1 for i in still_open if i % 2 == 0)}, "
                                f"partial head: {sum(1 for i in still_open if i % 2)})")
        fds_after = server_fds(server)
        assert fds_after <= fds_before + 20, f"the server holds {fds_after} fds, {fds_before} before the 500 connections"
    finally:
        for s in stalled:
            s.close()
    assert _timed_health(port) < 1.0


# ---- H3 connection cap ----------------------------------------------------------------------------------------


def test_connection_cap(start_server):
    server = start_server(env={"MAX_CONNECTIONS": "20", "HTTP_HEADER_TIMEOUT": "30s"})
    time.sleep(0.3)  # the start-up health checks' connections are gone
    idle = [raw(server) for _ in range(20)]
    try:
        time.sleep(0.5)
        extra = raw(server)
        try:
            # The server may answer at once, or after reading a request: give it the chance to do the former first,
            # so that a request sent on an already refused connection cannot turn the answer into a reset.
            readable, _, _ = select.select([extra.sock], [], [], 0.5)
            if not readable:
                extra.try_send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                r = read_response(extra, timeout=3)
            except AssertionError as e:
                raise AssertionError(f"the 21st connection (MAX_CONNECTIONS=20) got no 503 answer: {e}") from None
            assert_json_error_raw(r, 503, "too_many_connections")
            assert "close" in connection_tokens(r), r.headers
            assert r.header("Retry-After"), f"a 503 for too many connections needs Retry-After: {r.headers}"
            assert_closed_by_server(extra, after="the 503")
        finally:
            extra.close()
    finally:
        for conn in idle:
            conn.close()

    deadline = time.monotonic() + 2.0
    last = None
    while time.monotonic() < deadline:
        try:
            conn = raw(server, timeout=1)
            try:
                get_health(conn, close=True)
                last = read_response(conn, timeout=1)
                if last.status == 200:
                    return
            finally:
                conn.close()
        except (AssertionError, OSError) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"/health did not answer 200 within 2 s of closing the idle connections: {last}")


def assert_json_error_raw(r, status: int, code: str) -> dict:
    """Status, JSON content type and the error shape (no header requirements beyond that)."""
    assert r.status == status, f"expected {status}, got {r.status} {r.headers} {r.body[:300]!r}"
    assert (r.header("Content-Type") or "").startswith("application/json"), r.headers
    body = json.loads(r.body)
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    assert body["error"]["code"] == code, body
    return body["error"]


# ---- H4 Connection: close ---------------------------------------------------------------------------------------


def test_connection_close_is_answered_and_honoured(server):
    conn = raw(server)
    try:
        get_health(conn, close=True)
        r = read_response(conn)
        assert r.status == 200, r.status
        assert "close" in connection_tokens(r), f"the response to a Connection: close request must carry it: {r.headers}"
        assert_closed_by_server(conn)
    finally:
        conn.close()


def test_http11_connection_stays_open_by_default(server):
    conn = raw(server)
    try:
        get_health(conn)
        first = read_response(conn)
        assert first.status == 200 and "close" not in connection_tokens(first), (first.status, first.headers)
        get_health(conn)
        second = read_response(conn)
        assert second.status == 200, second.status
    finally:
        conn.close()


def test_http10_without_keepalive_is_closed(server):
    conn = raw(server)
    try:
        conn.send(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        r = read_response(conn)
        assert r.status == 200, r.status
        assert "close" in connection_tokens(r), f"an HTTP/1.0 response without keep-alive must say Connection: close: {r.headers}"
        # RFC 9110 §6.2: the server names the highest version it speaks, and uses nothing 1.0 lacks.
        assert r.raw_head.startswith(b"HTTP/1.1 200 "), r.raw_head[:40]
        assert r.header("Transfer-Encoding") is None and r.header("Content-Length"), r.headers
        assert_closed_by_server(conn)
    finally:
        conn.close()


# ---- H5 WebSocket upgrade on a keep-alive connection --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws", "/socket.io/?EIO=4&transport=websocket"], ids=["ws", "socketio"])
def test_upgrade_on_a_connection_that_served_a_request(server, path):
    user = register(server)
    conn = raw(server)
    try:
        get_health(conn)
        r = read_response(conn)
        assert r.status == 200 and "close" not in connection_tokens(r), (r.status, r.headers)
        try:
            ws = WS(server.port, path, conn=conn)  # the same socket: handshake (101, accept) and, on Socket.IO, 0{...}
        except AssertionError as e:
            raise AssertionError(f"upgrade to {path} after a request on the same connection: {e}") from None
        if path == "/ws":
            ws.send_text(json.dumps({"type": "authenticate", "token": user["accessToken"], "id": 1}))
            event = json.loads(ws.recv_text(what="the authenticate ack"))
            assert event == {"type": "ack", "event": "authenticate", "id": 1, "userId": user["user"]["id"]}, event
        else:
            assert ws.open_packet and ws.open_packet.get("sid"), ws.open_packet
    finally:
        conn.close()


def test_aiohttp_websocket_on_a_reused_connection(server):
    user = register(server)
    created, reused = [], []
    trace = aiohttp.TraceConfig()

    async def on_create(session, ctx, params):
        created.append(1)

    async def on_reuse(session, ctx, params):
        reused.append(1)

    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)

    async def scenario():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace],
                                         timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(server.url("/health")) as r:
                assert r.status == 200
                await r.read()
            try:
                ws = await http.ws_connect(server.url("/ws"), autoping=False)
            except aiohttp.WSServerHandshakeError as e:
                raise AssertionError(f"ws_connect after GET /health on a one-connection pool (connections created "
                                     f"{len(created)}, reused {len(reused)}): {e.status} {e.message}") from None
            try:
                await ws.send_str(json.dumps({"type": "authenticate", "token": user["accessToken"], "id": 1}))
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                assert json.loads(msg.data) == {"type": "ack", "event": "authenticate", "id": 1,
                                                "userId": user["user"]["id"]}, msg.data
            finally:
                await ws.close()

    run(scenario(), timeout=20)
    # Not a server requirement, but it shows that the case under test happened: the upgrade reused the connection.
    assert (len(created), len(reused)) == (1, 1), \
        f"aiohttp created {len(created)} and reused {len(reused)} connections; the upgrade was not on the reused one"


def test_python_socketio_async_client_upgrades_to_websocket(server):
    user = register(server)

    async def scenario():
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(server.base_url, auth={"token": user["accessToken"]}, socketio_path="socket.io",
                                 wait_timeout=5)
            deadline = time.monotonic() + 5
            while client.transport() != "websocket" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert client.transport() == "websocket", \
                f"python-socketio's AsyncClient stayed on {client.transport()!r}: the upgrade from polling failed"
            assert client.connected
            sid = create_session(server, user["accessToken"])["sessionId"]
            ack = await client.call("join", {"sessionId": sid}, timeout=5)
            assert ack["event"] == "join" and ack["sessionId"] == sid, ack
        finally:
            await asyncio.wait_for(client.disconnect(), 5)

    run(scenario(), timeout=25)


# ---- H6 405 -------------------------------------------------------------------------------------------------------

METHOD_CASES = [
    pytest.param("DELETE", "/health", False, {"GET", "HEAD"}, id="DELETE-health"),
    pytest.param("PUT", "/api/sessions", True, {"POST"}, id="PUT-sessions"),
    pytest.param("PATCH", "/auth/login", False, {"POST"}, id="PATCH-login"),
    # Paths with parameters, matched the way the router matches them.
    pytest.param("PATCH", f"/api/sessions/{uuid.uuid4()}", True, {"GET", "HEAD", "DELETE"}, id="PATCH-session"),
    pytest.param("PUT", f"/api/sessions/{uuid.uuid4()}/messages", True, {"GET", "HEAD", "POST"}, id="PUT-messages"),
    pytest.param("GET", f"/api/sessions/{uuid.uuid4()}/resolve", True, {"POST"}, id="GET-resolve"),
    pytest.param("PUT", f"/api/sessions/{uuid.uuid4()}/messages/{uuid.uuid4()}", True, {"GET", "HEAD", "PATCH", "DELETE"}, id="PUT-message"),
    pytest.param("POST", f"/api/attachments/{uuid.uuid4()}", True, {"GET", "HEAD"}, id="POST-attachment"),
]


@pytest.mark.parametrize("method,path,auth,allowed", METHOD_CASES)
def test_method_not_allowed(server, method, path, auth, allowed):
    headers = {"Authorization": f"Bearer {register(server)['accessToken']}"} if auth else {}
    r = requests.request(method, server.url(path), headers=headers, timeout=5)
    assert_json_error(r, 405, "method_not_allowed")
    assert "Allow" in r.headers, f"a 405 needs an Allow header: {r.headers}"
    listed = [m.strip().upper() for m in r.headers["Allow"].split(",") if m.strip()]
    assert sorted(listed) == sorted(allowed), f"Allow: {r.headers['Allow']!r}, expected exactly {sorted(allowed)}"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_path_is_still_404(server, method):
    r = requests.request(method, server.url("/no/such/route"), timeout=5)
    assert_json_error(r, 404, "not_found")


def test_head_health_has_no_body(server):
    conn = raw(server)
    try:
        conn.send(b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        r = read_response(conn, head=True)
        assert r.status == 200, (r.status, r.headers)
        # Had the server sent a body after the head, it would be read as the start of the next response.
        get_health(conn, close=True)
        r2 = read_response(conn)
        assert r2.status == 200 and json.loads(r2.body)["status"] == "ok", r2.body[:200]
    finally:
        conn.close()


# ---- H7 errors below the router --------------------------------------------------------------------------------


def _answer(server, request: bytes):
    conn = raw(server)
    conn.send(request)
    try:
        return conn, read_response(conn, timeout=3)
    except AssertionError as e:
        conn.close()
        raise AssertionError(f"no HTTP answer to {request.splitlines()[0]!r}: {e}") from None


def test_upgrade_header_without_connection_upgrade_is_400(server):
    request, _ = upgrade_request("/api/health", connection=None)
    conn, r = _answer(server, request)
    try:
        assert_error_body(r, 400, None)
        assert "close" in connection_tokens(r), r.headers
        assert_closed_by_server(conn, after="the 400")
    finally:
        conn.close()


def test_unsupported_websocket_version_is_426(server):
    request, _ = upgrade_request("/ws", version="8")
    conn, r = _answer(server, request)
    try:
        assert_error_body(r, 426, None)
        assert r.header("Sec-WebSocket-Version") == "13", f"a 426 must name the supported version: {r.headers}"
        # RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
        assert r.header("Upgrade") == "websocket", f"a 426 must carry Upgrade: {r.headers}"
    finally:
        conn.close()


def test_websocket_endpoint_asked_for_without_a_handshake_is_426(server):
    """RFC 9110 §15.5.22: `/ws` exists, over the WebSocket protocol: a plain request is told which one
    (426 with `Upgrade: websocket`), not that nothing is there; the connection stays usable."""
    with requests.Session() as http:
        r = http.get(server.url("/ws"), timeout=5)
        assert r.status_code == 426, (r.status_code, r.text)
        assert r.json()["error"]["code"] == "upgrade_required", r.text
        assert r.headers.get("Upgrade") == "websocket", r.headers
        assert "upgrade" in r.headers.get("Connection", "").lower(), r.headers
        assert http.get(server.url("/health"), timeout=5).status_code == 200
    other = requests.post(server.url("/ws"), timeout=5)
    assert other.status_code == 405 and other.headers.get("Allow") == "GET, HEAD", (other.status_code, other.headers)


def test_upgrade_without_key_is_400(server):
    request, _ = upgrade_request("/ws", key="")
    conn, r = _answer(server, request)
    try:
        assert_error_body(r, 400, None)
    finally:
        conn.close()


def test_upgrade_key_with_whitespace_around_it_is_accepted(server):
    """RFC 9110 §5.5: whitespace around a field value is not part of it."""
    key = base64.b64encode(os.urandom(16)).decode()
    request, _ = upgrade_request("/ws", key=key + " \t ")
    conn, r = _answer(server, request)
    try:
        assert r.status == 101, (r.status, r.body[:200])
        assert r.header("Sec-WebSocket-Accept") == accept_for(key), r.headers
    finally:
        conn.close()


def test_upgrade_to_a_non_websocket_path_is_400(server):
    request, _ = upgrade_request("/api/health")
    conn, r = _answer(server, request)
    try:
        assert_error_body(r, 400, None)
    finally:
        conn.close()


def test_http10_without_host_and_bracketed_or_empty_hosts_are_accepted(server):
    """HTTP/1.0 may leave Host out; an IP literal with a port, and an empty Host, are valid."""
    for request in (b"GET /health HTTP/1.0\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nHost: [::1]:3006\r\nConnection: close\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n"):
        conn, r = _answer(server, request)
        conn.close()
        assert r.status == 200, (request, r.status, r.body[:200])


def test_unknown_transfer_coding_is_501(server):
    """RFC 9112 §6.1: a transfer coding the server does not understand is answered 501, not read as plain chunks."""
    user = register(server)
    session = create_session(server, user["accessToken"])["sessionId"]
    body = b'{"content":"sent with an unknown coding"}'
    conn, r = _answer(server, (
        f"POST /api/sessions/{session}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user['accessToken']}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    ).encode() + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    try:
        assert_error_body(r, 501, "unsupported_transfer_coding")
        assert "close" in connection_tokens(r), r.headers
    finally:
        conn.close()
    history = requests.get(server.url(f"/api/sessions/{session}/messages"), timeout=5,
                           headers={"Authorization": f"Bearer {user['accessToken']}"}).json()["messages"]
    assert history == [], f"a refused request stored a message: {history}"


@pytest.mark.parametrize("method", ["BREW", "get", "X-CUSTOM"])
def test_an_unknown_method_is_501(server, method):
    """RFC 9110 §9.1: a method the server does not recognise is 501 (a known one a path does not take is
    405, and a request line that does not start with a method is 400: test_malformed_request_gets_400_and_close)."""
    conn, r = _answer(server, f"{method} /health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        assert_error_body(r, 501, "not_implemented")
        assert "close" in connection_tokens(r), r.headers
        assert_closed_by_server(conn, after="the 501")
    finally:
        conn.close()
    assert requests.get(server.url("/health"), timeout=5).status_code == 200


def test_http10_expect_100_continue_gets_no_interim_response(server):
    """RFC 9110 §10.1.1, §15.2: an HTTP/1.0 client's 100-continue is ignored; no 1xx is sent to it."""
    conn = raw(server)
    try:
        conn.send(b"POST /auth/login HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2\r\n\r\n")
        readable, _, _ = select.select([conn.sock], [], [], 1.0)
        assert not readable, f"the server answered before the body: {conn.sock.recv(200)!r}"
        conn.send(b"{}")
        r = read_response(conn)
        assert r.status == 400, (r.status, r.raw_head[:200])
    finally:
        conn.close()


def test_http11_expect_100_continue_gets_an_interim_response(server):
    conn = raw(server)
    try:
        conn.send(b"POST /auth/login HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2\r\n\r\n")
        r = read_response(conn)
        assert r.status == 100, (r.status, r.raw_head[:200])
        conn.send(b"{}")
        assert read_response(conn).status == 400
    finally:
        conn.close()


def test_a_stalled_request_body_is_answered_408_and_closed(start_server):
    """A body that stops arriving for HTTP_IDLE_TIMEOUT is not waited for forever (a slow-body attack): the
    request is answered 408 with Connection: close, and the connection ends."""
    server = start_server(env={"HTTP_IDLE_TIMEOUT": "2s"})
    user = register(server)
    session = create_session(server, user["accessToken"])["sessionId"]
    conn = raw(server, timeout=8)
    try:
        started = time.monotonic()
        conn.send((f"POST /api/sessions/{session}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user['accessToken']}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"content\":").encode())
        # Trickling keeps it going: each byte moves the deadline.
        for _ in range(3):
            time.sleep(1)
            conn.send(b" ")
        r = read_response(conn, timeout=8)
        elapsed = time.monotonic() - started
        assert_error_body(r, 408, "request_timeout")
        assert "close" in connection_tokens(r), r.headers
        assert 4.5 <= elapsed <= 8, f"answered {elapsed:.1f}s after the head (last byte at 3 s, timeout 2 s)"
        assert_closed_by_server(conn, after="the 408")
    finally:
        conn.close()
    # The refused send stored nothing.
    r = requests.get(server.url(f"/api/sessions/{session}/messages"), headers={"Authorization": f"Bearer {user['accessToken']}"}, timeout=5)
    assert r.json()["messages"] == []


def test_an_answer_before_the_body_says_the_connection_closes(server):
    """Refused before its body arrived (no token here), a request is answered with Connection: close, and
    the connection then ends: the unread body is never taken for the next request (RFC 9112 §9.6)."""
    conn = raw(server)
    try:
        conn.send(b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n")
        r = read_response(conn)
        assert_error_body(r, 401, "unauthenticated")
        assert "close" in connection_tokens(r), r.headers
        assert_closed_by_server(conn, timeout=4, after="the 401")
    finally:
        conn.close()


@pytest.mark.parametrize("target_bytes", [17000, 100 * 1024])
def test_an_over_long_request_target_is_414(server, target_bytes):
    """RFC 9112 §3: a request target longer than the server reads is 414, whether it is over the server's
    own 16 KiB limit or over what the parser holds at all."""
    path = "/health?" + "a" * (target_bytes - len("/health?"))
    conn, r = _answer(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        assert_error_body(r, 414, "uri_too_long")
        assert "close" in connection_tokens(r), r.headers
    finally:
        conn.close()
    conn, r = _answer(server, b"GET /health?" + b"a" * 16000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    conn.close()
    assert r.status == 200, "a target under 16 KiB is read"


def test_over_large_header_fields_are_431(server):
    conn, r = _answer(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (100 * 1024) + b"\r\n\r\n")
    try:
        assert_error_body(r, 431, "headers_too_large")
        assert "close" in connection_tokens(r), r.headers
    finally:
        conn.close()
