"""Engine.IO v4 protocol rules at `/socket.io/`, checked packet by packet with raw HTTP, raw sockets and `websockets`.

These are our own regression tests for the protocol-level behaviour that the public conformance suites
(socketio/engine.io-protocol and socketio/socket.io-protocol, `test-suite/`) exercise: the handshake, the rules of
HTTP long-polling (one GET and one POST at a time, payload limits, how a pending poll ends), the WebSocket
upgrade, closing, the WebSocket frame limit and what a DISCONNECT from the main namespace does to the Engine.IO
session. Socket.IO clients and the chat events are covered by test_socketio.py.

Packets: `0` open, `1` close, `2` ping, `3` pong, `4` message (a Socket.IO packet follows: `40` CONNECT,
`41` DISCONNECT, `42` EVENT, `44` CONNECT_ERROR), `5` upgrade, `6` noop; a polling payload joins packets with
U+001E. The heartbeat tests need short intervals: they read the handshake and skip when pingInterval + pingTimeout
is longer than HEARTBEAT_MAX_MS (the server's defaults are 25 s + 20 s, which are not configurable;
EIO_HEARTBEAT_MAX_MS=60000 runs them anyway, in about five minutes).

Every HTTP request, socket read and WebSocket receive has a timeout, and every async scenario an overall deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import Server, create_session, register
from test_websocket import rest_post

RECV = 5.0             # seconds to wait for something that must come
QUIET = 1.0            # seconds of silence that show something does not come
SETTLE = 0.3           # seconds for the server to take up a request before the next step
HELD = 3.0             # a poll held this long was parked by the server (its session is alive)
SEP = "\x1e"           # record separator between the packets of a polling payload
# The heartbeat tests wait for real pings: they run when pingInterval + pingTimeout is at most this (ms).
HEARTBEAT_MAX_MS = int(os.environ.get("EIO_HEARTBEAT_MAX_MS", "5000"))
HANDSHAKE_KEYS = {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
UPGRADE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# ---- helpers ----------------------------------------------------------------------------------------------


def run(scenario, timeout: float = 30.0):
    """Runs a test coroutine with an overall deadline so a failure never hangs the suite."""
    async def bounded():
        return await asyncio.wait_for(scenario, timeout)
    return asyncio.run(bounded())


class Polling:
    """Engine.IO over HTTP long-polling, one request at a time as the test says."""

    def __init__(self, server: Server):
        self.server = server
        self.url = server.url("/socket.io/")

    def params(self, sid: str | None = None, **extra) -> dict:
        p = {"EIO": "4", "transport": "polling", **extra}
        if sid is not None:
            p["sid"] = sid
        return p

    def open(self) -> tuple[str, dict]:
        """A new session: (sid, handshake)."""
        r = requests.get(self.url, params=self.params(), timeout=RECV)
        assert r.status_code == 200, f"handshake: {r.status_code} {r.text}"
        assert r.text.startswith("0{"), f"handshake must be an open packet, got {r.text!r}"
        handshake = json.loads(r.text[1:])
        return handshake["sid"], handshake

    def get(self, sid: str, timeout: float = RECV) -> requests.Response:
        return requests.get(self.url, params=self.params(sid), timeout=timeout)

    def post(self, sid: str, body: str | bytes, timeout: float = RECV) -> requests.Response:
        return requests.post(self.url, params=self.params(sid), data=body, timeout=timeout,
                             headers={"Content-Type": "text/plain;charset=UTF-8"})

    def assert_gone(self, sid: str, why: str) -> None:
        """A poll on a closed session is answered 400 at once; a live session would park it."""
        try:
            r = self.get(sid, timeout=HELD)
        except requests.exceptions.ReadTimeout:
            pytest.fail(f"{why}: the session is still open (a poll on it was held for {HELD}s instead of answered 400)")
        assert r.status_code == 400, f"{why}: a poll on the closed session must be 400, got {r.status_code} {r.text!r}"

    def assert_alive(self, sid: str, why: str) -> None:
        """A pong on a live session is accepted (200 ok); on an ended one it is refused (400)."""
        r = self.post(sid, "3")
        assert r.status_code == 200 and r.text == "ok", f"{why}: the Engine.IO session has ended (pong answered {r.status_code} {r.text!r})"


@pytest.fixture
def polling(server) -> Polling:
    return Polling(server)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as executor:
        yield executor


def ws_url(server: Server, sid: str | None = None, query: str = "EIO=4&transport=websocket") -> str:
    return f"ws://127.0.0.1:{server.port}/socket.io/?{query}" + (f"&sid={sid}" if sid else "")


def eio_ws(server: Server, sid: str | None = None, **kwargs):
    """`async with eio_ws(server) as ws`: an Engine.IO WebSocket (a new session, or the upgrade of `sid`)."""
    kwargs.setdefault("max_size", None)
    return connect(ws_url(server, sid), compression=None, proxy=None, open_timeout=RECV, close_timeout=2,
                   ping_interval=None, **kwargs)


async def recv_text(ws, timeout: float = RECV, what: str = "a packet") -> str:
    try:
        frame = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"waited {timeout}s for {what}; nothing came") from None
    except ConnectionClosed as e:
        raise AssertionError(f"the connection closed ({e.rcvd}) while waiting for {what}") from None
    assert isinstance(frame, str), f"expected a text frame, got binary {frame[:100]!r}"
    return frame


async def ws_open(server: Server) -> tuple:
    """A WebSocket-only session: (ws, handshake). The caller closes ws."""
    ws = await eio_ws(server)
    first = await recv_text(ws, what="the open packet")
    assert first.startswith("0{"), f"the first frame must be the open packet, got {first!r}"
    return ws, json.loads(first[1:])


async def expect_closed(ws, within: float, what: str) -> ConnectionClosed:
    """The server closes the connection (a close frame, or at least the TCP connection) within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: the connection was still open {within}s later")
        try:
            await asyncio.wait_for(ws.recv(), left)
        except asyncio.TimeoutError:
            continue
        except ConnectionClosed as e:
            return e


