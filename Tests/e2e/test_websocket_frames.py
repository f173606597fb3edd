"""RFC 6455 at the frame level, on both WebSocket endpoints: `/ws` and `/socket.io/?EIO=4&transport=websocket`.

Client libraries refuse to send broken frames, so these tests build frames by hand (masking, RSV bits, opcodes,
fragmentation) on a raw socket and parse the server's frames by hand. Every read has a deadline: a server that
does not answer fails a test instead of hanging it.

What a client must see (RFC 6455 §5, §7.4): a protocol violation ends with a close frame carrying 1002, invalid
UTF-8 with 1007, a message over the 256 KiB limit with 1009; a valid close code is echoed; and after the close
handshake the server closes the TCP connection.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from conftest import Server, create_session, post_json, register

RECV = 5.0           # seconds to wait for something that must come
CLOSE_EOF = 2.0      # after the close handshake, the server closes TCP within this
PROMPT = 0.5         # a close for a protocol error must come this fast every time (the timing tests)
PROMPT_TYPICAL = 0.1  # ... and the median of the attempts this fast (the issue's 100 ms; the bound above leaves room for CI noise)


def assert_prompt(times: list[float]) -> None:
    ordered = sorted(times)
    median = ordered[len(ordered) // 2]
    assert median <= PROMPT_TYPICAL, f"the close frames took {median:.3f}s at the median: {[round(t, 3) for t in times]}"
PROTOCOL_CLOSE = 1.5 # elsewhere, the wait for the close frame that answers a protocol error
REPEAT = 20          # repetitions of the timing tests
MAX_MESSAGE = 256 * 1024

WS_PATH = "/ws"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
PATHS = [pytest.param(WS_PATH, id="ws"), pytest.param(SIO_PATH, id="socketio")]
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# ---- raw TCP ----------------------------------------------------------------------------------------------


class RawSocket:
    """A client TCP connection with a read buffer. Every read has a deadline; EOF and reset are reported, not raised
    as socket errors."""

    def __init__(self, port: int, sock: socket.socket | None = None, timeout: float = RECV):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setblocking(True)
        self.sock = sock
        self.buf = bytearray()
        self.closed_by_peer: str | None = None  # "eof" or "reset" once seen

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Sends unless the peer has already gone (then False)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False

    def _fill(self, deadline: float, what: str) -> None:
        """Reads more bytes; AssertionError if the peer closed or nothing came before the deadline."""
        if self.closed_by_peer:
            raise PeerClosed(f"the server closed the connection ({self.closed_by_peer}) while waiting for {what}; "
                             f"unread: {bytes(self.buf[:200])!r}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"nothing more came within the deadline while waiting for {what}; "
                                 f"buffered: {bytes(self.buf[:200])!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"timed out waiting for {what}; buffered: {bytes(self.buf[:200])!r}") from None
        except (ConnectionResetError, ConnectionAbortedError):
            self.closed_by_peer = "reset"
            return self._fill(deadline, what)
        if not chunk:
            self.closed_by_peer = "eof"
            return self._fill(deadline, what)
        self.buf += chunk

    def read_exact(self, n: int, deadline: float, what: str = "data") -> bytes:
        while len(self.buf) < n:
            self._fill(deadline, what)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, marker: bytes, deadline: float, what: str = "data", limit: int = 1 << 20) -> bytes:
        while True:
            at = self.buf.find(marker)
            if at >= 0:
                out = bytes(self.buf[:at + len(marker)])
                del self.buf[:at + len(marker)]
                return out
            assert len(self.buf) < limit, f"no {marker!r} in the first {limit} bytes while waiting for {what}"
            self._fill(deadline, what)

    def wait_closed(self, timeout: float) -> tuple[str | None, bytes]:
        """Reads (and keeps) whatever comes until the peer closes; returns ("eof"|"reset"|None on timeout, data)."""
        deadline = time.monotonic() + timeout
        data = bytearray(self.buf)
        self.buf.clear()
        while not self.closed_by_peer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, bytes(data)
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None, bytes(data)
            except (ConnectionResetError, ConnectionAbortedError):
                self.closed_by_peer = "reset"
                break
            if not chunk:
                self.closed_by_peer = "eof"
                break
            data += chunk
        return self.closed_by_peer, bytes(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class PeerClosed(AssertionError):
    """The server closed the TCP connection while the test was waiting for more."""


# ---- HTTP/1.1 responses -----------------------------------------------------------------------------------


@dataclass
class HTTPResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        """All values of a header, comma-separated lists split."""
        out = []
        for k, v in self.headers:
            if k.lower() == name.lower():
                out += [part.strip() for part in v.split(",") if part.strip()]
        return out

    def json(self):
        return json.loads(self.body)


def read_response(conn: RawSocket, timeout: float = RECV, head: bool = False) -> HTTPResponse:
    """Parses one HTTP/1.x response from the connection (Content-Length, chunked or close-delimited body)."""
    deadline = time.monotonic() + timeout
    raw = conn.read_until(b"\r\n\r\n", deadline, what="a response head")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    assert len(status_line) >= 2 and status_line[0].startswith("HTTP/1."), f"not an HTTP/1.x response: {raw[:200]!r}"
    status = int(status_line[1])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        assert sep, f"bad response header line {line!r}"
        headers.append((name.strip(), value.strip()))
    r = HTTPResponse(status, status_line[2] if len(status_line) > 2 else "", headers, b"", raw)
    if head or status < 200 or status in (204, 304):
        return r
    length = r.header("Content-Length")
    if (r.header("Transfer-Encoding") or "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int(conn.read_until(b"\r\n", deadline, what="a chunk size").split(b";")[0].strip(), 16)
            if size == 0:
                conn.read_until(b"\r\n", deadline, what="the last chunk")
                break
            body += conn.read_exact(size, deadline, what="a chunk")
            conn.read_exact(2, deadline, what="a chunk end")
        r.body = bytes(body)
    elif length is not None:
        r.body = conn.read_exact(int(length), deadline, what="the response body")
    else:
        _, r.body = conn.wait_closed(max(0.0, deadline - time.monotonic()))
    return r


# ---- WebSocket frames -------------------------------------------------------------------------------------


def frame(opcode: int, payload: bytes | str = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One client frame. `rsv` is the 3-bit RSV1..RSV3 field (4 = RSV1, 2 = RSV2, 1 = RSV3)."""
    if isinstance(payload, str):
        payload = payload.encode()
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, key)
    return head + key + masked


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode()

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        if len(self.payload) == 0:
            return None
        assert len(self.payload) >= 2, f"the server sent a close frame with a 1-byte payload {self.payload!r}"
        return struct.unpack("!H", self.payload[:2])[0]

    def __repr__(self) -> str:
        names = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}
        body = self.payload[:120]
        if self.opcode == OP_CLOSE and len(self.payload) >= 2:
            return f"<close {self.close_code} {self.payload[2:120]!r}>"
        return f"<{names.get(self.opcode, hex(self.opcode))}{'' if self.fin else ' FIN=0'} {body!r}>"