async def expect_still_open(ws, quiet: float, what: str) -> list[str]:
    """The connection stays open for `quiet` seconds; returns what came meanwhile."""
    got: list[str] = []
    deadline = time.monotonic() + quiet
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(await asyncio.wait_for(ws.recv(), left))
        except asyncio.TimeoutError:
            break
        except ConnectionClosed as e:
            raise AssertionError(f"{what}: the server closed the connection ({e.rcvd}); received before: {got}") from None
    return got


def raw_http(server: Server, request: bytes, timeout: float = RECV) -> tuple[int, bytes]:
    """Sends one raw request; returns (status, everything read until the server closed or went quiet)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.settimeout(0.3)
            while chunk := s.recv(65536):
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    assert data.startswith(b"HTTP/1.1 "), f"not an HTTP response: {data[:200]!r}"
    return int(data.split(b" ", 2)[1]), data


class FrameReader:
    """Reads server (unmasked) WebSocket frames from a raw socket; a closed connection fails the test."""

    def __init__(self, sock: socket.socket, buffered: bytes = b""):
        self.sock = sock
        self.buf = buffered

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout) as e:
                raise AssertionError(f"no complete frame from the server ({e!r}); it must send a close frame") from None
            if not chunk:
                raise AssertionError("the server closed the TCP connection without a close frame")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def next(self) -> tuple[int, bytes]:
        b0, b1 = self._need(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self._need(2), "big")
        elif length == 127:
            length = int.from_bytes(self._need(8), "big")
        return b0 & 0x0F, self._need(length)


def upgrade_request(query: str) -> bytes:
    return (f"GET /socket.io/?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {UPGRADE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


@pytest.fixture
def heartbeat(start_server) -> tuple[Server, dict]:
    """A server whose unauthenticated connections live long enough to see pings, and its handshake; skips the
    test unless the heartbeat is short enough to wait for."""
    server = start_server(env={"REALTIME_AUTH_TIMEOUT": "10m", "SOCKETIO_PING_INTERVAL": "1s", "SOCKETIO_PING_TIMEOUT": "1s"})
    _, handshake = Polling(server).open()
    total = handshake["pingInterval"] + handshake["pingTimeout"]
    if total > HEARTBEAT_MAX_MS:
        pytest.skip(f"pingInterval + pingTimeout = {total} ms; the heartbeat tests need <= {HEARTBEAT_MAX_MS} ms "
                    "(EIO_HEARTBEAT_MAX_MS)")
    return server, handshake


def budget(handshake: dict, intervals: int = 3) -> float:
    """Seconds a heartbeat scenario may take: `intervals` ping rounds, the ping timeout and some slack."""
    return (intervals * handshake["pingInterval"] + handshake["pingTimeout"]) / 1000 + 10


# ---- handshake --------------------------------------------------------------------------------------------


def test_polling_handshake_advertises_the_session(polling):
    r = requests.get(polling.url, params=polling.params(), timeout=RECV)
    assert r.status_code == 200, r.text
    assert r.text.startswith("0"), r.text
    handshake = json.loads(r.text[1:])
    assert set(handshake) == HANDSHAKE_KEYS, handshake
    assert isinstance(handshake["sid"], str) and handshake["sid"], handshake
    assert handshake["upgrades"] == ["websocket"], handshake
    for key in ("pingInterval", "pingTimeout", "maxPayload"):
        assert isinstance(handshake[key], int) and handshake[key] > 0, handshake
    other, _ = polling.open()
    assert other != handshake["sid"], "every handshake opens a session of its own"


def test_websocket_handshake_advertises_no_upgrades(server):
    """A session opened directly over WebSocket has nothing to upgrade to: `"upgrades":[]`."""
    async def scenario():
        ws, handshake = await ws_open(server)
        async with ws:
            assert set(handshake) == HANDSHAKE_KEYS, handshake
            assert isinstance(handshake["sid"], str) and handshake["sid"], handshake
            assert handshake["upgrades"] == [], f"a WebSocket session must advertise no upgrades: {handshake}"
    run(scenario())


def test_polling_handshake_refuses_bad_queries_and_methods(polling):
    for params in ({"transport": "polling"}, {"EIO": "abc", "transport": "polling"}, {"EIO": "3", "transport": "polling"},
                   {"EIO": "4"}, {"EIO": "4", "transport": "abc"}):
        r = requests.get(polling.url, params=params, timeout=RECV)
        assert r.status_code == 400, f"{params}: {r.status_code} {r.text}"
        body = r.json()
        assert isinstance(body.get("code"), int) and isinstance(body.get("message"), str), body
    # A handshake is a GET: POST or PUT without a sid opens nothing.
    for method in ("POST", "PUT"):
        r = requests.request(method, polling.url, params=polling.params(), data="40", timeout=RECV)
        assert r.status_code == 400, f"{method}: {r.status_code} {r.text}"


def test_websocket_upgrade_with_a_bad_query_is_refused_with_400(server):
    for query in ("transport=websocket", "EIO=abc&transport=websocket", "EIO=4", "EIO=4&transport=abc",
                  "EIO=4&transport=polling"):
        status, raw = raw_http(server, upgrade_request(query))
        assert status == 400, f"{query}: {raw[:200]!r}"


def test_websocket_upgrade_with_an_unknown_sid_is_refused_with_400(server):
    """The sid is checked before the upgrade: HTTP 400, not 101 and then a close frame."""
    status, raw = raw_http(server, upgrade_request("EIO=4&transport=websocket&sid=no-such-session"))
    assert status == 400, f"an upgrade for an unknown sid must be refused with HTTP 400, got {raw[:200]!r}"


# ---- HTTP long-polling ------------------------------------------------------------------------------------


def test_post_answers_ok_and_the_reply_comes_with_the_next_poll(polling):
    sid, _ = polling.open()
    r = polling.post(sid, "40")
    assert (r.status_code, r.text) == (200, "ok"), r.text
    r = polling.get(sid)
    assert r.status_code == 200, r.text
    assert r.text.startswith('40{"sid":'), f"the CONNECT reply must come with the next poll, got {r.text!r}"


def test_payloads_carry_several_packets_both_ways(server, polling):
    user = register(server)
    token = user["accessToken"]
    session_id = create_session(server, token)["sessionId"]
    sid, _ = polling.open()
    # Several packets in one POST: a pong, the CONNECT and another pong.
    r = polling.post(sid, SEP.join(["3", "40" + json.dumps({"token": token}), "3"]))
    assert (r.status_code, r.text) == (200, "ok"), r.text
    assert polling.get(sid).text.startswith('40{"sid":')
    r = polling.post(sid, '421["join",' + json.dumps({"sessionId": session_id}) + "]")
    assert (r.status_code, r.text) == (200, "ok"), r.text
    assert polling.get(sid).text.startswith("431["), "the join is acknowledged"
    # Several packets in one poll: two messages published while no poll was waiting.
    first = rest_post(server, token, session_id, "first")
    second = rest_post(server, token, session_id, "second")
    time.sleep(SETTLE)
    r = polling.get(sid)
    assert r.status_code == 200, r.text
    packets = r.text.split(SEP)
    assert len(packets) >= 2, f"both messages must come in one payload, separated by U+001E: {r.text!r}"
    ids = [json.loads(p[2:])[1]["id"] for p in packets if p.startswith('42["message"')]
    assert ids == [first["id"], second["id"]], packets


def test_invalid_payload_is_refused_and_closes_the_session(polling):
    sid, _ = polling.open()
    r = polling.post(sid, "abc")
    assert r.status_code == 400, r.text
    polling.assert_gone(sid, "after an undecodable payload")


def test_a_second_poll_while_one_is_pending_closes_the_session(polling, pool):
    sid, _ = polling.open()
    pending = pool.submit(polling.get, sid, RECV)
    time.sleep(SETTLE)
    second = polling.get(sid)
    assert second.status_code == 400, f"the overlapping poll: {second.status_code} {second.text!r}"
    first = pending.result(timeout=RECV + 1)
    assert (first.status_code, first.text) == (200, "1"), "the pending poll is ended with a close packet"
    polling.assert_gone(sid, "after overlapping polls")


def test_a_second_post_while_one_is_in_flight_is_refused_and_closes_the_session(server, polling):
    """One POST at a time: the first one is still sending its body when the second arrives."""
    sid, _ = polling.open()
    body = b"3" + b"a" * 63
    with socket.create_connection(("127.0.0.1", server.port), timeout=RECV) as slow:
        slow.sendall(f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:8])
        time.sleep(SETTLE)
        second = polling.post(sid, "3")
        assert second.status_code == 400, f"a POST overlapping another one must be 400, got {second.status_code} {second.text!r}"
        try:
            slow.sendall(body[8:])
        except OSError:
            pass  # the server may have dropped the first request with the session
    polling.assert_gone(sid, "after overlapping POSTs")


def test_post_up_to_max_payload_is_accepted(polling):
    sid, handshake = polling.open()
    limit = handshake["maxPayload"]
    r = polling.post(sid, "3" + "a" * (limit - 1), timeout=30)
    assert (r.status_code, r.text) == (200, "ok"), f"a {limit}-byte payload: {r.status_code} {r.text[:200]!r}"
    polling.assert_alive(sid, "after a payload of exactly maxPayload")


def test_post_over_max_payload_is_refused_with_413(server, polling):
    sid, handshake = polling.open()
    limit = handshake["maxPayload"]
    r = polling.post(sid, "3" + "a" * limit, timeout=30)
    assert r.status_code == 413, f"a {limit + 1}-byte payload (maxPayload {limit}) must be 413, got {r.status_code} {r.text[:200]!r}"
    assert requests.get(server.url("/health"), timeout=RECV).status_code == 200


def test_client_close_ends_the_pending_poll_with_a_noop(polling, pool):
    sid, _ = polling.open()
    pending = pool.submit(polling.get, sid, RECV)
    time.sleep(SETTLE)
    r = polling.post(sid, "1")
    assert (r.status_code, r.text) == (200, "ok"), r.text
    poll = pending.result(timeout=RECV + 1)
    assert poll.status_code == 200, poll.text
    assert poll.text == "6", f"a poll pending when the client closed must be answered with a noop (6), got {poll.text!r}"
    polling.assert_gone(sid, "after the client's close packet")


def test_server_close_between_polls_reaches_the_next_poll(start_server):
    """The server ends the session while no poll is pending: the client's next poll still gets what was
    queued, ending with the close packet, instead of `Session ID unknown`."""
    polling = Polling(start_server(env={"REALTIME_AUTH_TIMEOUT": "1s"}))
    sid, _ = polling.open()
    assert polling.post(sid, "40").text == "ok"
    connect = polling.get(sid, timeout=RECV)
    assert connect.status_code == 200 and connect.text.startswith("40{"), connect.text
    time.sleep(2)  # the authentication timeout ends the session meanwhile; no poll is pending
    r = polling.get(sid, timeout=RECV)
    assert r.status_code == 200, r.text
    packets = r.text.split(SEP)
    assert packets[-1] == "1" and "41" in packets, packets
    polling.assert_gone(sid, "after the close packet was delivered")


def test_server_close_ends_the_session_with_a_close_packet(start_server, pool):
    """When the server ends the session (here: no authentication within 1 s), the client's polls see `1` last."""
    polling = Polling(start_server(env={"REALTIME_AUTH_TIMEOUT": "1s"}))
    sid, _ = polling.open()
    assert polling.post(sid, "40").text == "ok"
    packets: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = polling.get(sid, timeout=RECV)
        if r.status_code == 400:
            break
        assert r.status_code == 200, r.text
        packets += r.text.split(SEP)
        if packets[-1] == "1":
            break
    assert packets and packets[0].startswith("40{"), packets
    assert packets[-1] == "1", f"the server's close must reach the client as a close packet: {packets}"
    assert "6" not in packets, packets
    polling.assert_gone(sid, "after the server closed the session")