def read_frame(conn: RawSocket, timeout: float = RECV, what: str = "a frame") -> Frame:
    deadline = time.monotonic() + timeout
    b0, b1 = conn.read_exact(2, deadline, what)
    assert not b1 & 0x80, "the server sent a masked frame (RFC 6455 §5.1: a server must not mask)"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", conn.read_exact(2, deadline, what))[0]
    elif n == 127:
        n = struct.unpack("!Q", conn.read_exact(8, deadline, what))[0]
    payload = conn.read_exact(n, deadline, what)
    return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload)


# ---- WebSocket connections ---------------------------------------------------------------------------------


def upgrade_request(path: str, key: str | None = None, version: str | None = "13", connection: str | None = "Upgrade",
                    upgrade: str | None = "websocket", extra: dict | None = None) -> tuple[bytes, str | None]:
    """A WebSocket upgrade request; returns (bytes, the Sec-WebSocket-Key sent)."""
    if key is None:
        key = base64.b64encode(os.urandom(16)).decode()
    elif key == "":
        key = None
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def ws_handshake(conn: RawSocket, path: str, headers: dict | None = None, timeout: float = RECV) -> HTTPResponse:
    """Upgrades `conn` to a WebSocket at `path`: asserts 101 with the right Sec-WebSocket-Accept."""
    request, key = upgrade_request(path, extra=headers)
    conn.send(request)
    r = read_response(conn, timeout)
    assert r.status == 101, f"upgrade to {path}: expected 101, got {r.status} {r.headers} {r.body[:300]!r}"
    assert (r.header("Upgrade") or "").lower() == "websocket", r.headers
    assert "upgrade" in [v.lower() for v in r.header_values("Connection")], r.headers
    assert r.header("Sec-WebSocket-Accept") == accept_for(key), f"wrong Sec-WebSocket-Accept: {r.headers}"
    return r


class WS:
    """A hand-driven WebSocket client connection on a raw socket."""

    def __init__(self, port: int, path: str, headers: dict | None = None, sock: socket.socket | None = None,
                 conn: RawSocket | None = None):
        self.path = path
        self.conn = conn or RawSocket(port, sock=sock)
        self.socketio = path.startswith("/socket.io")
        self.open_packet = None
        try:
            ws_handshake(self.conn, path, headers)
            if self.socketio:
                first = self.recv(what="the Engine.IO open packet")
                assert first.opcode == OP_TEXT and first.text.startswith("0{"), f"expected the open packet 0{{...}}, got {first}"
                self.open_packet = json.loads(first.text[1:])
        except BaseException:
            self.conn.close()
            raise

    # sending
    def send_raw(self, data: bytes) -> bool:
        return self.conn.try_send(data)

    def send_frame(self, opcode: int, payload: bytes | str = b"", **kwargs) -> bool:
        return self.conn.try_send(frame(opcode, payload, **kwargs))

    def send_text(self, text: str) -> None:
        assert self.send_frame(OP_TEXT, text), f"the server closed the connection before a text frame could be sent"

    # receiving
    def recv(self, timeout: float = RECV, what: str = "a frame") -> Frame:
        return read_frame(self.conn, timeout, what)

    def recv_text(self, timeout: float = RECV, what: str = "a text frame") -> str:
        """The next data frame, which must be text (a server ping in between is answered)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv(max(0.0, deadline - time.monotonic()), what)
            if f.opcode == OP_PING:
                self.send_frame(OP_PONG, f.payload)
                continue
            assert f.opcode == OP_TEXT and f.fin, f"expected {what}, got {f}"
            return f.text

    def expect_close(self, timeout: float = RECV) -> tuple[int | None, bytes, list[Frame], float]:
        """Reads frames until a close frame: (code, reason, frames before it, seconds waited). AssertionError when
        the connection ends without a close frame or nothing comes in time."""
        started = time.monotonic()
        deadline = started + timeout
        before: list[Frame] = []
        while True:
            try:
                f = self.recv(max(0.0, deadline - time.monotonic()), "a close frame")
            except PeerClosed as e:
                raise AssertionError(f"the connection ended without a close frame after {len(before)} frames "
                                     f"{before[-3:]}: {e}") from None
            except AssertionError as e:
                raise AssertionError(f"no close frame within {timeout}s (frames so far {before[-3:]}): {e}") from None
            if f.opcode == OP_CLOSE:
                return f.close_code, f.payload[2:], before, time.monotonic() - started
            before.append(f)

    def finish_close(self, code: int | None = 1000, reply: bool = True, timeout: float = CLOSE_EOF) -> None:
        """After the server's close frame: optionally answers with a close frame, then asserts the server closes
        the TCP connection within `timeout` (data other than control frames after the close is an error)."""
        if reply:
            self.send_frame(OP_CLOSE, close_payload(code))
        how, data = self.conn.wait_closed(timeout)
        assert how is not None, f"the server did not close the TCP connection within {timeout}s of the close handshake"
        assert not data, f"the server sent data after its close frame: {data[:200]!r}"

    def close(self) -> None:
        self.conn.close()

    # Socket.IO
    def sio_connect(self, auth: dict | None = None) -> str:
        """Sends a Socket.IO CONNECT (`40`) and returns the sid of the `40{"sid":...}` reply."""
        assert self.socketio
        self.send_text("40" + (json.dumps(auth) if auth is not None else ""))
        reply = self.recv_text(what="the Socket.IO CONNECT reply")
        assert reply.startswith("40{"), f"expected 40{{\"sid\":...}}, got {reply!r}"
        return json.loads(reply[2:])["sid"]


def expect_close_code(ws: WS, code: int, timeout: float = PROTOCOL_CLOSE, reply: bool = True) -> float:
    """The server sends a close frame with `code` and then closes the TCP connection; returns the seconds it took
    for the close frame to come."""
    got, reason, before, elapsed = ws.expect_close(timeout)
    assert got == code, f"expected close {code}, got close {got} (reason {reason!r}) after {before[-3:]}"
    ws.finish_close(code, reply=reply)
    return elapsed


# ---- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(bin_path, tmp_path_factory):
    """One server for the frame tests, with a registered user."""
    server = Server(bin_path, tmp_path_factory.mktemp("ws-frames"), env={"REALTIME_MAX_CONNECTIONS_PER_USER": "10000"})
    server.start()
    try:
        user = register(server)
        yield SimpleNamespace(server=server, port=server.port, token=user["accessToken"], user_id=user["user"]["id"])
    finally:
        server.stop()


@pytest.fixture
def opened(shared):
    """`opened(path)` opens a WebSocket; all are closed at teardown."""
    conns: list[WS] = []

    def open_(path: str, **kwargs) -> WS:
        ws = WS(shared.port, path, **kwargs)
        conns.append(ws)
        return ws

    yield open_
    for ws in conns:
        ws.close()


def authenticate_message(path: str, token: str) -> str:
    """The text that authenticates on `path`: an `authenticate` event on /ws, a CONNECT with auth on Socket.IO."""
    if path == WS_PATH:
        return json.dumps({"type": "authenticate", "token": token, "id": 1}, ensure_ascii=False)
    return "40" + json.dumps({"token": token}, ensure_ascii=False)


def expect_authenticated(ws: WS, user_id: str) -> None:
    text = ws.recv_text(what="the answer to authenticate")
    if ws.socketio:
        assert text.startswith("40{") and "sid" in json.loads(text[2:]), f"expected 40{{\"sid\":...}}, got {text!r}"
    else:
        assert json.loads(text) == {"type": "ack", "event": "authenticate", "id": 1, "userId": user_id}, text


def expect_invalid_token(ws: WS) -> None:
    text = ws.recv_text(what="the answer to a bad token")
    if ws.socketio:
        assert text.startswith("44"), f"expected a CONNECT_ERROR 44{{...}}, got {text!r}"
        assert json.loads(text[2:]).get("data", {}).get("code") == "invalid_token", text
    else:
        event = json.loads(text)
        assert event["type"] == "error" and event["error"]["code"] == "invalid_token" and event["id"] == 1, event


def assert_alive(ws: WS, shared) -> None:
    """The connection still answers: a valid authentication succeeds."""
    ws.send_text(authenticate_message(ws.path, shared.token))
    expect_authenticated(ws, shared.user_id)


# ---- framing violations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_unmasked_client_frame_is_1002(opened, path):
    ws = opened(path)
    ws.send_frame(OP_TEXT, '{"type":"authenticate","token":"x"}' if path == WS_PATH else "40", mask=False)
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("rsv", [4, 2, 1], ids=["rsv1", "rsv2", "rsv3"])
@pytest.mark.parametrize("path", PATHS)
def test_rsv_bits_without_extension_are_1002(opened, path, rsv):
    ws = opened(path)
    ws.send_frame(OP_TEXT, '{"type":"authenticate","token":"x"}' if path == WS_PATH else "40", rsv=rsv)
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("fault", ["unmasked", "rsv1"])
@pytest.mark.parametrize("path", PATHS)
def test_continuation_frames_are_checked_one_by_one(opened, path, fault):
    """Masking and reserved bits hold for every fragment, the last one included (not only for the first)."""
    ws = opened(path)
    data = ('{"type":"authenticate","token":"x"}' if path == WS_PATH else "40").encode()
    ws.send_raw(frame(OP_TEXT, data[:1], fin=False))
    ws.send_raw(frame(OP_CONT, data[1:], mask=fault != "unmasked", rsv=4 if fault == "rsv1" else 0))
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF], ids=lambda o: f"op{o:x}")
@pytest.mark.parametrize("path", PATHS)
def test_reserved_opcode_is_1002(opened, path, opcode):
    ws = opened(path)
    ws.send_frame(opcode, b"data")
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("path", PATHS)
def test_fragmented_control_frame_is_1002(opened, path):
    ws = opened(path)
    ws.send_frame(OP_PING, b"part", fin=False)
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("shape", ["5-in-16-bit", "200-in-64-bit", "top-bit-set"])
@pytest.mark.parametrize("path", PATHS)
def test_payload_length_not_in_its_shortest_form_or_with_its_top_bit_set_is_1002(opened, path, shape):
    """RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length", and a 64-bit length's
    most significant bit MUST be 0. Refused as soon as the header is in, not after waiting for the payload."""
    ws = opened(path)
    payload = b"x" * (200 if shape == "200-in-64-bit" else 5)
    if shape == "5-in-16-bit":
        head = struct.pack("!BBH", 0x80 | OP_TEXT, 0x80 | 126, len(payload))
    elif shape == "200-in-64-bit":
        head = struct.pack("!BBQ", 0x80 | OP_TEXT, 0x80 | 127, len(payload))
    else:
        head = struct.pack("!BBQ", 0x80 | OP_TEXT, 0x80 | 127, (1 << 63) | len(payload))
    ws.send_raw(head + b"\0\0\0\0" + (b"" if shape == "top-bit-set" else payload))
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("path", PATHS)
def test_control_frame_over_125_bytes_is_1002(opened, path):
    ws = opened(path)
    ws.send_frame(OP_PING, b"p" * 126)
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("path", PATHS)
def test_control_frame_announcing_more_than_the_message_limit_is_1002(opened, path):
    """A ping whose 64-bit length is over the message limit is first of all a control frame over 125 bytes."""
    ws = opened(path)
    ws.send_raw(struct.pack("!BBQ", 0x80 | OP_PING, 0x80 | 127, 4 * MAX_MESSAGE) + b"\0\0\0\0")
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("path", PATHS)
def test_continuation_without_a_message_is_1002(opened, path):
    ws = opened(path)
    ws.send_frame(OP_CONT, b"orphan")
    expect_close_code(ws, 1002)


@pytest.mark.parametrize("path", PATHS)
def test_new_message_inside_a_fragmented_one_is_1002(opened, path):
    ws = opened(path)
    ws.send_frame(OP_TEXT, '{"type":', fin=False)
    ws.send_frame(OP_TEXT, '{"type":"authenticate"}')
    expect_close_code(ws, 1002)


# ---- close handshake --------------------------------------------------------------------------------------

INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
@pytest.mark.parametrize("path", PATHS)
def test_close_with_invalid_code_is_1002(opened, path, code):
    ws = opened(path)
    ws.send_frame(OP_CLOSE, close_payload(code))
    expect_close_code(ws, 1002, reply=False)


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
@pytest.mark.parametrize("path", PATHS)
def test_close_with_valid_code_is_echoed(opened, path, code):
    ws = opened(path)
    ws.send_frame(OP_CLOSE, close_payload(code, b"bye"))
    expect_close_code(ws, code, reply=False)


@pytest.mark.parametrize("path", PATHS)
def test_close_with_one_byte_payload_is_1002(opened, path):
    ws = opened(path)
    ws.send_frame(OP_CLOSE, b"\x03")
    expect_close_code(ws, 1002, reply=False)


@pytest.mark.parametrize("path", PATHS)
def test_close_reason_with_invalid_utf8_is_1007(opened, path):
    ws = opened(path)
    ws.send_frame(OP_CLOSE, close_payload(1000, b"bad \xc3\x28 reason"))
    expect_close_code(ws, 1007, reply=False)


@pytest.mark.parametrize("path", PATHS)
def test_empty_close_is_answered(opened, path):
    ws = opened(path)
    ws.send_frame(OP_CLOSE, b"")
    code, reason, before, _ = ws.expect_close()
    assert code in (None, 1000), f"an empty close must be answered with an empty close or 1000, got {code} {reason!r}"
    ws.finish_close(reply=False)


# ---- text, UTF-8 and fragmentation ------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_invalid_utf8_text_is_1007(opened, path):
    ws = opened(path)
    prefix = b'{"type":"authenticate","token":"' if path == WS_PATH else b'40{"token":"'
    ws.send_frame(OP_TEXT, prefix + b"\xff\xfe\xc3\x28" + b'"}')
    expect_close_code(ws, 1007)


@pytest.mark.parametrize("path", PATHS)
def test_invalid_utf8_in_a_fragment_is_1007_before_the_message_ends(opened, path):
    """RFC 6455 §8.1, failing fast: the fragment with the invalid bytes ends the connection; the server does not
    wait for (and hold) the rest of the message."""
    ws = opened(path)
    prefix = b'{"type":"authenticate","token":"' if path == WS_PATH else b'40{"token":"'
    assert ws.send_frame(OP_TEXT, prefix + "é".encode(), fin=False)
    assert ws.send_frame(OP_CONT, b"abc\xed\xa0\x80", fin=False)  # a UTF-16 surrogate, never valid UTF-8
    expect_close_code(ws, 1007)


@pytest.mark.parametrize("path", PATHS)
def test_fragment_split_inside_a_utf8_sequence_is_reassembled(opened, shared, path):
    ws = opened(path)
    data = authenticate_message(path, "é…").encode()
    cut = data.index("é".encode()) + 1  # between the two bytes of é
    assert ws.send_frame(OP_TEXT, data[:cut], fin=False)
    assert ws.send_frame(OP_CONT, data[cut:])
    expect_invalid_token(ws)
    # The connection is still open and usable.
    assert_alive(ws, shared)


@pytest.mark.parametrize("path", PATHS)
def test_ping_between_fragments_is_answered_at_once(opened, shared, path):
    ws = opened(path)
    data = authenticate_message(path, shared.token).encode()
    half = len(data) // 2
    assert ws.send_frame(OP_TEXT, data[:half], fin=False)
    assert ws.send_frame(OP_PING, b"in-between")
    pong = ws.recv(what="the pong to a ping sent between two fragments")
    assert pong.opcode == OP_PONG and pong.payload == b"in-between" and pong.fin, f"expected a pong 'in-between', got {pong}"
    assert ws.send_frame(OP_CONT, data[half:])
    expect_authenticated(ws, shared.user_id)


@pytest.mark.parametrize("shape", ["single-frame", "fragments"])
@pytest.mark.parametrize("path", PATHS)
def test_message_over_the_limit_is_1009(opened, path, shape):
    """/ws takes messages up to 256 KiB; Socket.IO up to the handshake's maxPayload (the same limit as a polling POST)."""
    ws = opened(path)
    if path == WS_PATH:
        limit = MAX_MESSAGE
        text = json.dumps({"type": "authenticate", "token": "x" * (limit + 1)})
    else:
        limit = ws.open_packet["maxPayload"]
        ws.sio_connect()
        text = "42" + json.dumps(["typing", {"sessionId": "x" * (limit + 1)}])
    data = text.encode()
    if shape == "single-frame":
        data = data[:limit + 1]  # one frame a byte over the limit (its content does not matter)
        ws.send_raw(frame(OP_TEXT, data))
    else:
        step = limit // 4  # fragments, none over the limit on its own, more than the limit together
        pieces = [data[i:i + step] for i in range(0, len(data), step)]
        for i, piece in enumerate(pieces):
            if not ws.send_raw(frame(OP_TEXT if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1)):
                break
    expect_close_code(ws, 1009)