# ---- WebSocket --------------------------------------------------------------------------------------------


def test_websocket_session_carries_packets_both_ways(server):
    async def scenario():
        ws, _ = await ws_open(server)
        async with ws:
            await ws.send("40")
            reply = await recv_text(ws, what="the CONNECT reply")
            assert reply.startswith('40{"sid":'), reply
            await ws.send("3")  # an unsolicited pong is harmless
            await expect_still_open(ws, QUIET, "after a pong")
    run(scenario())


@pytest.mark.parametrize("packet", ["1", "abc", "4abc", "42{}", '42abc["message",{}]'],
                         ids=["client-close", "bad-engine-packet", "bad-socketio-type", "bad-event-payload", "bad-ack-id"])
def test_websocket_session_ends_promptly_with_the_connection(server, packet):
    """The server ends the session on a close packet or a malformed packet, and closes the WebSocket right away.

    Several connections at once, so a close that only sometimes happens fails reliably."""
    async def one():
        ws, _ = await ws_open(server)
        async with ws:
            if packet.startswith("42"):
                await ws.send("40")
                assert (await recv_text(ws, what="the CONNECT reply")).startswith("40{")
            await ws.send(packet)
            closed = await expect_closed(ws, 2.0, f"after {packet!r}")
            assert closed.rcvd is not None, f"after {packet!r} the server must send a close frame, it dropped the TCP connection"

    async def scenario():
        await asyncio.gather(*(one() for _ in range(5)))
    run(scenario())


def test_websocket_frame_up_to_max_payload_is_accepted(server):
    """The handshake's maxPayload is the limit on the WebSocket too."""
    async def scenario():
        ws, handshake = await ws_open(server)
        async with ws:
            limit = handshake["maxPayload"]
            await ws.send("3" + "a" * (limit - 1))
            await ws.send("40")
            reply = await recv_text(ws, what=f"the CONNECT reply after a {limit}-byte frame")
            assert reply.startswith('40{"sid":'), reply
    run(scenario())


def test_websocket_frame_over_max_payload_is_closed_with_1009(server):
    """A frame announcing more than maxPayload bytes is refused from its header: close frame 1009 (message too big).

    Raw frames, so the close frame can be read while the oversized frame is still being sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=RECV) as s:
        s.sendall(upgrade_request("EIO=4&transport=websocket"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"connection closed during the upgrade: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        frames = FrameReader(s, rest)
        opcode, payload = frames.next()
        assert opcode == 0x1 and payload.startswith(b"0{"), (opcode, payload[:100])
        limit = json.loads(payload[1:])["maxPayload"]
        # FIN + text, masked, 64-bit length limit + 1; then only the first bytes of the payload.
        mask = b"\x01\x02\x03\x04"
        s.sendall(b"\x81\xff" + (limit + 1).to_bytes(8, "big") + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"3" + b"a" * 1023)))
        while True:
            opcode, payload = frames.next()
            if opcode == 0x8:
                break
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        assert code == 1009, f"a frame over maxPayload ({limit}) must be closed with 1009, got close code {code} {payload[2:]!r}"


# ---- upgrade ----------------------------------------------------------------------------------------------


def test_upgrade_probe_releases_the_pending_poll_and_switches_transport(server, polling, pool):
    sid, _ = polling.open()
    pending = pool.submit(polling.get, sid, RECV)
    time.sleep(SETTLE)

    async def scenario():
        async with eio_ws(server, sid) as ws:
            await ws.send("2probe")
            assert await recv_text(ws, what="the probe answer") == "3probe"
            poll = await asyncio.wrap_future(pending)
            assert (poll.status_code, poll.text) == (200, "6"), "the pending poll is released with a noop"
            await ws.send("5")
            await ws.send("40")
            reply = await recv_text(ws, what="the CONNECT reply over the upgraded transport")
            assert reply.startswith('40{"sid":'), reply
            r = await asyncio.to_thread(polling.get, sid, HELD)
            assert r.status_code == 400, f"polling after the upgrade: {r.status_code} {r.text!r}"
    run(scenario())


def test_post_on_an_upgraded_session_is_refused(server, polling):
    """Once upgraded, the session's transport is the WebSocket: a polling POST with its sid is 400 (transport mismatch)."""
    sid, _ = polling.open()

    async def scenario():
        async with eio_ws(server, sid) as ws:
            await ws.send("2probe")
            assert await recv_text(ws, what="the probe answer") == "3probe"
            await ws.send("5")
            await asyncio.sleep(SETTLE)
            r = await asyncio.to_thread(polling.post, sid, "40", HELD)
            assert r.status_code == 400, f"a polling POST after the upgrade must be refused, got {r.status_code} {r.text!r}"
    run(scenario())