@pytest.mark.parametrize("path", PATHS)
def test_message_in_too_many_fragments_is_1009(opened, path):
    """Empty fragments cost the server memory but add no bytes: a message is refused past a fragment count
    (the limit in fragments of 64 bytes), before it ends."""
    ws = opened(path)
    limit = MAX_MESSAGE if path == WS_PATH else ws.open_packet["maxPayload"]
    burst = b"".join(frame(OP_TEXT if i == 0 else OP_CONT, b"", fin=False) for i in range(max(128, limit // 64) + 1))
    ws.send_raw(burst)
    expect_close_code(ws, 1009)


@pytest.mark.parametrize("path", PATHS)
def test_masked_fragments_in_many_small_pieces_make_one_message(opened, shared, path):
    """A message in many one-byte fragments (within the limits) is one message, as from a client that streams it."""
    ws = opened(path)
    data = authenticate_message(path, shared.token).encode()
    pieces = [data[i:i + 1] for i in range(len(data))]
    ws.send_raw(b"".join(frame(OP_TEXT if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces)))
    expect_authenticated(ws, shared.user_id)


# ---- promptness -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("violation", ["unmasked", "invalid-utf8"])
@pytest.mark.parametrize("path", PATHS)
def test_protocol_error_close_is_prompt(shared, path, violation):
    """The close frame for a protocol error comes within 0.5 s, every time (no close timeout or idle wait)."""
    times = []
    for i in range(REPEAT):
        ws = WS(shared.port, path)
        try:
            if violation == "unmasked":
                ws.send_frame(OP_TEXT, "40" if ws.socketio else '{"type":"x"}', mask=False)
                expected = 1002
            else:
                ws.send_frame(OP_TEXT, b"40\xc3\x28" if ws.socketio else b'{"type":"\xc3\x28"}')
                expected = 1007
            elapsed = expect_close_code(ws, expected)
            times.append(elapsed)
        finally:
            ws.close()
        assert elapsed <= PROMPT, f"attempt {i + 1}: the close frame took {elapsed:.3f}s (times so far {times})"
    assert_prompt(times)


# ---- Socket.IO close codes ----------------------------------------------------------------------------------


def _sio(shared) -> WS:
    return WS(shared.port, SIO_PATH)


@pytest.mark.parametrize("packet,code", [("1", 1000), ("4{garbage", 1008)], ids=["engine-close-1000", "malformed-1008"])
def test_socketio_server_close_codes(shared, packet, code):
    """An Engine.IO close packet ends the connection normally (1000); a malformed packet is a policy violation (1008)."""
    times = []
    for i in range(REPEAT):
        ws = _sio(shared)
        try:
            ws.sio_connect()
            ws.send_text(packet)
            elapsed = expect_close_code(ws, code)
            times.append(elapsed)
        finally:
            ws.close()
        assert elapsed <= PROMPT, f"attempt {i + 1}: the close frame took {elapsed:.3f}s"
    assert_prompt(times)


def test_socketio_binary_attachment_is_refused_with_1008(shared):
    times = []
    for i in range(REPEAT):
        ws = _sio(shared)
        try:
            ws.sio_connect()
            ws.send_text('451-["x",{"_placeholder":true,"num":0}]')
            code, reason, before, elapsed = ws.expect_close()
            texts = [f.text for f in before if f.opcode == OP_TEXT]
            errors = [json.loads(t[2:]) for t in texts if t.startswith('42["error"')]
            assert errors and errors[0][1]["code"] == "unsupported_frame", \
                f"attempt {i + 1}: expected 42[\"error\",{{code: unsupported_frame}}] before the close, got {before}"
            assert code == 1008, f"attempt {i + 1}: expected close 1008, got {code} {reason!r}"
            ws.finish_close(code)
            times.append(elapsed)
        finally:
            ws.close()
        assert elapsed <= PROMPT, f"attempt {i + 1}: the close frame took {elapsed:.3f}s"
    assert_prompt(times)


def test_socketio_disconnect_packet_keeps_the_connection(shared):
    """`41` leaves the namespace, not the Engine.IO connection: a later `40` connects again with a fresh sid."""
    for i in range(REPEAT):
        ws = _sio(shared)
        try:
            first = ws.sio_connect()
            ws.send_text("41")
            try:
                second = ws.sio_connect()
            except AssertionError as e:
                raise AssertionError(f"attempt {i + 1}: after 41, a new 40 got no 40{{sid}} reply: {e}") from None
            assert second != first, f"attempt {i + 1}: the second CONNECT got the same sid {first}"
        finally:
            ws.close()


# ---- slow consumer ------------------------------------------------------------------------------------------


def test_slow_consumer_gets_1013_after_its_backlog(start_server):
    """A /ws client that stops reading while it is flooded is cut off; when it reads again it finds the frames that
    were queued for it and then a close frame 1013 (try again later), not just a dropped connection."""
    server = start_server(env={"REALTIME_QUEUE_LENGTH": "8"})
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]
    total, content = 400, "x" * 10_000
    url = server.url(f"/api/sessions/{sid}/messages")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(RECV)
    sock.connect(("127.0.0.1", server.port))
    ws = WS(server.port, WS_PATH, headers={"Authorization": f"Bearer {token}"}, sock=sock)
    try:
        ws.send_text(json.dumps({"type": "join", "sessionId": sid, "id": "j"}))
        ack = json.loads(ws.recv_text(what="the join ack"))
        assert ack["type"] == "ack" and ack["event"] == "join", ack
        # From here on the client reads nothing while the owner posts over REST.

        def post(i: int) -> None:
            r = post_json(url, {"content": content, "metadata": {"n": i}}, token=token)
            assert r.status_code == 201, f"POST {i}: {r.status_code} {r.text}"

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(post, range(total)))

        code, reason, before, _ = ws.expect_close(timeout=15)
        kinds = {f.opcode for f in before}
        assert kinds <= {OP_TEXT, OP_PING}, f"unexpected frames before the close: {kinds}"
        assert code == 1013, f"expected close 1013 after {len(before)} frames, got {code} {reason!r}"
        assert len(before) < total, f"the slow client got all {len(before)} messages: it was never cut off"
        ws.finish_close(code)
    finally:
        ws.close()
    assert post_json(url, {"content": "after"}, token=token).status_code == 201