def test_a_second_websocket_for_an_upgraded_session_is_refused(server, polling):
    sid, _ = polling.open()

    async def scenario():
        async with eio_ws(server, sid) as ws:
            await ws.send("2probe")
            assert await recv_text(ws, what="the probe answer") == "3probe"
            await ws.send("5")
            await asyncio.sleep(SETTLE)
            status, raw = await asyncio.to_thread(raw_http, server, upgrade_request(f"EIO=4&transport=websocket&sid={sid}"))
            if status == 101:  # accepted at the HTTP level: it must be closed at once
                assert b"\x88" in raw, f"a second WebSocket for {sid} must be closed: {raw[:200]!r}"
            else:
                assert status == 400, raw[:200]
            await ws.send("40")
            assert (await recv_text(ws, what="the CONNECT reply on the first WebSocket")).startswith("40{")
    run(scenario())


# ---- Socket.IO DISCONNECT of the main namespace -----------------------------------------------------------


def test_websocket_disconnect_from_main_namespace_keeps_the_engine_io_session(server):
    """`41` leaves the namespace only: the connection stays, pongs are fine and a new CONNECT is answered."""
    async def scenario():
        ws, _ = await ws_open(server)
        async with ws:
            await ws.send("40")
            assert (await recv_text(ws, what="the CONNECT reply")).startswith("40{")
            await ws.send("41")
            await expect_still_open(ws, QUIET, "after 41")
            await ws.send("3")
            await ws.send("40")
            reply = await recv_text(ws, what="the reply to a second CONNECT")
            assert reply.startswith('40{"sid":'), reply
    run(scenario())


def test_polling_disconnect_from_main_namespace_keeps_the_engine_io_session(polling):
    sid, _ = polling.open()
    assert polling.post(sid, "40").text == "ok"
    assert polling.get(sid).text.startswith("40{")
    r = polling.post(sid, "41")
    assert (r.status_code, r.text) == (200, "ok"), r.text
    time.sleep(SETTLE)
    polling.assert_alive(sid, "after 41")
    assert polling.post(sid, "40").text == "ok"
    r = polling.get(sid)
    assert r.status_code == 200 and r.text.startswith('40{"sid":'), f"the reply to a second CONNECT: {r.status_code} {r.text!r}"


def test_connect_to_an_unknown_namespace_is_refused_and_the_session_stays(server):
    async def scenario():
        ws, _ = await ws_open(server)
        async with ws:
            await ws.send("40/random,")
            assert await recv_text(ws, what="the CONNECT_ERROR") == '44/random,{"message":"Invalid namespace"}'
            await ws.send("40")
            assert (await recv_text(ws, what="the CONNECT reply")).startswith("40{")
    run(scenario())


# ---- heartbeat (only with short intervals) ----------------------------------------------------------------


def test_websocket_heartbeat(heartbeat):
    server, handshake = heartbeat

    async def scenario():
        ws, _ = await ws_open(server)
        async with ws:
            for _ in range(3):
                assert await recv_text(ws, handshake["pingInterval"] / 1000 + 1, "a ping") == "2"
                await ws.send("3")
    run(scenario(), budget(handshake))


def test_websocket_ping_timeout_closes_the_connection(heartbeat):
    server, handshake = heartbeat

    async def scenario():
        ws, _ = await ws_open(server)
        async with ws:
            start = time.monotonic()
            await expect_closed(ws, (handshake["pingInterval"] + handshake["pingTimeout"]) / 1000 + 1, "without pongs")
            assert time.monotonic() - start >= handshake["pingInterval"] / 1000 - 0.1, "closed before the first ping"
    run(scenario(), budget(handshake))


def test_polling_heartbeat(heartbeat):
    server, handshake = heartbeat
    polling = Polling(server)
    sid, _ = polling.open()
    for _ in range(3):
        r = polling.get(sid, timeout=handshake["pingInterval"] / 1000 + 1)
        assert (r.status_code, r.text) == (200, "2"), r.text
        assert polling.post(sid, "3").text == "ok"


def test_polling_ping_timeout_closes_the_session(heartbeat):
    server, handshake = heartbeat
    polling = Polling(server)
    sid, _ = polling.open()
    time.sleep((handshake["pingInterval"] + handshake["pingTimeout"]) / 1000 + 0.25)
    polling.assert_gone(sid, "after pingInterval + pingTimeout without a request")


def test_server_keeps_pinging_after_disconnect_from_main_namespace(heartbeat):
    server, handshake = heartbeat

    async def scenario():
        ws, _ = await ws_open(server)
        async with ws:
            await ws.send("40")
            assert (await recv_text(ws, what="the CONNECT reply")).startswith("40{")
            await ws.send("41")
            assert await recv_text(ws, handshake["pingInterval"] / 1000 + 1, "a ping after 41") == "2"
            await ws.send("3")
            await expect_still_open(ws, QUIET, "after the pong")
    run(scenario(), budget(handshake))
